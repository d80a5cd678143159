"""Import an existing REPA/SRA latent folder into the shard format, so nothing has to be re-encoded.

    python -m preprocessing import-repa DATA_DIR OUT_DIR [--shard-size 20000] [--dtype float32]
        [--num-classes 1000]

DATA_DIR holds vae-sd/ (or is vae-sd/): **/*.npy float32 (8, h, w) posterior [mean, std] files plus
dataset.json {"labels": [[relpath, label], ...]}, as written by REPA's/SRA's `dataset_tools.py encode`.
Samples keep the sorted relative-path order that REPA's own loader uses; with --dtype float32 the values are
copied bit for bit. Resumable like the encoder (finished shards are skipped). The posterior was computed by
the source pipeline: dataset.json records vae = "imported", crop = "adm-center-crop" (what REPA/SRA
preprocessing does) and flip = false. When DATA_DIR also holds REPA's images/ (the ADM crops the latents were
encoded from), sample i is paired with the i-th image in sorted order, as REPA's loader pairs them (names that
carry an index must agree): sources.txt then names the images and `python -m preprocessing repa-features
OUT_DIR` computes REPA's targets from them, the real images (never VAE reconstructions).
"""
import argparse
import os
import re
import sys

import numpy as np
import torch
from tqdm import tqdm

# the one reader of the REPA layout
from dataset import RepaLatentDataset
from infra.fileio import WriteError, unusable_folder

from .launch import die_with_parent
from .shards import DTYPES, ShardWriter, atomic_write_json, finalize, fingerprint, shard_files, shard_is_done

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def repa_images(ds: RepaLatentDataset) -> tuple[str | None, list[str] | None]:
    """REPA's images/ next to vae-sd/, paired with the latents in sorted order -> (root, relative paths), or
    (None, None) when there is no images/ folder."""
    root = os.path.join(os.path.dirname(os.path.abspath(ds.folder)), "images")
    if os.path.abspath(ds.folder) == os.path.abspath(root) or not os.path.isdir(root):
        return None, None
    files = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                   for d, _, names in os.walk(root) for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
    if len(files) != len(ds.files):
        raise ValueError(f"{root} holds {len(files)} images for {len(ds.files)} latents in {ds.folder}: "
                         f"REPA pairs them in sorted order, so the counts must match")
    for image, latent in zip(files, ds.files):
        a = re.findall(r"\d+", os.path.basename(image))
        b = re.findall(r"\d+", os.path.basename(latent))
        if a and b and int(a[-1]) != int(b[-1]):
            raise ValueError(f"{root}/{image} and {ds.folder}/{latent} are paired by sorted order but carry "
                             f"the indices {int(a[-1])} and {int(b[-1])}")
    return root, files


class _Arrays(torch.utils.data.Dataset):
    def __init__(self, ds, indices):
        self.ds = ds
        self.indices = indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        # float32 (8, h, w), as stored
        return self.ds.load(self.indices[i])


def import_repa(data_dir: str, out_dir: str, shard_size: int = 20000, dtype: str = "float32",
                num_classes: int | None = None, workers: int = 4, progress: bool = True) -> dict:
    """Convert DATA_DIR (REPA layout) into OUT_DIR (shard format). Returns dataset.json's content."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    if workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: read in the main process), got {workers}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1, got {num_classes}")
    problem = unusable_folder(out_dir, "OUT_DIR")
    if problem:
        raise ValueError(problem)
    ds = RepaLatentDataset(data_dir, num_classes)
    images_root, images = repa_images(ds)
    n = len(ds)
    num_shards = (n + shard_size - 1) // shard_size
    settings = {"source": "repa", "dtype": dtype, "shard_size": shard_size}
    os.makedirs(os.path.join(out_dir, "shards"), exist_ok=True)

    def shard_fingerprint(k):
        lo = k * shard_size
        hi = min(n, (k + 1) * shard_size)
        items = [[ds.files[i], int(ds.labels[i])] for i in range(lo, hi)]
        return fingerprint({"settings": settings, "items": items})

    todo = [k for k in range(num_shards) if not shard_is_done(out_dir, k, shard_fingerprint(k), settings)]
    print(f"[import-repa] {n} latents {ds.item_shape} in {ds.folder}"
          f"{f' (images in {images_root})' if images else ''}; {num_shards} shards, {len(todo)} to write",
          flush=True)
    bar = tqdm(total=sum(min(n, (k + 1) * shard_size) - k * shard_size for k in todo), unit="latent",
               disable=not progress, dynamic_ncols=True)
    for k in todo:
        lo = k * shard_size
        hi = min(n, (k + 1) * shard_size)
        files = shard_files(out_dir, k)
        writer = ShardWriter(files["moments"], hi - lo, ds.item_shape, dtype)
        try:
            loader = torch.utils.data.DataLoader(_Arrays(ds, list(range(lo, hi))), batch_size=256,
                                                 num_workers=workers, collate_fn=np.stack,
                                                 worker_init_fn=die_with_parent)
            for batch in loader:                                   # (B, 8, h, w) float32
                writer.write(batch)
                bar.update(len(batch))
            meta = {"fingerprint": shard_fingerprint(k), "settings": settings, "shard": k, "first_item": lo,
                    "num_items": hi - lo,
                    "count": writer.count, "labels": ds.labels[lo:hi].tolist(),
                    "sources": [[(images or ds.files)[i], 0] for i in range(lo, hi)], "skipped": [],
                    "stats": writer.stats}
            atomic_write_json(files["meta"], meta, indent=None)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    bar.close()
    h = ds.item_shape[1]
    header = {"resolution": 8 * h, "latent_size": h, "latent_channels": 4,
              "moments_shape": list(ds.item_shape), "dtype": dtype, "scale_factor": 0.18215,
              "moments_layout": "channels 0-3 posterior mean, 4-7 posterior std, unscaled VAE space",
              "vae": "imported", "precision": None, "crop": "adm-center-crop", "min_size": None,
              "flip": False, "flip_layout": None, "num_classes": ds.num_classes, "class_names": None,
              "source_dir": images_root or os.path.abspath(ds.folder),
              "sources_are": "images" if images else "latents",
              "created_by": "python -m preprocessing import-repa"}
    info = finalize(out_dir, num_shards, header)
    print(f"[import-repa] wrote {out_dir}: {info['num_samples']} samples, {len(info['shards'])} shards",
          flush=True)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocessing import-repa",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", help="folder holding vae-sd/ (REPA/SRA layout), or vae-sd/ itself")
    p.add_argument("out_dir")
    p.add_argument("--shard-size", type=int, default=20000)
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--num-classes", type=int, default=None, help="default: largest label + 1")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import_repa(args.data_dir, args.out_dir, args.shard_size, args.dtype, args.num_classes, args.workers,
                    not args.no_progress)
    # a full disk: WriteError
    except (FileNotFoundError, ValueError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
