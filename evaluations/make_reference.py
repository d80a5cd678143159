"""Builds a reference batch for evaluations/evaluator.py in the format of ADM's VIRTUAL_*.npz files:

    arr_0  uint8 (M, R, R, 3)   reference images for precision/recall (ADM: 10,000)
    mu, sigma       float64     pool_3 statistics over all used images (2048-d)
    mu_s, sigma_s   float64     mixed_6/conv[..., :7] statistics over all used images (2023-d)
    labels int64 (M,)           class index per arr_0 image, when known (folder names, or `labels` in the
                                input npz)

    python -m evaluations.make_reference OUT.npz --images DIR --resolution 256 [--num-ref 10000]
        [--inception PB]
    python -m evaluations.make_reference OUT.npz --npz IMAGES.npz [--resolution 256]
    ... [--backend torch|tf] [--device cuda]       # the Inception backend, as evaluations/evaluator.py

Images from a folder (searched recursively; class = first sub-folder, sorted) get ADM's centre crop
(adm_center_crop). Images from an npz (`arr_0`, uint8 NHWC) are used as they are when already R x R,
centre-cropped otherwise. Statistics are accumulated in a stream (float64), so the whole ImageNet training set
fits in memory. `--no-stats` writes arr_0 (and labels) only; the evaluator then computes the statistics from
arr_0.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

# run as a script: python evaluations/<this file>.py
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluations import metrics
from evaluations.common import NpzArrayReader, check_images_array, npz_keys
from evaluations.inception import load_network, resolve_graph_path
from infra.fileio import atomic_savez, unusable_folder
from preprocessing.crop import IMAGE_EXTENSIONS, center_crop_adm, load_rgb, to_rgb


def adm_center_crop(image: Image.Image, resolution: int) -> np.ndarray:
    """ADM's centre crop (preprocessing/crop.py) of any PIL image -> uint8 (R, R, 3)."""
    return center_crop_adm(to_rgb(image), resolution)


def list_images(folder: str) -> tuple[list[str], np.ndarray | None]:
    """Sorted image paths under `folder` and their labels (index of the sorted first-level sub-folder, or None
    when the images lie directly in `folder`)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images folder not found: {folder}")
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        paths += [os.path.join(root, f) for f in sorted(files)
                  if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    if not paths:
        raise ValueError(f"--images {folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    rel_first = [os.path.relpath(p, folder).split(os.sep)[0] for p in paths]
    if any(os.sep not in os.path.relpath(p, folder) for p in paths):
        return paths, None
    classes = sorted(set(rel_first))
    index = {c: i for i, c in enumerate(classes)}
    return paths, np.array([index[c] for c in rel_first], dtype=np.int64)


class _FolderSource:
    """Image files, ADM-cropped; a file that cannot be read is skipped and listed (as preprocessing does)."""

    def __init__(self, folder, resolution):
        self.paths, self.labels = list_images(folder)
        self.resolution = resolution
        # [path, reason] of each skipped file
        self.skipped = []

    def __len__(self):
        return len(self.paths)

    def batch(self, indices):
        """-> (uint8 (B', R, R, 3) of the readable files, bool (B,): which of `indices` were read)."""
        out = []
        ok = []
        for i in indices:
            image, reason = load_rgb(self.paths[i], min_size=1)
            if reason is not None:
                self.skipped.append([self.paths[i], reason])
            else:
                out.append(center_crop_adm(image, self.resolution))
            ok.append(reason is None)
        empty = np.empty((0, self.resolution, self.resolution, 3), dtype=np.uint8)
        return (np.stack(out) if out else empty), np.array(ok, dtype=bool)


class _NpzSource:
    """arr_0 of an npz, read in order (indices must be increasing); centre-cropped when not R x R."""

    def __init__(self, path, resolution):
        self.reader = NpzArrayReader(path, "arr_0")
        check_images_array(path, "arr_0", self.reader.shape, self.reader.dtype, channels=(1, 3))
        h, w = self.reader.shape[1:3]
        self.resolution = resolution or h
        self.labels = None
        if "labels" in npz_keys(path):
            with np.load(path) as z:
                self.labels = np.asarray(z["labels"], dtype=np.int64)
            if self.labels.shape != (self.reader.shape[0],):
                raise ValueError(f"{path}: 'labels' has shape {self.labels.shape}, "
                                 f"expected ({self.reader.shape[0]},)")
        self._pos = 0

    def __len__(self):
        return self.reader.shape[0]

    def batch(self, indices):
        rows = []
        for i in indices:
            if i < self._pos:
                raise ValueError("npz rows must be read in increasing order")
            if i > self._pos:
                # skip unused rows
                self.reader.read(i - self._pos)
            img = self.reader.read(1)[0]
            self._pos = i + 1
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, axis=-1)
            if img.shape[:2] != (self.resolution, self.resolution):
                img = adm_center_crop(Image.fromarray(img), self.resolution)
            rows.append(img)
        return np.stack(rows), np.ones(len(rows), dtype=bool)

    def close(self):
        self.reader.close()


def make_reference(out: str, images: str | None = None, npz: str | None = None, resolution: int | None = None,
                   num_ref: int = 10000, max_images: int | None = None, seed: int = 0,
                   inception: str | None = None, stats: bool = True, batch_size: int = 64,
                   progress: bool = True, backend: str = "torch", device: str | None = None) -> dict:
    """Writes the reference npz `out` and returns a summary dict (see the module docstring)."""
    if (images is None) == (npz is None):
        raise ValueError("give exactly one of --images DIR or --npz FILE")
    if images is not None and not resolution:
        raise ValueError("--images needs --resolution (e.g. 256)")
    for flag, value in (("--resolution", resolution), ("--num-ref", num_ref), ("--max-images", max_images),
                        ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not out.endswith(".npz"):
        raise ValueError(f"OUT {out}: the reference batch is an .npz file; give a name ending in .npz")
    problem = unusable_folder(os.path.dirname(os.path.abspath(out)), f"OUT {out}:")
    if problem:
        raise ValueError(problem)
    source = _FolderSource(images, resolution) if images is not None else _NpzSource(npz, resolution)
    rng = np.random.default_rng(seed)
    used = np.arange(len(source))
    if max_images is not None and max_images < len(used):
        used = np.sort(rng.choice(used, size=max_images, replace=False))
    # positions in `used`
    ref_pos = np.sort(rng.choice(len(used), size=min(num_ref, len(used)), replace=False))
    is_ref = np.zeros(len(used), dtype=bool)
    is_ref[ref_pos] = True

    net = None
    if stats:
        net = load_network(resolve_graph_path(inception), backend, device)
        pool_stats = metrics.RunningStats()
        spatial_stats = metrics.RunningStats()
    res = source.resolution
    arr = np.empty((len(ref_pos), res, res, 3), dtype=np.uint8)
    # which reference rows were read (a skipped file leaves none)
    ref_read = np.zeros(len(used), dtype=bool)
    filled = 0
    bar = tqdm(total=len(used), desc="reference images", unit="img", disable=not progress)
    for start in range(0, len(used), batch_size):
        # uint8 (B', R, R, 3): the readable ones of this batch's B files
        batch, ok = source.batch(used[start:start + batch_size])
        if net is not None and len(batch):
            pool, spatial = net.features(batch)
            pool_stats.update(pool)
            spatial_stats.update(spatial)
        ref = is_ref[start:start + batch_size]
        keep = batch[ref[ok]]
        arr[filled:filled + len(keep)] = keep
        ref_read[start:start + batch_size] = ref & ok
        filled += len(keep)
        bar.update(len(ok))
    bar.close()
    skipped = getattr(source, "skipped", [])
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if len(skipped) == len(used):
        raise ValueError(f"--images {images}: none of the {len(used)} files could be read")
    arr = arr[:filled]
    if hasattr(source, "close"):
        source.close()
    result = {"arr_0": arr}
    if net is not None:
        net.close()
        result["mu"], result["sigma"] = pool_stats.stats()
        result["mu_s"], result["sigma_s"] = spatial_stats.stats()
    if source.labels is not None:
        result["labels"] = source.labels[used[ref_read]]
    atomic_savez(out, **result)
    return {"out": out, "images_used": int(len(used) - len(skipped)), "ref_images": int(filled),
            "resolution": res, "stats": bool(stats), "labels": source.labels is not None,
            "backend": backend if stats else None, "skipped": skipped}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output reference npz")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image folder (class sub-folders optional), ADM centre crop")
    src.add_argument("--npz", help="npz with arr_0 uint8 N x H x W x C images (e.g. samples or preprocessed "
                                   "images)")
    p.add_argument("--resolution", type=int, help="output resolution R (needed with --images)")
    p.add_argument("--num-ref", type=int, default=10000, help="images kept in arr_0 (ADM: 10000)")
    p.add_argument("--max-images", type=int,
                   help="use a random subset of this many images for the statistics")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset choices")
    p.add_argument("--inception", help="classify_image_graph_def.pb (else $ADM_INCEPTION_GRAPH or the cache)")
    p.add_argument("--no-stats", action="store_true",
                   help="write arr_0 (and labels) only; no Inception needed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", choices=["torch", "tf"], default="torch",
                   help="Inception backend (evaluations/evaluator.py --backend)")
    p.add_argument("--device", help="--backend torch: cuda or cpu (default cuda when available)")
    args = p.parse_args(argv)
    try:
        summary = make_reference(args.out, args.images, args.npz, args.resolution, args.num_ref,
                                 args.max_images, args.seed, args.inception, not args.no_stats,
                                 args.batch_size, backend=args.backend, device=args.device)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e.args[0] if isinstance(e, KeyError) else e}")
    print(summary)
    return summary


if __name__ == "__main__":
    main()
