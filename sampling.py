"""Images from a model: per-image seeds and labels -> uint8 images, the uint8 rule, PNG files and grids.

Used by sample_ddp.py (the N-sample command), train.py (previews, the digits metric) and
evaluations/fid_proxy.py. Image k of a call is made from its own torch.Generator seeded with seeds[k]
(samplers.per_image_generators): its initial noise and all its SDE noise, so an image does not depend on the
batch it shares.

The uint8 rule (`quantize`): `release` (default) = floor(clamp(127.5 x + 127.5, 0, 255)), as the SRA
release's and REPA's generate.py, so FIDs compare with the paper's; `dit` = floor(clamp(127.5 x + 128, 0,
255)), as DiT / SiT's sample_ddp (half a grey level brighter). Grey images are repeated to 3 channels.
"""
import numpy as np
import torch
from PIL import Image

import samplers
from fileio import atomic_path
from models.vae import decode_latents

# uint8 = floor(clamp(127.5 x + offset, 0, 255))
QUANTIZE_OFFSET = {"release": 127.5, "dit": 128.0}


def to_uint8(x: torch.Tensor, quantize: str = "release") -> np.ndarray:
    """(N, C, H, W) float in [-1, 1], C in {1, 3} -> (N, H, W, 3) uint8 numpy, floor(clamp(127.5 x + offset)):
    offset 127.5 for quantize='release' (SRA / REPA generate.py), 128 for 'dit' (DiT / SiT sample_ddp)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if quantize not in QUANTIZE_OFFSET:
        raise ValueError(f"quantize must be one of {sorted(QUANTIZE_OFFSET)}, got {quantize!r}")
    # the cast truncates, which is floor on the clamped (non-negative) values
    u8 = (127.5 * x.float() + QUANTIZE_OFFSET[quantize]).clamp(0, 255).to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    return u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def save_png(image: np.ndarray, path: str):
    """One (H, W, 3) uint8 image, written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def save_grid(images: np.ndarray, path: str, nrow: int, pad: int = 2, min_width: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one PNG, nrow images per row, pad pixels of black between them; each image is
    enlarged by an integer factor (nearest neighbour) until the grid is at least `min_width` pixels wide. ->
    the grid."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"save_grid wants (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    scale = max(1, -(-(min_width - pad * (nrow + 1)) // (nrow * images.shape[2])))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = images.shape
    rows = -(-n // nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, nrow)
        top = pad + r * (h + pad)
        left = pad + c * (w + pad)
        grid[top:top + h, left:left + w] = images[k]
    save_png(grid, path)
    return grid


def sample_images(model: torch.nn.Module, seeds, labels, device: torch.device | str, vae=None,
                  quantize: str = "release", **sampler_kwargs) -> np.ndarray:
    """Images from per-image seeds (one generator each) and labels -> (N, H, W, 3) uint8 numpy (to_uint8).
    vae: the SD-VAE that decodes latents (None: the model makes pixels). sampler_kwargs go to samplers.sample
    (mode, num_steps, heun, cfg_scale, guidance_low, path_type, ...)."""
    gens = samplers.per_image_generators(seeds, device)
    z = samplers.per_image_randn(gens, (model.in_channels, model.input_size, model.input_size), device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=device)
    x = samplers.sample(model, z, y, generators=gens, **sampler_kwargs)
    return to_uint8(decode_latents(vae, x), quantize)
