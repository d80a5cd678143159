"""Datasets: the embedded digits default (no download) and preprocessed ImageNet latents.

This file is being completed by the training/preprocessing work; the digits loader below is the shared source of
the embedded dataset (the training quickstart and the embedded metric in evaluations/ both use it).
"""
import numpy as np
import torch
import torch.nn.functional as F


def digits_images(resolution: int = 16):
    """scikit-learn's bundled handwritten digits (1797 images of 8x8, 10 classes), no download.

    Returns (images, labels): float32 (N, 1, R, R) in [-1, 1] (bilinear upsampling of the 0..16 grey levels)
    and int64 (N,). Deterministic.
    """
    from sklearn.datasets import load_digits

    if resolution % 8 != 0 or resolution < 8:
        raise ValueError(f"digits resolution must be a multiple of 8 (8, 16, 32, ...), got {resolution}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]      # (N, 1, 8, 8) in [0, 1]
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    return x, torch.from_numpy(d.target.astype(np.int64))
