"""DINOv2 ViT-{S,B,L,g}/14: the frozen external encoder of the REPA baseline.

Written from scratch in plain PyTorch. Module and parameter names follow the official
`facebookresearch/dinov2` backbones (`dinov2_vit{s,b,l,g}14`, no registers, `block_chunks=0`), so the
official `dinov2_vit*14_pretrain.pth` files load with `strict=True`:

    cls_token                    (1, 1, D)
    pos_embed                    (1, 1 + 37*37, D)      trained at 518 px = 37 x 37 patches of 14 px
    mask_token                   (1, D)                 iBOT mask token, unused for REPA targets
    patch_embed.proj.{weight,bias}  (D, 3, 14, 14), (D,)
    blocks.{i}.norm1.{weight,bias}  (D,)                LayerNorm eps 1e-6 everywhere
    blocks.{i}.attn.qkv.{weight,bias}   (3D, D), (3D,)
    blocks.{i}.attn.proj.{weight,bias}  (D, D), (D,)
    blocks.{i}.ls1.gamma         (D,)                   LayerScale
    blocks.{i}.norm2.{weight,bias}  (D,)
    blocks.{i}.mlp.fc1 / fc2     (4D, D) / (D, 4D)      GELU MLP (S, B, L)
    blocks.{i}.mlp.w12 / w3      (2H, D) / (D, H)       SwiGLU (g only), H = 4096 for D = 1536
    blocks.{i}.ls2.gamma         (D,)
    norm.{weight,bias}           (D,)

Positional embeddings are resampled from the 37 x 37 training grid to the input grid once per grid size
and cached (see `DinoV2.interpolated_pos_embed`). Two resampling rules are available:
  - "repa" (default): bicubic with antialias to the exact grid size. This is what REPA's targets were
    computed with: REPA overwrites `pos_embed` once with timm `resample_abs_pos_embed` (bicubic,
    antialias=True) to 16 x 16 (256 px) or 32 x 32 (512 px), after which DINOv2's own interpolation
    is a no-op.
  - "dinov2": DINOv2's own `interpolate_pos_encoding` rule (bicubic, scale factor (g + 0.1) / 37,
    no antialias), i.e. what calling the hub model on a 224 px image directly would do.

Input resolution follows the SiT token grid: SiT/2 on SD-VAE latents has (image_size / 16)^2 tokens,
so DINOv2 is fed `tokens_side * 14` pixels and returns the same number of patch tokens:

    SiT image   SiT tokens   DINOv2 input   DINOv2 patch tokens
    256 px      16 x 16      224 px         256
    512 px      32 x 32      448 px         1024

This equals REPA's `224 * (resolution // 256)` at 256 and 512 px.

Weights are read from a local file only; nothing is downloaded (see `load_dinov2`).
"""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F


PATCH_SIZE = 14
PRETRAIN_IMG_SIZE = 518                       # official checkpoints: pos_embed for a 518 px input
PRETRAIN_GRID = PRETRAIN_IMG_SIZE // PATCH_SIZE  # 37

DINOV2_ARCHS = {
    "dinov2_vits14": dict(embed_dim=384, depth=12, num_heads=6, ffn="mlp"),
    "dinov2_vitb14": dict(embed_dim=768, depth=12, num_heads=12, ffn="mlp"),
    "dinov2_vitl14": dict(embed_dim=1024, depth=24, num_heads=16, ffn="mlp"),
    "dinov2_vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}
DINOV2_DIMS = {name: arch["embed_dim"] for name, arch in DINOV2_ARCHS.items()}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHTS_ENV = "DINOV2_WEIGHTS"
WEIGHTS_URL = "https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"


# ----------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """(N, 3, H, W) -> (N, H/14 * W/14, D) with one strided convolution (key: patch_embed.proj)."""

    def __init__(self, embed_dim, patch_size=PATCH_SIZE, in_chans=3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        x = self.proj(x)                      # (N, D, H/14, W/14)
        return x.flatten(2).transpose(1, 2)   # (N, T, D), row-major over the patch grid


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (keys: attn.qkv, attn.proj)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        n, t, d = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(n, t, 3, h, d // h)      # (N, T, 3, heads, Dh); q, k, v in that order
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)     # each (N, heads, T, Dh)
        x = F.scaled_dot_product_attention(q, k, v)        # softmax(q k^T / sqrt(Dh)) v
        x = x.transpose(1, 2).reshape(n, t, d)             # (N, T, D)
        return self.proj(x)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (ViT-S/B/L)."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """w12 gives [a, b]; out = w3(silu(a) * b) (ViT-g)."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)   # each (N, T, H)
        return self.w3(F.silu(a) * b)


def swiglu_hidden_dim(dim, mlp_ratio=4):
    """DINOv2's fused SwiGLU width: 2/3 of the MLP width, rounded up to a multiple of 8 (4096 for D=1536)."""
    return (int(dim * mlp_ratio * 2 / 3) + 7) // 8 * 8


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (key: ls{1,2}.gamma)."""

    def __init__(self, dim, init_value=1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim, num_heads, ffn="mlp", mlp_ratio=4, layerscale_init=1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        if ffn == "mlp":
            self.mlp = Mlp(dim, dim * mlp_ratio)
        elif ffn == "swiglu":
            self.mlp = SwiGLUFFN(dim, swiglu_hidden_dim(dim, mlp_ratio))
        else:
            raise ValueError(f"unknown ffn {ffn!r}; expected 'mlp' or 'swiglu'")
        self.ls2 = LayerScale(dim, layerscale_init)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------

class DinoV2(nn.Module):
    """DINOv2 vision transformer without registers and without a head.

    No dropout, drop-path or other stochastic layer: train() and eval() compute the same function.
    `layerscale_init=1.0` is what the hub constructors pass (the pretrained gammas overwrite it anyway).
    """

    def __init__(self, embed_dim=768, depth=12, num_heads=12, ffn="mlp", mlp_ratio=4,
                 img_size=PRETRAIN_IMG_SIZE, patch_size=PATCH_SIZE, layerscale_init=1.0, pos_interp="repa"):
        super().__init__()
        if pos_interp not in ("repa", "dinov2"):
            raise ValueError(f"pos_interp must be 'repa' or 'dinov2', got {pos_interp!r}")
        assert img_size % patch_size == 0
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.grid = img_size // patch_size    # side of the pos_embed grid (37 for the official weights)
        self.pos_interp = pos_interp

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))                      # (1, 1, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, embed_dim))    # (1, 1 + G*G, D)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))                        # (1, D)
        self.patch_embed = PatchEmbed(embed_dim, patch_size)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, ffn, mlp_ratio, layerscale_init) for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        # (grid_h, grid_w) -> (stamp of pos_embed it was computed from, (1, 1 + gh*gw, D) tensor).
        # A plain dict, not a buffer: it never enters the state_dict.
        self._pos_cache = {}
        self._init_weights()

    def _init_weights(self):
        # Random init for locally built models (tests); real use overwrites everything from the file.
        # DINOv2 uses trunc_normal_(std=0.02) with the default cut at +-2 (absolute, i.e. 100 std): a plain
        # normal draw is the same distribution for all practical purposes and much faster.
        if self.pos_embed.is_meta:
            return
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # ---- positional embeddings ----------------------------------------------------------------------

    def _resample_pos_embed(self, grid_h, grid_w):
        """pos_embed (1, 1 + G*G, D) -> (1, 1 + gh*gw, D); the cls entry is kept, the grid is resampled."""
        g, d = self.grid, self.embed_dim
        pos = self.pos_embed.float()
        cls_pos = pos[:, :1]                                            # (1, 1, D)
        grid = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)       # (1, D, G, G)
        if self.pos_interp == "repa":
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic",
                                 align_corners=False, antialias=True)
        else:
            scale = ((grid_h + 0.1) / g, (grid_w + 0.1) / g)            # DINOv2's +0.1 offset rule
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
            assert grid.shape[-2:] == (grid_h, grid_w), grid.shape
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, d)   # (1, gh*gw, D)
        return torch.cat([cls_pos, grid], dim=1).to(self.pos_embed.dtype)

    def interpolated_pos_embed(self, grid_h, grid_w):
        """Positional embeddings for a grid_h x grid_w patch grid: (1, 1 + grid_h*grid_w, D).

        The training grid returns `pos_embed` itself. Other grids are computed once and cached; the cache
        entry is recomputed when pos_embed changes (new weights loaded, moved to another device). When
        pos_embed is trainable and grad is on, nothing is cached, so gradients still reach it.
        """
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.pos_embed
        if self.pos_embed.requires_grad and torch.is_grad_enabled():
            return self._resample_pos_embed(grid_h, grid_w)
        stamp = (self.pos_embed.device, self.pos_embed.dtype, self.pos_embed.data_ptr(), self.pos_embed._version)
        hit = self._pos_cache.get((grid_h, grid_w))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        with torch.no_grad():
            pos = self._resample_pos_embed(grid_h, grid_w)
        self._pos_cache[(grid_h, grid_w)] = (stamp, pos)
        return pos

    # ---- forward ------------------------------------------------------------------------------------

    def prepare_tokens(self, x, masks=None):
        """(N, 3, H, W) -> (N, 1 + T, D): patch tokens (masked ones replaced by mask_token), cls first, + pos."""
        n, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {p}")
        tokens = self.patch_embed(x)                                        # (N, T, D)
        if masks is not None:                                               # masks: (N, T) bool
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        cls = self.cls_token.to(tokens.dtype).expand(n, -1, -1)            # (N, 1, D)
        tokens = torch.cat([cls, tokens], dim=1)                            # (N, 1 + T, D)
        pos = self.interpolated_pos_embed(h // p, w // p)                   # (1, 1 + T, D)
        return tokens + pos.to(tokens.dtype)

    def forward_features(self, x, masks=None):
        """x: (N, 3, H, W), ImageNet-normalised, H and W multiples of 14 (see `preprocess_for_dinov2`).

        Returns a dict:
          x_norm_clstoken     (N, D)      final-norm cls token
          x_norm_patchtokens  (N, T, D)   final-norm patch tokens, T = (H/14)*(W/14), row-major (REPA target)
          x_prenorm           (N, 1 + T, D)
          masks               the masks argument
        """
        x = self.prepare_tokens(x, masks)
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_patchtokens": x_norm[:, 1:],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward(self, x):
        """Like the hub model with its head removed: the normalised cls token (N, D)."""
        return self.forward_features(x)["x_norm_clstoken"]


def build_dinov2(name="dinov2_vitb14", **kwargs):
    """A randomly initialised DINOv2 of the named official architecture (no weights are read)."""
    if name not in DINOV2_ARCHS:
        raise ValueError(f"unknown DINOv2 model {name!r}; expected one of {sorted(DINOV2_ARCHS)}")
    return DinoV2(**DINOV2_ARCHS[name], **kwargs)


# ----------------------------------------------------------------------------------------------------
# Weights from a local file
# ----------------------------------------------------------------------------------------------------

def _weights_filename(name):
    return f"{name}_pretrain.pth"


def _hub_checkpoint_path(name):
    # torch.hub.get_dir() is $TORCH_HOME/hub, by default ~/.cache/torch/hub.
    return os.path.join(torch.hub.get_dir(), "checkpoints", _weights_filename(name))


def _missing_weights_message(name, looked_at):
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


def resolve_dinov2_weights(name="dinov2_vitb14", path=None):
    """Path of the local weights file: `path`, else $DINOV2_WEIGHTS, else the torch hub cache.

    A path or variable that is given but wrong is an error (no silent fallback to the next place).
    $DINOV2_WEIGHTS may name the file itself or a directory holding `<name>_pretrain.pth`.
    """
    fname = _weights_filename(name)
    if path is not None:
        where, candidate = "path argument", os.fspath(path)
    elif os.environ.get(WEIGHTS_ENV):
        where, candidate = f"${WEIGHTS_ENV}", os.environ[WEIGHTS_ENV]
    else:
        where, candidate = "torch hub cache", _hub_checkpoint_path(name)
    if os.path.isdir(candidate):
        candidate = os.path.join(candidate, fname)
    if not os.path.isfile(candidate):
        raise FileNotFoundError(_missing_weights_message(name, [(where, candidate)]))
    return candidate


def _short_list(items, limit=20):
    items = list(items)
    text = ", ".join(items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items) - limit} more)"
    return text


def check_state_dict(model, state, name="dinov2", source="state_dict"):
    """Raise a RuntimeError listing missing, unexpected and wrongly shaped keys; return None if all match."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    # listed in model order (cls_token, pos_embed, mask_token, patch_embed, blocks..., norm) and file order
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected or k in not_tensors]
    mismatched = [k for k in expected if k in got and expected[k] != got[k]]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source} does not match {name} (strict load):"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_short_list(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_short_list(unexpected)}")
    if mismatched:
        shapes = [f"{k}: file {got[k]} vs model {expected[k]}" for k in mismatched]
        lines.append(f"  shape mismatches ({len(mismatched)}): {_short_list(shapes)}")
    lines.append(f"  expected the official register-free {_weights_filename(name)} "
                 f"(not a *_reg4_pretrain.pth, a linear head or a training checkpoint of another size).")
    raise RuntimeError("\n".join(lines))


def load_dinov2(name="dinov2_vitb14", path=None, pos_interp="repa"):
    """Frozen DINOv2 from a local file: float32, eval mode, requires_grad False, on CPU (move it yourself).

    name: one of DINOV2_ARCHS ("dinov2_vit{s,b,l,g}14").
    path: the weights file; default $DINOV2_WEIGHTS, then <torch hub dir>/checkpoints/<name>_pretrain.pth.
    pos_interp: "repa" (default, REPA's targets) or "dinov2" (the hub model's own rule); see module doc.
    """
    if name not in DINOV2_ARCHS:
        raise ValueError(f"unknown DINOv2 model {name!r}; expected one of {sorted(DINOV2_ARCHS)}")
    file = resolve_dinov2_weights(name, path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise RuntimeError(f"{file} does not hold a state_dict (got {type(state).__name__})")
    with torch.device("meta"):                     # no random init: every tensor comes from the file
        model = build_dinov2(name, pos_interp=pos_interp)
    check_state_dict(model, state, name=name, source=file)
    state = {k: v.to(torch.float32) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    model.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------------
# Input preprocessing
# ----------------------------------------------------------------------------------------------------

def dinov2_resolution(tokens_side):
    """DINOv2 input side giving a tokens_side x tokens_side patch grid: 16 -> 224 (256 px SiT), 32 -> 448."""
    if int(tokens_side) != tokens_side or tokens_side < 1:
        raise ValueError(f"tokens_side must be a positive integer, got {tokens_side}")
    return int(tokens_side) * PATCH_SIZE


def sit_tokens_side(image_size, vae_downsample=8, patch_size=2):
    """Side of SiT's token grid for an image size: 256 -> 16, 512 -> 32 (SD-VAE /8, SiT patch 2)."""
    assert image_size % (vae_downsample * patch_size) == 0, image_size
    return image_size // (vae_downsample * patch_size)


def preprocess_for_dinov2(images, resolution=224):
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
        x = images.float() / 255.0                           # [0, 1]
    else:
        x = (images.float().clamp(-1.0, 1.0) + 1.0) / 2.0    # [-1, 1] -> [0, 1]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - mean) / std
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False)
    return x                                                 # (N, 3, resolution, resolution)
