"""The SD-VAE: loading weights that are already on disk, images -> posterior moments, latents -> images.

Weights are never downloaded. `load_vae` looks, in order, at
  1. `--vae PATH`: a diffusers folder (config.json + diffusion_pytorch_model.safetensors or .bin), or a
     Hugging Face snapshot folder of that layout;
  2. the Hugging Face cache (HF_HOME / HF_HUB_CACHE) for `--vae-id` (default stabilityai/sd-vae-ft-mse),
     loaded with local_files_only=True.
The "ema" and "mse" variants share the original SD encoder (only their decoders were fine-tuned), so either
gives the same latents. The caller keeps the loaded VAE (train.py loads it once per run).

`encode_moments` maps uint8 (N, H, W, 3) -> float32 (N, 8, H/8, W/8): channels 0-3 posterior mean, 4-7
posterior std, unscaled VAE space (the 0.18215 scale is applied at training time). Input is scaled to [-1, 1]
like the REPA/SRA pipeline; std = exp(0.5 * clamp(logvar, -30, 20)) as in diffusers'
DiagonalGaussianDistribution, always computed in fp32 even when the network runs in bf16.
"""
import os
import warnings

import torch

DEFAULT_VAE_ID = "stabilityai/sd-vae-ft-mse"
# SD-VAE scale factor (4 channels, no shift): z = 0.18215 * posterior sample
LATENT_SCALE = 0.18215
PRECISIONS = ("fp32", "tf32", "bf16")


def missing_weights_message(vae_path: str | None, vae_id: str) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub")
    where = f"--vae {vae_path!r} is not a diffusers AutoencoderKL folder" if vae_path else \
        f"{vae_id!r} is not in the Hugging Face cache ({cache})"
    return (
        f"SD-VAE weights not found: {where}. Nothing is downloaded at run time. Either\n"
        f"  - put the weights in a folder and pass it: --vae /path/to/sd-vae-ft-mse, the folder holding "
        f"config.json and diffusion_pytorch_model.safetensors (e.g. `huggingface-cli download {vae_id} "
        f"--local-dir /path/to/sd-vae-ft-mse` on a machine with network), or\n"
        f"  - fill the Hugging Face cache once with `huggingface-cli download {vae_id}` (cache: {cache}; set "
        f"HF_HOME to move it); then preprocessing takes --vae-id {vae_id}, train.py / sample_ddp.py take "
        f"--vae ema or mse."
    )


def load_vae(vae_path: str | None = None, vae_id: str = DEFAULT_VAE_ID, device: str | torch.device = "cpu"
             ) -> torch.nn.Module:
    """AutoencoderKL from a local folder or the HF cache (never the network); eval mode, no grad, on
    `device`."""
    from diffusers import AutoencoderKL

    if vae_path is not None:
        if not os.path.isfile(os.path.join(vae_path, "config.json")):
            raise FileNotFoundError(missing_weights_message(vae_path, vae_id))
        source = vae_path
    else:
        source = vae_id
    try:
        with warnings.catch_warnings():
            # diffusers -> hub chatter
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            vae = AutoencoderKL.from_pretrained(source, local_files_only=True)
    except (OSError, EnvironmentError, ValueError) as e:
        raise FileNotFoundError(missing_weights_message(vae_path, vae_id) + f"\n(diffusers said: {e})") from e
    vae.eval().requires_grad_(False)
    return vae.to(device)


def load_vae_spec(spec: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """--vae as the samplers and train.py take it: 'ema' / 'mse' (stabilityai/sd-vae-ft-*, HF cache) or a
    folder."""
    if spec in ("ema", "mse"):
        return load_vae(None, f"stabilityai/sd-vae-ft-{spec}", device)
    return load_vae(spec, DEFAULT_VAE_ID, device)


@torch.no_grad()
def decode_latents(vae: torch.nn.Module | None, z: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Model-space latents (N, 4, h, w) -> images (N, 3, 8h, 8w) in about [-1, 1]; vae None: z already is
    pixels."""
    if vae is None:
        return z
    return torch.cat([vae.decode(z[k:k + batch] / LATENT_SCALE).sample for k in range(0, z.shape[0], batch)])


def configure_precision(precision: str):
    """fp32 = true fp32 (TF32 off), tf32 = fp32 with TF32 matmul/conv on CUDA, bf16 = bf16 autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"


@torch.no_grad()
def encode_moments(vae: torch.nn.Module, images_uint8: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """uint8 (N, H, W, 3) on any device -> float32 (N, 8, H/8, W/8) posterior [mean, std] on the VAE's
    device."""
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise ValueError(f"encode_moments expects uint8 (N, H, W, 3), got {images_uint8.dtype} "
                         f"{tuple(images_uint8.shape)}")
    device = next(vae.parameters()).device
    x = images_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2)      # (N, 3, H, W) uint8
    x = x.float() / 127.5 - 1.0                                               # [-1, 1]
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        h = vae.encoder(x)                                                    # (N, 8, H/8, W/8)
        if getattr(vae, "quant_conv", None) is not None:
            h = vae.quant_conv(h)
    h = h.float()
    mean, logvar = h.chunk(2, dim=1)                                          # (N, 4, h, w) each
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return torch.cat([mean, std], dim=1)                                      # (N, 8, h, w)
