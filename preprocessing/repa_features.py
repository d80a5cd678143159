"""Precomputed REPA targets: the frozen DINOv2's patch tokens of every sample of a latent-shard dataset.

    python -m preprocessing repa-features DATA_DIR [--enc-type dinov2_vitb14] [--enc-weights PATH]
        [--patch-size 2] [--batch-size 64] [--precision fp32|bf16] [--workers N] [--images-root DIR]
        [--device cuda|cpu]
    # rank k: shards k, k + world, ...
    torchrun --nproc_per_node 8 -m preprocessing repa-features DATA_DIR ...

DATA_DIR is a dataset written by `python -m preprocessing` (format in preprocessing/__init__.py). Sample i of
the moments shards is line i of sources.txt ("path<TAB>flip"); its image is re-read from the images root
(default: dataset.json's source_dir, the SRC_DIR the latents came from; --images-root replaces it), cropped
with the same ADM centre crop at the dataset's resolution, mirrored when flip is 1, and fed to DINOv2 exactly
as loss.REPATarget does: preprocess_for_dinov2(images, dinov2_resolution(tokens_side)), tokens_side =
resolution / 8 / patch_size. The features (x_norm_patchtokens, float16) go to
DATA_DIR/repa-<enc_type>-p<patch>/features-KKKKK.npy, one file per moments shard with the same counts.
Resumable: a shard is written under a temporary name and renamed when complete (fileio.atomic_path), its
features-KKKKK.json (settings fingerprint) first; finished shards are skipped. Deterministic for a fixed
device and batch size (batches never cross a shard), so a resumed run writes the same bytes. features.json is
written last, by rank 0, once every shard is there.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from dataset import read_json
from infra.fileio import WriteError, atomic_path, atomic_save_npy, atomic_write_json, npy_header
from models.dinov2 import (
    DINOV2_DIMS,
    dinov2_patch_tokens,
    dinov2_resolution,
    load_dinov2,
    preprocess_for_dinov2,
)

from .crop import center_crop_adm, load_rgb
from .launch import check_launch_flags, die_with_parent, rank_environment
from .shards import FORMAT_NAME, SettingsMismatch, fingerprint

FEATURES_FORMAT = "sit-repa-features"
FEATURES_VERSION = 1
FEATURE_PRECISIONS = ("fp32", "bf16")


def features_folder_name(enc_type: str, patch_size: int) -> str:
    """The folder under DATA_DIR (and the value of train.py's --repa-features): repa-dinov2_vitb14-p2."""
    return f"repa-{enc_type}-p{patch_size}"


def feature_files(folder: str, k: int):
    return {"features": os.path.join(folder, f"features-{k:05d}.npy"),
            "meta": os.path.join(folder, f"features-{k:05d}.json")}


def read_dataset(data_dir: str):
    """dataset.json, sources [(path, flipped)], shard offsets (num_shards + 1,) of a finished shard
    dataset."""
    path = os.path.join(data_dir, "dataset.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python -m preprocessing SRC_DIR {data_dir} ...` "
                                f"first (repa-features reads a finished latent-shard dataset)")
    info = read_json(path)
    if info.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME!r} dataset (format={info.get('format')!r})")
    if info.get("vae") == "imported" and info.get("sources_are") != "images":
        raise ValueError(f"{data_dir} was imported from a REPA/SRA latent folder without its images/: its "
                         f"sources.txt names latent files, not images, so there is nothing to run DINOv2 on. "
                         f"Import the folder with its images/ next to vae-sd/, or encode the image folder "
                         f"with `python -m preprocessing SRC_DIR OUT_DIR`")
    with open(os.path.join(data_dir, info["sources"])) as f:
        sources = []
        for n, line in enumerate(f.read().splitlines()):
            rel, _, flag = line.rpartition("\t")
            if not rel or flag not in ("0", "1"):
                raise ValueError(f"{data_dir}/sources.txt line {n + 1}: expected 'path<TAB>0|1', "
                                 f"got {line!r}")
            sources.append((rel, flag == "1"))
    counts = [int(s["count"]) for s in info["shards"]]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if len(sources) != offsets[-1]:
        raise ValueError(f"{data_dir}: sources.txt has {len(sources)} lines, the shards hold "
                         f"{offsets[-1]} samples")
    return info, sources, offsets


class _Crops(torch.utils.data.Dataset):
    """Group g of consecutive samples reading the same file -> (first sample, uint8 (m, res, res, 3)
    crops)."""

    def __init__(self, root, sources, groups, resolution):
        self.root = root
        self.sources = sources
        self.groups = groups
        self.resolution = resolution

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, g):
        first, m = self.groups[g]
        rel = self.sources[first][0]
        img, reason = load_rgb(os.path.join(self.root, rel), min_size=1)
        if img is None:
            raise RuntimeError(f"{os.path.join(self.root, rel)} (sample {first}) cannot be read any more "
                               f"({reason}): the images changed since the latents were encoded, or "
                               f"--images-root is wrong")
        crop = center_crop_adm(img, self.resolution)
        out = [np.ascontiguousarray(crop[:, ::-1]) if self.sources[i][1] else crop
               for i in range(first, first + m)]
        return first, np.stack(out)


def _collate(batch):
    return batch


def _groups(sources, lo, hi):
    """[(first sample, count)] of runs of the same file within samples [lo, hi) (an image and its mirror)."""
    out = []
    for i in range(lo, hi):
        if out and sources[i][0] == sources[out[-1][0]][0] and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


@torch.no_grad()
def encode_features(encoder, crops_uint8: torch.Tensor, tokens_side: int,
                    precision: str = "fp32") -> torch.Tensor:
    """uint8 (N, H, W, 3) crops -> float32 (N, tokens_side^2, D) x_norm_patchtokens on the encoder's
    device."""
    device = next(encoder.parameters()).device
    x = crops_uint8.to(device).permute(0, 3, 1, 2)                        # (N, 3, H, W) uint8
    # fp32, ImageNet-normalised, resized
    x = preprocess_for_dinov2(x, dinov2_resolution(tokens_side))
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        tokens = dinov2_patch_tokens(encoder, x)
    return tokens.float()


def repa_features(data_dir, enc_type="dinov2_vitb14", enc_weights=None, patch_size=2, batch_size=64,
                  precision="fp32", workers=4, images_root=None, device=None, encoder=None, rank=0,
                  world_size=1, progress=True):
    """Write DATA_DIR/repa-<enc_type>-p<patch>/. `encoder` may be passed directly (tests); otherwise it is
    loaded with models.dinov2.load_dinov2 from `enc_weights` (a local file; $DINOV2_WEIGHTS / the torch hub
    cache). Returns features.json's content when this call finished the folder (rank 0), else None."""
    if enc_type not in DINOV2_DIMS:
        raise ValueError(f"--enc-type must be one of {sorted(DINOV2_DIMS)}, got {enc_type!r}")
    if precision not in FEATURE_PRECISIONS:
        raise ValueError(f"--precision must be one of {FEATURE_PRECISIONS}, got {precision!r}")
    if batch_size < 1 or patch_size < 1:
        raise ValueError(f"--batch-size and --patch-size must be >= 1, got {batch_size} and {patch_size}")
    info, sources, offsets = read_dataset(data_dir)
    resolution = int(info["resolution"])
    if resolution % (8 * patch_size):
        raise ValueError(f"resolution {resolution} / 8 is not a multiple of --patch-size {patch_size}")
    side = resolution // 8 // patch_size
    tokens, dim = side * side, DINOV2_DIMS[enc_type]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    folder = os.path.join(data_dir, features_folder_name(enc_type, patch_size))
    num_shards = len(offsets) - 1
    weights = "in-memory"
    if encoder is None:
        from models.dinov2 import resolve_dinov2_weights
        # A clear error when absent.
        weights = os.path.abspath(resolve_dinov2_weights(enc_type, enc_weights))
    settings = {"encoder": enc_type, "patch": patch_size, "resolution": resolution, "precision": precision,
                "tokens": tokens, "dim": dim, "dtype": "float16", "crop": info.get("crop")}

    def shard_fingerprint(k):
        return fingerprint({"settings": settings, "weights": weights,
                            "sources": sources[offsets[k]:offsets[k + 1]]})

    os.makedirs(folder, exist_ok=True)
    mine = [k for k in range(num_shards) if k % world_size == rank]
    todo = [k for k in mine if not _shard_is_done(folder, k, shard_fingerprint(k))]
    if rank == 0:
        print(f"[repa-features] {len(sources)} samples in {num_shards} shards -> {folder}: {enc_type}, "
              f"{tokens} tokens x {dim}, DINOv2 at {dinov2_resolution(side)} px; rank 0 of {world_size}: "
              f"{len(mine) - len(todo)} shards done, {len(todo)} to do on {device}", flush=True)

    if todo:
        root = images_root if images_root is not None else info.get("source_dir")
        if not root or not os.path.isdir(root):
            raise FileNotFoundError(f"images root {root!r} is not a folder: pass --images-root, the SRC_DIR "
                                    f"the latents were encoded from (the sources.txt paths are relative to "
                                    f"it)")
        if encoder is None:
            encoder = load_dinov2(enc_type, path=weights)
        encoder = encoder.to(device).eval().requires_grad_(False)
        # fp32 means fp32 (as in the encoder).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        groups = [g for k in todo for g in _groups(sources, int(offsets[k]), int(offsets[k + 1]))]
        loader = torch.utils.data.DataLoader(
            _Crops(root, sources, groups, resolution), batch_size=8, shuffle=False, num_workers=workers,
            collate_fn=_collate, prefetch_factor=4 if workers > 0 else None, worker_init_fn=die_with_parent)
        stream = ((first + j, crop)
                  for chunk in loader for first, crops in chunk for j, crop in enumerate(crops))
        n_todo = sum(int(offsets[k + 1] - offsets[k]) for k in todo)
        bar = tqdm(total=n_todo, unit="img", desc=f"rank {rank}", position=rank, disable=not progress,
                   dynamic_ncols=True)
        t0 = time.time()
        for k in todo:
            _write_shard(folder, k, int(offsets[k]), int(offsets[k + 1]), stream, encoder, side, dim,
                         batch_size, precision, shard_fingerprint(k), bar)
        bar.close()
        if progress:
            dt = max(time.time() - t0, 1e-9)
            print(f"[repa-features] rank {rank}: {n_todo} samples in {dt:.1f}s ({n_todo / dt:.1f} img/s)",
                  flush=True)
        del stream, loader

    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if rank != 0:
        return None
    missing = [k for k in range(num_shards) if not os.path.isfile(feature_files(folder, k)["features"])]
    # Another rank (run separately) has work left.
    if missing:
        print(f"[repa-features] {len(missing)} shards still missing (e.g. {missing[:3]}): rerun the other "
              f"ranks", flush=True)
        return None
    out = {"format": FEATURES_FORMAT, "version": FEATURES_VERSION, **settings, "tokens_side": side,
           "input_resolution": dinov2_resolution(side), "feature": "x_norm_patchtokens", "pos_interp": "repa",
           "weights": weights, "num_samples": int(offsets[-1]),
           "counts": [int(offsets[k + 1] - offsets[k]) for k in range(num_shards)],
           "files": [os.path.basename(feature_files(folder, k)["features"]) for k in range(num_shards)],
           "layout": "features-KKKKK.npy (count_K, tokens, dim) float16: row i = sample i of "
                     "shards/moments-KKKKK.npy",
           "created_by": "python -m preprocessing repa-features"}
    for k, name in enumerate(out["files"]):
        shape = np.load(os.path.join(folder, name), mmap_mode="r").shape
        if shape != (out["counts"][k], tokens, dim):
            raise RuntimeError(f"{os.path.join(folder, name)} has shape {shape}, expected "
                               f"{(out['counts'][k], tokens, dim)}: delete it and rerun")
    atomic_write_json(os.path.join(folder, "features.json"), out)
    print(f"[repa-features] wrote {folder}: {out['num_samples']} samples, {num_shards} shards", flush=True)
    return out


def _shard_is_done(folder, k, expected):
    files = feature_files(folder, k)
    if not (os.path.isfile(files["features"]) and os.path.isfile(files["meta"])):
        return False
    with open(files["meta"]) as f:
        if json.load(f).get("fingerprint") != expected:
            raise SettingsMismatch(f"{files['features']} was computed with other settings or samples "
                                   f"(encoder, weights, --patch-size, --precision, or a re-encoded dataset): "
                                   f"delete {folder} to start over")
    return True


def _write_shard(folder, k, lo, hi, stream, encoder, side, dim, batch_size, precision, fp, bar):
    """Consume samples [lo, hi) from `stream`, run the encoder in batches, write the shard atomically."""
    files = feature_files(folder, k)
    shape = (hi - lo, side * side, dim)
    atomic_write_json(files["meta"], {"fingerprint": fp, "shard": k, "count": hi - lo}, indent=None)
    # Every image of the shard was skipped.
    if hi == lo:
        atomic_save_npy(files["features"], np.zeros(shape, np.float16))
        return
    # Renamed into place when complete; the free space checked first, the rows appended by plain writes (no
    # memory map: a disk that fills up anyway is a WriteError naming the file, never a SIGBUS).
    header = npy_header(np.float16, shape)
    with atomic_path(files["features"], nbytes=len(header) + int(np.prod(shape)) * 2) as tmp, \
            open(tmp, "wb") as f:
        f.write(header)
        for a in range(lo, hi, batch_size):
            batch = []
            for expected in range(a, min(hi, a + batch_size)):
                i, crop = next(stream)
                if i != expected:
                    raise AssertionError(f"loader order broken: got sample {i}, expected {expected}")
                batch.append(crop)
            feats = encode_features(encoder, torch.from_numpy(np.stack(batch)), side, precision)
            want = (len(batch),) + shape[1:]
            if tuple(feats.shape) != want:
                raise AssertionError(f"encoder gave features of shape {tuple(feats.shape)}, expected {want}")
            f.write(np.ascontiguousarray(feats.cpu().numpy().astype(np.float16)).tobytes())
            bar.update(len(batch))
    bar.set_postfix(shard=k, refresh=False)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m preprocessing repa-features",
                                description=__doc__.split("\n\n")[0],
                                epilog="Resume: rerun the same command. Multi-GPU: torchrun "
                                       "--nproc_per_node N -m preprocessing repa-features DATA_DIR ...; then "
                                       "train with --repa-features repa-<enc_type>-p<patch>.")
    p.add_argument("data_dir",
                   help="a dataset written by `python -m preprocessing` (dataset.json, sources.txt)")
    p.add_argument("--enc-type", choices=sorted(DINOV2_DIMS), default="dinov2_vitb14")
    p.add_argument("--enc-weights", default=None, help="local DINOv2 weights file (<enc_type>_pretrain.pth); "
                                                       "default $DINOV2_WEIGHTS, then the torch hub cache")
    p.add_argument("--patch-size", type=int, default=2,
                   help="SiT patch size: tokens per side = resolution/8/patch")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
    p.add_argument("--precision", choices=FEATURE_PRECISIONS, default="fp32",
                   help="encoder arithmetic: fp32 (TF32 off, default) or bf16 autocast")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes per rank (default: CPU cores / ranks, at most 8)")
    p.add_argument("--images-root", default=None, help="folder the sources.txt paths are relative to "
                                                       "(default: dataset.json's source_dir)")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_launch_flags(args.workers, args.device)
        if args.batch_size < 1 or args.patch_size < 1:
            raise ValueError(f"--batch-size and --patch-size must be >= 1, got {args.batch_size} and "
                             f"{args.patch_size}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with rank_environment(args.workers, args.device) as (rank, world_size, workers, device):
        try:
            repa_features(args.data_dir, args.enc_type, args.enc_weights, args.patch_size, args.batch_size,
                          args.precision, workers, args.images_root, device, rank=rank, world_size=world_size,
                          progress=not args.no_progress)
        # a full disk: WriteError
        except (FileNotFoundError, ValueError, WriteError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0
