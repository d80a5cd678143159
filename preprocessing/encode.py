"""Image folder -> latent shards (the format is documented in preprocessing/__init__.py).

    python -m preprocessing SRC_DIR OUT_DIR --resolution 256
        [--vae PATH | --vae-id stabilityai/sd-vae-ft-mse] [--batch-size 64] [--precision fp32|tf32|bf16]
        [--dtype float32|float16] [--flip] [--shard-size 20000] [--workers 8] [--device cuda|cpu]
        [--reference-batch N] [--reference-seed 0] [--min-size 8]
    # shard k is done by rank k % world_size
    torchrun --nproc_per_node 8 -m preprocessing SRC_DIR OUT_DIR ...

Images are assigned to shards by position in the sorted file list (shard k = files [k*S, (k+1)*S)), so the
shards do not depend on the number of processes. Finished shards are skipped on restart (checked against a
fingerprint of their file names and the settings, and of their files' sizes and modification times: a shard
whose images changed under the same names is encoded again); a shard is written under a temporary name and
renamed when complete. Only regular files are read; decoding workers die with their parent. When every shard
is finished, rank 0 writes labels.npy, sources.txt, skipped.txt, the reference batch and dataset.json.
Encoding is deterministic for a fixed device and batch size: a restarted run writes the same bytes.
"""
import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from infra.fileio import WriteError, unusable_folder
from models.vae import DEFAULT_VAE_ID, PRECISIONS, configure_precision, encode_moments, load_vae

from .crop import IMAGE_EXTENSIONS, center_crop_adm, load_rgb
from .launch import check_launch_flags, die_with_parent, rank_environment
from .shards import (
    DTYPES,
    ShardWriter,
    atomic_save_npy,
    atomic_write_json,
    finalize,
    files_fingerprint,
    fingerprint,
    shard_files,
    shard_files_changed,
    shard_is_done,
)

# VAE factor 8 x the smallest SiT patch (2): the latent side must split into whole patches
RESOLUTION_STEP = 16


def scan_folder(src_dir: str) -> tuple[list[str], list[tuple[str, int]], int]:
    """-> (class_names, items [(relative path, label)], number of non-image files ignored).

    Labels are indices of the class folders in sorted order; files are found recursively inside each class
    folder and sorted by relative path; only files with an image extension (IMAGE_EXTENSIONS, any case) are
    taken.
    """
    if not os.path.isdir(src_dir):
        raise FileNotFoundError(f"SRC_DIR {src_dir!r} is not a folder (expected one sub-folder per class)")
    class_names = sorted(e.name for e in os.scandir(src_dir) if e.is_dir() and not e.name.startswith("."))
    if not class_names:
        raise FileNotFoundError(f"SRC_DIR {src_dir!r} has no class sub-folders "
                                f"(expected e.g. n01440764/*.JPEG)")
    items = []
    ignored = 0
    for label, name in enumerate(class_names):
        found = []
        for root, dirs, files in os.walk(os.path.join(src_dir, name)):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                rel = os.path.relpath(os.path.join(root, f), src_dir).replace(os.sep, "/")
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(rel)
                else:
                    ignored += 1
        items += [(rel, label) for rel in sorted(found)]
    if not items:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {src_dir!r}")
    return class_names, items, ignored


class CropDataset(torch.utils.data.Dataset):
    """Global item index -> (index, uint8 (res, res, 3) crop or None, reason or None); never raises on bad
    files."""

    def __init__(self, src_dir: str, items: list[tuple[str, int]], indices: list[int], resolution: int,
                 min_size: int):
        self.src_dir = src_dir
        self.items = items
        self.indices = indices
        self.resolution = resolution
        self.min_size = min_size

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        idx = self.indices[i]
        img, reason = load_rgb(os.path.join(self.src_dir, self.items[idx][0]), self.min_size)
        if img is None:
            return idx, None, reason
        try:
            return idx, center_crop_adm(img, self.resolution), None
        except Exception as e:                                        # noqa: BLE001
            return idx, None, f"crop failed: {type(e).__name__}: {e}"


def check_flags(out_dir: str, resolution: int, batch_size: int, shard_size: int, reference_batch: int = 0,
                max_shards: int | None = None) -> None:
    """Flag values refused before anything is read or written (ValueError naming the flag)."""
    if resolution % RESOLUTION_STEP or resolution < RESOLUTION_STEP:
        raise ValueError(f"--resolution {resolution}: must be a positive multiple of {RESOLUTION_STEP} (the "
                         f"SD-VAE downsamples by 8 and the smallest SiT patch is 2; /4 models need a "
                         f"multiple of 32, /8 models of 64), e.g. 256 or 512 for ImageNet")
    for flag, value, low in (("--batch-size", batch_size, 1), ("--shard-size", shard_size, 1),
                             ("--reference-batch", reference_batch, 0),
                             ("--max-shards", 1 if max_shards is None else max_shards, 1)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    problem = unusable_folder(out_dir, "OUT_DIR")
    if problem:
        raise ValueError(problem)


def _collate(batch):
    return batch


def encode_folder(src_dir: str, out_dir: str, resolution: int = 256, vae: torch.nn.Module | None = None,
                  vae_path: str | None = None, vae_id: str = DEFAULT_VAE_ID, batch_size: int = 64,
                  precision: str = "fp32", dtype: str = "float32", flip: bool = False,
                  shard_size: int = 20000, workers: int = 4, device: str | torch.device | None = None,
                  reference_batch: int = 0, reference_seed: int = 0, min_size: int = 8,
                  max_shards: int | None = None, rank: int = 0, world_size: int = 1,
                  progress: bool = True) -> dict | None:
    """Encode SRC_DIR into OUT_DIR. `vae` may be passed directly (tests); otherwise it is loaded via load_vae.

    max_shards: stop after finishing that many shards in this process (for time-limited jobs; rerun to
    continue). Returns dataset.json's content when this call finished the dataset, else None.
    """
    check_flags(out_dir, resolution, batch_size, shard_size, reference_batch, max_shards)
    if precision not in PRECISIONS or dtype not in DTYPES:
        raise ValueError(f"--precision must be in {PRECISIONS} and --dtype in {DTYPES}; "
                         f"got {precision}, {dtype}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    class_names, items, ignored = scan_folder(src_dir)
    n = len(items)
    num_shards = (n + shard_size - 1) // shard_size
    # file index -> rank in a seeded permutation
    reference = {}
    # N + margin candidates: some may be bad
    if reference_batch > 0:
        perm = np.random.default_rng(reference_seed).permutation(n)
        margin = max(16, reference_batch // 100)
        reference = {int(i): r for r, i in enumerate(perm[:reference_batch + margin])}
    vae_name = os.path.abspath(vae_path) if vae_path else (vae_id if vae is None else "in-memory")
    settings = {"resolution": resolution, "vae": vae_name, "precision": precision, "dtype": dtype,
                "flip": flip, "min_size": min_size, "shard_size": shard_size,
                "reference_seed": reference_seed}

    def shard_fingerprint(k):
        lo = k * shard_size
        hi = min(n, (k + 1) * shard_size)
        return fingerprint({"settings": settings, "items": items[lo:hi],
                            "reference": [[i, reference[i]] for i in range(lo, hi) if i in reference]})

    def shard_files_fingerprint(k):
        return files_fingerprint(src_dir, [rel for rel, _ in items[k * shard_size:(k + 1) * shard_size]])

    os.makedirs(os.path.join(out_dir, "shards"), exist_ok=True)
    mine = [k for k in range(num_shards) if k % world_size == rank]
    todo = []
    for k in mine:
        if not shard_is_done(out_dir, k, shard_fingerprint(k), settings):
            todo.append(k)
        elif shard_files_changed(out_dir, k, shard_files_fingerprint(k)):
            print(f"[preprocessing] shard {k}: image files under SRC_DIR changed since it was written (size "
                  f"or modification time); encoding it again", flush=True)
            todo.append(k)
            # the dataset is no longer complete until finalize has run again
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, "dataset.json"))
    stopped_early = max_shards is not None and len(todo) > max_shards
    if stopped_early:
        todo = todo[:max_shards]
    if rank == 0:
        print(f"[preprocessing] {n} image files in {len(class_names)} classes ({ignored} other files "
              f"ignored); {num_shards} shards of {shard_size}; rank 0 of {world_size}: "
              f"{len(mine) - len(todo)} done, {len(todo)} to do on {device}", flush=True)

    if todo:
        if vae is None:
            vae = load_vae(vae_path, vae_id, device)
        configure_precision(precision)
        indices = [i for k in todo for i in range(k * shard_size, min(n, (k + 1) * shard_size))]
        loader = torch.utils.data.DataLoader(
            CropDataset(src_dir, items, indices, resolution, min_size), batch_size=8, shuffle=False,
            num_workers=workers, collate_fn=_collate, prefetch_factor=4 if workers > 0 else None,
            worker_init_fn=die_with_parent)
        # ordered (index, crop, reason)
        stream = (x for chunk in loader for x in chunk)
        bar = tqdm(total=len(indices), unit="img", desc=f"rank {rank}", position=rank,
                   disable=not progress, dynamic_ncols=True)
        t0 = time.time()
        for k in todo:
            _encode_shard(out_dir, k, shard_size, n, items, stream, vae, batch_size, precision, dtype, flip,
                          resolution, reference, shard_fingerprint(k), device, bar, settings,
                          shard_files_fingerprint(k))
        bar.close()
        if progress:
            print(f"[preprocessing] rank {rank}: {len(indices)} images in {time.time() - t0:.1f}s "
                  f"({len(indices) / max(time.time() - t0, 1e-9):.1f} img/s)", flush=True)
        del stream, loader

    stopped = torch.tensor(int(stopped_early))
    if world_size > 1 and torch.distributed.is_initialized():
        # also waits for every rank
        torch.distributed.all_reduce(stopped, op=torch.distributed.ReduceOp.MAX)
    if stopped.item():
        print(f"[preprocessing] rank {rank}: stopped after --max-shards {max_shards}; rerun to continue",
              flush=True)
        return None
    if rank != 0:
        return None
    header = {"resolution": resolution, "latent_size": resolution // 8, "latent_channels": 4,
              "moments_shape": [8, resolution // 8, resolution // 8], "dtype": dtype, "scale_factor": 0.18215,
              "moments_layout": "channels 0-3 posterior mean, 4-7 posterior std, unscaled VAE space",
              "vae": vae_name, "precision": precision, "crop": "adm-center-crop", "min_size": min_size,
              "flip": flip,
              "flip_layout": "interleaved: sample 2i = image i, 2i+1 = its mirror" if flip else None,
              "num_classes": len(class_names), "class_names": class_names, "ignored_non_image_files": ignored,
              "source_dir": os.path.abspath(src_dir), "created_by": "python -m preprocessing"}
    info = finalize(out_dir, num_shards, header,
                    {"count": reference_batch, "seed": reference_seed} if reference_batch > 0 else None)
    print(f"[preprocessing] wrote {out_dir}: {info['num_samples']} samples from {info['num_images']} images, "
          f"{info['num_skipped']} skipped (see skipped.txt), {len(info['shards'])} shards", flush=True)
    return info


def _encode_shard(out_dir, k, shard_size, n, items, stream: Iterator, vae, batch_size, precision, dtype, flip,
                  resolution, reference, fp, device, bar, settings=None, files_fp=None):
    """Consume shard k's items from `stream`, encode them in batches, write the shard atomically."""
    lo = k * shard_size
    hi = min(n, (k + 1) * shard_size)
    files = shard_files(out_dir, k)
    h = resolution // 8
    writer = ShardWriter(files["moments"], (hi - lo) * (2 if flip else 1), (8, h, h), dtype)
    labels = []
    sources = []
    skipped = []
    ref_crops = []
    ref_ranks = []
    # [(index, crop)] waiting for a full batch
    pending = []

    def flush():
        x = torch.from_numpy(np.stack([c for _, c in pending]))      # (B, res, res, 3) uint8
        if flip:
            # (2B, ...): originals, then mirrors
            x = torch.cat([x, x.flip(2)])
        m = encode_moments(vae, x, precision).cpu()                    # (B or 2B, 8, h, w) float32
        if flip:
            # interleave
            m = m.view(2, -1, *m.shape[1:]).transpose(0, 1).reshape(-1, *m.shape[1:])
        writer.write(m.numpy())
        for idx, _ in pending:
            for mirrored in ([False, True] if flip else [False]):
                labels.append(items[idx][1])
                sources.append([items[idx][0], int(mirrored)])
        pending.clear()

    try:
        for expected in range(lo, hi):
            idx, crop, reason = next(stream)
            if idx != expected:
                raise AssertionError(f"loader order broken: got item {idx}, expected {expected}")
            bar.update(1)
            if crop is None:
                skipped.append([items[idx][0], reason])
                continue
            if idx in reference:
                ref_crops.append(crop)
                ref_ranks.append(reference[idx])
            pending.append((idx, crop))
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
        if ref_crops:
            atomic_save_npy(files["reference"], np.stack(ref_crops))  # (m, res, res, 3) uint8
        meta = {"fingerprint": fp, "files": files_fp, "settings": settings, "shard": k, "first_item": lo,
                "num_items": hi - lo, "count": writer.count,
                "labels": labels, "sources": sources, "skipped": skipped, "reference_ranks": ref_ranks,
                "stats": writer.stats}
        # meta first, the moments file last
        atomic_write_json(files["meta"], meta, indent=None)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    bar.set_postfix(shard=k, skipped=len(skipped), refresh=False)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m preprocessing", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Resume: rerun the same command. Multi-GPU: torchrun --nproc_per_node N -m preprocessing ...\n"
               "Keep existing REPA/SRA latents: python -m preprocessing import-repa DATA_DIR OUT_DIR "
               "(--help there).")
    p.add_argument("src_dir", help="image folder, one sub-folder per class (ImageNet train/ layout)")
    p.add_argument("out_dir", help="output folder (created; rerun with the same arguments to resume)")
    p.add_argument("--resolution", type=int, default=256, help="crop size in pixels (256 or 512)")
    p.add_argument("--vae", dest="vae_path", default=None, help="local diffusers AutoencoderKL folder")
    p.add_argument("--vae-id", default=DEFAULT_VAE_ID,
                   help="Hugging Face id looked up in the local cache only")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder call (x2 with --flip)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="encoder arithmetic: fp32 (TF32 off, default), tf32, bf16 (fastest on GPU)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="storage dtype of the moments")
    p.add_argument("--flip", action="store_true", help="also store each image's horizontal mirror")
    p.add_argument("--shard-size", type=int, default=20000, help="image files per shard")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes per rank (default: CPU cores / ranks, at most 8)")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--reference-batch", type=int, default=0, help="also write N cropped images to "
                                                                   "reference_batch.npz (for the evaluator)")
    p.add_argument("--reference-seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=8, help="skip images whose short side is smaller")
    p.add_argument("--max-shards", type=int, default=None, help="finish at most this many shards, then exit")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_launch_flags(args.workers, args.device)
        check_flags(args.out_dir, args.resolution, args.batch_size, args.shard_size, args.reference_batch,
                    args.max_shards)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with rank_environment(args.workers, args.device) as (rank, world_size, workers, device):
        try:
            encode_folder(args.src_dir, args.out_dir, args.resolution, vae_path=args.vae_path,
                          vae_id=args.vae_id, batch_size=args.batch_size, precision=args.precision,
                          dtype=args.dtype, flip=args.flip, shard_size=args.shard_size, workers=workers,
                          device=device, reference_batch=args.reference_batch,
                          reference_seed=args.reference_seed, min_size=args.min_size,
                          max_shards=args.max_shards, rank=rank, world_size=world_size,
                          progress=not args.no_progress)
        # incl. SettingsMismatch (a rerun), a full disk (WriteError)
        except (FileNotFoundError, ValueError, WriteError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0
