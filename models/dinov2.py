"""DINOv2 ViT-{S,B,L,g}/14, the frozen external encoder of the REPA baseline (METHOD.md, "REPA").

The network is timm's `vit_{small,base,large,giant}_patch14_dinov2`, built with `pretrained=False` (timm never
downloads anything here) and filled from the official `dinov2_vit*14_pretrain.pth` file read from a local path
(`load_dinov2`). The official file and timm differ in three places only, handled by `timm_state_dict`:

    official file                 timm model
    mask_token (1, D)             -          iBOT's mask token; REPA's targets never mask, it is dropped
    blocks.{i}.mlp.w12 (2H, D)    mlp.fc1    ViT-g's packed SwiGLU: silu(first half) * second half
    blocks.{i}.mlp.w3 (D, H)      mlp.fc2    H = 4096 for D = 1536
    every other key               the same   cls_token, pos_embed, patch_embed.proj, blocks.{i}.norm1,
                                             attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1 / fc2, ls2.gamma,
                                             norm (LayerNorm eps 1e-6 everywhere)

Positional embeddings: the file's `pos_embed` (1, 1 + 37 * 37, D) was trained at 518 px = 37 x 37 patches of
14 px and is kept as it is. The model is built with `dynamic_img_size=True`, so every forward resamples the
37 x 37 grid to the input's patch grid, bicubic with antialias (the class entry untouched): the rule REPA's
targets were computed with (REPA resamples `pos_embed` once with this rule to 16 x 16 at 256 px).

Input resolution follows the SiT token grid: SiT/2 on SD-VAE latents has (image_size / 16)^2 tokens, so DINOv2
is fed `tokens_side * 14` pixels and returns the same number of patch tokens:

    SiT image   SiT tokens   DINOv2 input   DINOv2 patch tokens
    256 px      16 x 16      224 px         256
    512 px      32 x 32      448 px         1024

This equals REPA's `224 * (resolution // 256)` at 256 and 512 px. The targets are `dinov2_patch_tokens`: the
final-norm patch tokens, what the official model returns as `x_norm_patchtokens`.
"""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import state_dict_mismatch

PATCH_SIZE = 14
# the official files' pos_embed is for a 518 px input: 37 x 37 patches
PRETRAIN_IMG_SIZE = 518

# official name -> timm's model of the same architecture (no registers)
DINOV2_ARCHS = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
}
DINOV2_DIMS = {"dinov2_vits14": 384, "dinov2_vitb14": 768, "dinov2_vitl14": 1024, "dinov2_vitg14": 1536}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHTS_ENV = "DINOV2_WEIGHTS"
WEIGHTS_URL = "https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"

# official key part -> timm's (ViT-g's SwiGLU); the file's mask_token has no timm counterpart
OFFICIAL_TO_TIMM = {".mlp.w12.": ".mlp.fc1.", ".mlp.w3.": ".mlp.fc2."}
DROPPED_KEYS = ("mask_token",)


def _check_name(name: str) -> None:
    if name not in DINOV2_ARCHS:
        raise ValueError(f"unknown DINOv2 model {name!r}; expected one of {sorted(DINOV2_ARCHS)}")


def build_dinov2(name: str = "dinov2_vitb14", **kwargs) -> nn.Module:
    """timm's randomly initialised DINOv2 of the named official architecture, without a head (nothing is
    read or downloaded). kwargs go to timm.create_model (tests build small widths and depths this way)."""
    import timm

    _check_name(name)
    # the input side may be any multiple of 14: pos_embed is resampled to each input's grid
    settings = {"img_size": PRETRAIN_IMG_SIZE, "num_classes": 0, "dynamic_img_size": True, **kwargs}
    return timm.create_model(DINOV2_ARCHS[name], pretrained=False, **settings)


def timm_state_dict(official: dict) -> dict:
    """An official DINOv2 state dict in timm's key names: mask_token dropped, ViT-g's mlp.w12 / mlp.w3 renamed
    mlp.fc1 / mlp.fc2; every value (tensor or not) is passed on untouched. Keys already in timm's names (a
    state dict saved from `build_dinov2`'s model) stay as they are."""
    out = {}
    for key, value in official.items():
        if key in DROPPED_KEYS:
            continue
        for old, new in OFFICIAL_TO_TIMM.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def dinov2_patch_tokens(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x: (N, 3, H, W), ImageNet-normalised, H and W multiples of 14 (see `preprocess_for_dinov2`) ->
    (N, T, D) final-norm patch tokens (official DINOv2's x_norm_patchtokens), T = (H/14)*(W/14), row-major."""
    # (N, 1 + T, D): the class token first
    tokens = encoder.forward_features(x)
    return tokens[:, encoder.num_prefix_tokens:]


# ------------------------------------------------------------------------------------------------------------
# Weights from a local file
# ------------------------------------------------------------------------------------------------------------

def _weights_filename(name: str) -> str:
    return f"{name}_pretrain.pth"


def _hub_checkpoint_path(name: str) -> str:
    # torch.hub.get_dir() is $TORCH_HOME/hub, by default ~/.cache/torch/hub.
    return os.path.join(torch.hub.get_dir(), "checkpoints", _weights_filename(name))


def _missing_weights_message(name: str, looked_at: list) -> str:
    fname = _weights_filename(name)
    lines = [f"DINOv2 weights for {name} not found (the file is {fname}; nothing is downloaded at run time)."]
    lines += ["Looked at:"] + [f"  - {where}: {p}" for where, p in looked_at]
    lines += [
        "Put the file in one of these places:",
        "  - pass path=... to load_dinov2 (or the training flag that forwards it),",
        f"  - set {WEIGHTS_ENV}=/path/to/{fname} (or to a directory that contains {fname}),",
        f"  - copy it to {_hub_checkpoint_path(name)} (the torch hub cache).",
        f"It can be fetched on a machine with internet access from {WEIGHTS_URL.format(name=name)}",
    ]
    return "\n".join(lines)


def resolve_dinov2_weights(name: str = "dinov2_vitb14", path: str | os.PathLike | None = None) -> str:
    """Path of the local weights file: `path`, else $DINOV2_WEIGHTS, else the torch hub cache.

    A path or variable that is given but wrong is an error (no silent fallback to the next place).
    $DINOV2_WEIGHTS may name the file itself or a directory holding `<name>_pretrain.pth`.
    """
    fname = _weights_filename(name)
    if path is not None:
        where = "path argument"
        candidate = os.fspath(path)
    elif os.environ.get(WEIGHTS_ENV):
        where = f"${WEIGHTS_ENV}"
        candidate = os.environ[WEIGHTS_ENV]
    else:
        where = "torch hub cache"
        candidate = _hub_checkpoint_path(name)
    if os.path.isdir(candidate):
        candidate = os.path.join(candidate, fname)
    if not os.path.isfile(candidate):
        raise FileNotFoundError(_missing_weights_message(name, [(where, candidate)]))
    return candidate


def load_dinov2(name: str = "dinov2_vitb14", path: str | os.PathLike | None = None) -> nn.Module:
    """Frozen DINOv2 (timm) from a local file: float32, eval mode, requires_grad False, on CPU (move it
    yourself). Its patch tokens: `dinov2_patch_tokens(model, x)`.

    name: one of DINOV2_ARCHS ("dinov2_vit{s,b,l,g}14").
    path: the official weights file; default $DINOV2_WEIGHTS, then
          <torch hub dir>/checkpoints/<name>_pretrain.pth.
    The file must hold exactly the architecture's keys and shapes (strict; its mask_token may be absent).
    """
    _check_name(name)
    file = resolve_dinov2_weights(name, path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise RuntimeError(f"{file} does not hold a state_dict (got {type(state).__name__})")
    state = timm_state_dict(state)
    # no random init: every tensor comes from the file
    with torch.device("meta"):
        model = build_dinov2(name)
    problem = state_dict_mismatch(model, state)
    if problem:
        raise RuntimeError(
            f"{file} does not match {name} (strict load, keys in timm's names): {problem}\n"
            f"  expected the official register-free {_weights_filename(name)} (not a *_reg4_pretrain.pth, a "
            "linear head or a training checkpoint of another size).")
    state = {k: v.to(torch.float32) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    model.requires_grad_(False)
    return model


# ------------------------------------------------------------------------------------------------------------
# Input preprocessing
# ------------------------------------------------------------------------------------------------------------

def dinov2_resolution(tokens_side: int) -> int:
    """DINOv2 input side giving a tokens_side x tokens_side patch grid: 16 -> 224 (256 px SiT), 32 -> 448."""
    if int(tokens_side) != tokens_side or tokens_side < 1:
        raise ValueError(f"tokens_side must be a positive integer, got {tokens_side}")
    return int(tokens_side) * PATCH_SIZE


def sit_tokens_side(image_size: int, vae_downsample: int = 8, patch_size: int = 2) -> int:
    """Side of SiT's token grid for an image size: 256 -> 16, 512 -> 32 (SD-VAE /8, SiT patch 2)."""
    assert image_size % (vae_downsample * patch_size) == 0, image_size
    return image_size // (vae_downsample * patch_size)


def preprocess_for_dinov2(images: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """Images -> DINOv2 input (N, 3, resolution, resolution), float32.

    images: (N, 3, H, W), either uint8 in [0, 255] or float in [-1, 1] (e.g. decoded from latents; values
            outside [-1, 1] are clamped, as writing them to uint8 would).
    Order as in REPA for dinov2: -> [0, 1] -> ImageNet mean/std -> bicubic resize (no antialias).
    (The order does not change the result beyond rounding: bicubic weights sum to 1, so a per-channel
    affine map commutes with the resize.)
    resolution: use `dinov2_resolution(tokens_side)` so the patch grid matches SiT's token grid
            (224 at 256 px, 448 at 512 px).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
    if resolution % PATCH_SIZE:
        raise ValueError(f"resolution {resolution} is not a multiple of the patch size {PATCH_SIZE}")
    if images.dtype == torch.uint8:
        # [0, 1]
        x = images.float() / 255.0
    else:
        # [-1, 1] -> [0, 1]
        x = (images.float().clamp(-1.0, 1.0) + 1.0) / 2.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - mean) / std
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False)
    # (N, 3, resolution, resolution)
    return x
