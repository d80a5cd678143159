"""Stand-ins for the tiny (CPU) mode of the launch scripts: small files in the place of ImageNet-sized
inputs.

    python scripts/tiny_fixtures.py digits-reference OUT.npz [--count 256] [--resolution 16]
    python scripts/tiny_fixtures.py image-folder DIR [--classes 3] [--per-class 3]
    python scripts/tiny_fixtures.py vae DIR

digits-reference  an ADM-format reference batch (arr_0 uint8 (N, R, R, 3), labels) of real embedded digits,
                  for evaluations/evaluator.py in place of VIRTUAL_imagenet256_labeled.npz. No statistics
                  are stored: the evaluator computes them from arr_0.
image-folder      an ImageNet train/ layout (one sub-folder per class) of small RGB JPEGs of varied sizes.
vae               a diffusers AutoencoderKL folder with the SD-VAE layout (4 latent channels, /8) but narrow
                  blocks and random weights, in place of sd-vae-ft-mse for `python -m preprocessing --vae`.
Every file is written whole or not at all (temporary name, then rename), so the scripts can test for
existence.
"""
import argparse
import os
import shutil
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the repository root is not on the path of scripts/
from infra.fileio import atomic_savez  # noqa: E402


def digits_reference(out: str, count: int = 256, resolution: int = 16) -> None:
    # torch (and dataset, which imports it) only in the subcommands that need it: image-folder stays quick
    import torch

    from dataset import digits_images

    # (1797, 1, R, R) in [-1, 1], (1797,)
    images, labels = digits_images(resolution)
    if not 2 <= count <= len(images):
        raise SystemExit(f"--count must lie in 2..{len(images)}, got {count}")
    pick = torch.from_numpy(np.random.default_rng(0).permutation(len(images))[:count])
    u8 = ((images[pick].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N, 1, R, R)
    arr = u8.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()
    atomic_savez(out, arr_0=arr, labels=labels[pick].numpy().astype(np.int64))
    print(f"wrote {out}: {count} real digits, {resolution}x{resolution}")


def image_folder(folder: str, classes: int = 3, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    tmp = folder.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for c in range(classes):
        os.makedirs(os.path.join(tmp, f"n{c:08d}"))
        for i in range(per_class):
            h, w = rng.integers(40, 96, size=2)
            # a smooth colour field, upsampled
            low = rng.uniform(0, 255, size=(4, 4, 3))
            img = np.kron(low, np.ones((-(-h // 4), -(-w // 4), 1)))[:h, :w].astype(np.uint8)
            Image.fromarray(img).save(os.path.join(tmp, f"n{c:08d}", f"img_{i}.JPEG"), quality=90)
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    os.replace(tmp, folder)
    print(f"wrote {folder}: {classes} classes x {per_class} images")


def tiny_vae(folder: str) -> None:
    # torch only here and in digits_reference (see there); diffusers is an optional heavy package
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                        layers_per_block=1, norm_num_groups=8, sample_size=32)
    tmp = folder.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    os.replace(tmp, folder)
    print(f"wrote {folder}: random-weight AutoencoderKL with the SD-VAE layout, narrow blocks")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("digits-reference", help="ADM reference batch of real digits")
    d.add_argument("out")
    d.add_argument("--count", type=int, default=256)
    d.add_argument("--resolution", type=int, default=16)
    f = sub.add_parser("image-folder", help="a tiny ImageNet train/ folder")
    f.add_argument("out")
    f.add_argument("--classes", type=int, default=3)
    f.add_argument("--per-class", type=int, default=3)
    v = sub.add_parser("vae", help="a narrow random-weight SD-VAE folder")
    v.add_argument("out")
    args = p.parse_args(argv)
    if args.what == "digits-reference":
        digits_reference(args.out, args.count, args.resolution)
    elif args.what == "image-folder":
        image_folder(args.out, args.classes, args.per_class)
    else:
        tiny_vae(args.out)


if __name__ == "__main__":
    main()
