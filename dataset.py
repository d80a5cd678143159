"""Datasets: preprocessed ImageNet latents (two layouts), the embedded digits default, posterior sampling,
a deterministic, resumable data order and the training batches that follow it.

What a dataset returns and exposes (all three classes):
    ds[i] -> (x, label): x float32 torch tensor, label int64 scalar tensor (LatentShardDataset with
        precomputed REPA features: (x, label, feats (T, D) float32)).
        LatentShardDataset / RepaLatentDataset: x = posterior moments (8, h, w), channels 0-3 mean, 4-7 std,
            unscaled; turn a batch into model input with sample_posterior(x) (on the device, every step).
        DigitsDataset: x = image (1, R, R) in [-1, 1], already the model input (pixel space, no VAE).
    ds.is_latent        True for VAE latents (call sample_posterior), False for pixels (use x as is).
    ds.latent_channels  channels the model sees: 4 (SD-VAE latent) or 1 (digits). Model in_channels.
    ds.latent_size      spatial side the model sees: resolution / 8 for latents, R for digits. Model
                        input_size.
    ds.resolution       image side in pixels (256, 512, or R for digits).
    ds.num_classes      number of classes (the null class for CFG is index num_classes).

Layouts read from disk (build_dataset(data_dir) detects which):
    LatentShardDataset: data_dir/dataset.json + shards/moments-*.npy + labels.npy, written by
        `python -m preprocessing` (format in preprocessing/__init__.py); memory-mapped.
    RepaLatentDataset: data_dir/vae-sd/**/*.npy (float32 (8, h, w)) + data_dir/vae-sd/dataset.json
        {"labels": [[relpath, label], ...]}, the REPA/SRA layout; files in sorted relative-path order.

Training order: EpochOrder(num_items, batch_size, seed, rank, world_size) (see its docstring);
train_batches(dataset, order, start, device) yields the model inputs in that order from batch `start` on.
digits_images() is also the shared source of the embedded dataset for evaluations/ (keep its behaviour).
"""
import ctypes
import functools
import json
import math
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.vae import LATENT_SCALE

SHARD_FORMAT = "sit-latent-shards"


class DataError(ValueError):
    """A dataset file that cannot be used; the message names the file and says what is wrong with it.

    Raised in DataLoader workers too: the loader re-raises it in the training process as DataError(report),
    a report of several lines ending in "dataset.DataError: <message>"; the message is recovered from it, so
    that train.py can end with that one line."""

    def __init__(self, message: str):
        tag = f"{type(self).__module__}.{type(self).__name__}: "
        if message.startswith(f"Caught {type(self).__name__} ") and tag in message:
            message = message.rstrip().rsplit(tag, 1)[1]
        super().__init__(message)


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            out = json.load(f)
    # ValueError: json.JSONDecodeError, bad UTF-8
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read as JSON ({type(e).__name__}: {e}); rewrite it (rerun the "
                        f"command that made the dataset)") from None
    if not isinstance(out, dict):
        raise DataError(f"{path} holds a JSON {type(out).__name__}, expected an object")
    return out


def _need(info: dict, path: str, *keys):
    """info[key] for each key, or a DataError naming the file and the missing keys."""
    missing = [k for k in keys if k not in info]
    if missing:
        raise DataError(f"{path} lacks {', '.join(map(repr, missing))}: not a complete dataset description")
    return [info[k] for k in keys]


def _open_npy(path: str, mmap_mode=None) -> np.ndarray:
    """np.load of a plain numeric .npy, or a DataError naming the file (random bytes, cut short, pickled)."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as e:
        with open(path, "rb") as f:
            numpy_header = f.read(6) == b"\x93NUMPY"
        why = str(e) if numpy_header else "no .npy header: the file holds other bytes"
        raise DataError(f"{path} cannot be read as a .npy array ({why}); the file is damaged or cut short: "
                        f"rewrite it (rerun the command that made the dataset)") from None


def _check_labels(labels: np.ndarray, num_classes: int, path: str, where=lambda i: f"sample {i}", given=""):
    """Integer labels in 0..num_classes - 1 (one vectorised pass at load time, never per step)."""
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path} holds {labels.dtype} labels, expected integers (class indices)")
    if labels.size == 0:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: label {int(labels[i])} of {where(i)} is outside the {num_classes} classes "
                        f"0..{num_classes - 1}{given} ({bad.size} such labels)")


def _check_finite(x: np.ndarray, where):
    """The moments just read are finite (vectorised over what was loaded); where() names the file and row."""
    if not np.isfinite(x).all():
        raise DataError(f"{where()} holds non-finite moments (NaN or inf): the file is damaged; re-encode "
                        f"this shard (delete it and rerun the preprocessing command)")


DIGITS_SPLITS = ("all", "train", "heldout")
DIGITS_HELDOUT_FRACTION = 0.25


def digits_split_indices(labels, split: str) -> np.ndarray:
    """Sorted indices of a digits split: 'all', or its class-stratified 'train' / 'heldout' parts.

    Held out: in every class, the first floor(0.25 x class count) indices of a permutation drawn from numpy's
    legacy RandomState(0), whose stream is frozen (NEP 19), so the split never changes; 'train' is the rest.
    Of the 1797 digits, 445 are held out and 1352 train: a run on 'digits:R:train' never sees a held-out one.
    """
    labels = np.asarray(labels)
    if split not in DIGITS_SPLITS:
        raise ValueError(f"digits split must be one of {', '.join(DIGITS_SPLITS)}, got {split!r}")
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.RandomState(0)
    heldout = []
    for c in range(int(labels.max()) + 1):
        members = np.nonzero(labels == c)[0]
        heldout.append(members[rng.permutation(len(members))[:int(DIGITS_HELDOUT_FRACTION * len(members))]])
    is_heldout = np.zeros(len(labels), dtype=bool)
    is_heldout[np.concatenate(heldout)] = True
    return np.nonzero(is_heldout if split == "heldout" else ~is_heldout)[0]


def digits_images(resolution: int = 16, split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled handwritten digits (1797 images of 8x8, 10 classes), no download.

    Returns (images, labels): float32 (N, 1, R, R) in [-1, 1] (bilinear upsampling of the 0..16 grey
    levels) and int64 (N,), in the dataset's order; split 'train' / 'heldout' keeps that subset
    (digits_split_indices). Deterministic.
    """
    from sklearn.datasets import load_digits

    if resolution % 8 != 0 or resolution < 8:
        raise ValueError(f"digits resolution must be a multiple of 8 (8, 16, 32, ...), got {resolution}")
    d = load_digits()
    keep = digits_split_indices(d.target, split)
    x = torch.from_numpy(d.images[keep].astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8) in [0, 1]
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    return x, torch.from_numpy(d.target[keep].astype(np.int64))


class DigitsDataset(torch.utils.data.Dataset):
    """The embedded default: 1797 digits (10 classes) upsampled to R x R, pixel space. Items: ((1, R, R),
    label).

    split: 'all' (the quickstart), 'train' or 'heldout' (digits_split_indices). classes: a subset of the
    digits, e.g. (0, 1, 2), relabelled 0..K-1 in the order given (a small label set to fine-tune onto);
    `classes` then maps each label back to its digit."""

    is_latent = False
    latent_channels = 1

    def __init__(self, resolution: int = 16, split: str = "all", classes: tuple[int, ...] | None = None):
        self.images, self.labels = digits_images(resolution, split)   # (N, 1, R, R) float32, (N,) int64
        self.classes = tuple(range(10)) if classes is None else tuple(classes)
        if classes is not None:
            keep = torch.isin(self.labels, torch.tensor(self.classes))
            self.images = self.images[keep]
            self.labels = torch.tensor([self.classes.index(int(c)) for c in self.labels[keep]])
        self.num_classes = len(self.classes)
        self.resolution = self.latent_size = resolution
        self.split = split

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]



def _check_arrays(files, counts, item_shape, listed_in, dtype=None):
    """Every .npy listed in `listed_in` exists and holds (count,) + item_shape of `dtype` (what `listed_in`
    says; None: any float), read from its header only."""
    for file, count in zip(files, counts):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{file} listed in {listed_in} is missing")
        array = _open_npy(file, mmap_mode="r")
        if array.shape != (count,) + tuple(item_shape):
            raise ValueError(f"{file} has shape {array.shape}, {listed_in} says "
                             f"{(count,) + tuple(item_shape)}")
        # integers would be read as values (int16 moments of 3 instead of 3.0e-4 ...): never reinterpreted
        if array.dtype != np.dtype(dtype or array.dtype) or array.dtype.kind != "f":
            said = f"{listed_in} says {dtype}" if dtype else "expected floats"
            raise DataError(f"{file} holds {array.dtype} values, {said}: rewrite it (rerun the command "
                            f"that made the dataset)")


class LatentShardDataset(torch.utils.data.Dataset):
    """Shards written by `python -m preprocessing`, memory-mapped. Items: (moments (8, h, w) float32, label).

    features: the name of a folder under data_dir written by `python -m preprocessing repa-features` (e.g.
    "repa-dinov2_vitb14-p2"); then items are (moments, label, feats (T, D) float32), the sample's precomputed
    DINOv2 patch tokens, and `features_info` holds its features.json.
    """

    is_latent = True
    latent_channels = 4

    def __init__(self, data_dir: str, features: str = None):
        path = os.path.join(data_dir, "dataset.json")
        if not os.path.isfile(path):
            hint = " (shards/ exists: preprocessing has not finished; rerun it)" if os.path.isdir(
                os.path.join(data_dir, "shards")) else ""
            raise FileNotFoundError(f"{path} not found{hint}")
        self.info = read_json(path)
        if self.info.get("format") != SHARD_FORMAT:
            raise ValueError(f"{path} is not a {SHARD_FORMAT!r} dataset.json "
                             f"(format={self.info.get('format')!r})")
        shards, labels_file, moments_shape, num_classes, resolution, latent_size = _need(
            self.info, path, "shards", "labels", "moments_shape", "num_classes", "resolution", "latent_size")
        self.data_dir = data_dir
        try:
            self.shard_files = [os.path.join(data_dir, s["file"]) for s in shards]
            counts = [int(s["count"]) for s in shards]
            self.item_shape = tuple(int(d) for d in moments_shape)                  # (8, h, w)
            self.num_classes = int(num_classes)
            self.resolution = int(resolution)
            self.latent_size = int(latent_size)
        except (TypeError, KeyError, ValueError) as e:
            raise DataError(f"{path}: malformed entry ({type(e).__name__}: {e})") from None
        # shard s holds items [offsets[s], offsets[s + 1])
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        labels_path = os.path.join(data_dir, labels_file)
        self.labels = _open_npy(labels_path)                                        # (N,) int64
        n = int(self.offsets[-1])
        if self.labels.shape != (n,):
            raise ValueError(f"{labels_path} has shape {self.labels.shape}, the shards hold {n} samples")
        _check_labels(self.labels, self.num_classes, labels_path, self._sample_name,
                      f" (num_classes in {path})")
        try:
            dtype = np.dtype(self.info["dtype"]) if "dtype" in self.info else None
        except TypeError:
            raise DataError(f"{path}: dtype {self.info['dtype']!r} is not a numpy dtype") from None
        _check_arrays(self.shard_files, counts, self.item_shape, path, dtype)
        self.has_flips = bool(self.info.get("flip"))
        self.class_names = self.info.get("class_names")
        # the memory maps, opened lazily in each process
        self._maps = None
        self._feature_maps = None
        self.features = features
        self.features_info = None
        self.feature_files = None
        if features is not None:
            self._check_features(features, counts)

    def _check_features(self, name: str, counts):
        folder = os.path.join(self.data_dir, name)
        # repa-<enc_type>-p<patch> names the command's flags
        encoder, _, patch = name.removeprefix("repa-").rpartition("-p")
        flags = f"--enc-type {encoder} --patch-size {patch}" if encoder and patch.isdigit() else \
            "--enc-type ENC --patch-size P"
        how = f"`python -m preprocessing repa-features {self.data_dir} {flags} --enc-weights WEIGHTS`"
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"precomputed features {folder} not found: write them with {how} (the "
                                    f"folder is repa-<enc_type>-p<patch>, e.g. repa-dinov2_vitb14-p2)")
        path = os.path.join(folder, "features.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {how} has not finished; rerun it")
        info = read_json(path)
        if list(info.get("counts", [])) != list(counts):
            raise ValueError(f"precomputed features {folder} do not match the moments shards of "
                             f"{self.data_dir}: {len(info.get('counts', []))} shards with counts "
                             f"{_short(info.get('counts'))} vs {len(counts)} with {_short(counts)} (the "
                             f"dataset was re-encoded?); rerun {how}")
        self.feature_files = [os.path.join(folder, f) for f in info["files"]]
        _check_arrays(self.feature_files, counts, (int(info["tokens"]), int(info["dim"])), path,
                      info.get("dtype"))
        self.features_info = info

    # DataLoader workers reopen the memory maps themselves
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = state["_feature_maps"] = None
        return state

    def _shards(self):
        if self._maps is None:
            self._maps = [_open_npy(f, mmap_mode="r") for f in self.shard_files]
        return self._maps

    def _features(self):
        if self._feature_maps is None:
            self._feature_maps = [_open_npy(f, mmap_mode="r") for f in self.feature_files]
        return self._feature_maps

    def __len__(self):
        return int(self.offsets[-1])

    def _sample_name(self, i: int) -> str:
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return f"sample {i} (row {i - int(self.offsets[s])} of {self.shard_files[s]})"

    def __getitem__(self, i):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        x = np.array(self._shards()[s][i - self.offsets[s]], dtype=np.float32)    # (8, h, w), a copy
        _check_finite(x, lambda: self._sample_name(i))
        y = torch.tensor(int(self.labels[i]), dtype=torch.int64)
        if self.features is None:
            return torch.from_numpy(x), y
        f = np.array(self._features()[s][i - self.offsets[s]], dtype=np.float32)  # (T, D)
        return torch.from_numpy(x), y, torch.from_numpy(f)


def _repa_folder(data_dir: str):
    """data_dir/vae-sd (or data_dir itself if it is the vae-sd folder) when it holds dataset.json, else
    None."""
    for d in (os.path.join(data_dir, "vae-sd"), data_dir):
        path = os.path.join(d, "dataset.json")
        if os.path.isfile(path) and not _is_shard_json(path):
            return d
    return None


def _is_shard_json(path):
    try:
        with open(path) as f:
            return json.load(f).get("format") == SHARD_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class RepaLatentDataset(torch.utils.data.Dataset):
    """The REPA/SRA layout: data_dir/vae-sd/**/*.npy float32 (8, h, w) + vae-sd/dataset.json
    {"labels": [[rel, y]]}.

    Files are taken in sorted relative-path order (as REPA's loader does); every .npy must have a label and
    every labelled file must exist. num_classes: max label + 1 unless given (the json does not store it).
    """

    is_latent = True
    latent_channels = 4
    has_flips = False
    class_names = None

    def __init__(self, data_dir: str, num_classes: int = None):
        folder = _repa_folder(data_dir)
        if folder is None:
            raise FileNotFoundError(f"{os.path.join(data_dir, 'vae-sd', 'dataset.json')} not found (REPA "
                                    f"layout)")
        self.folder = folder
        path = os.path.join(folder, "dataset.json")
        entries = read_json(path).get("labels")
        if not entries:
            raise ValueError(f"{folder}/dataset.json has no labels (expected "
                             f"{{\"labels\": [[relpath, label], ...]}})")
        try:
            labels = {str(rel).replace("\\", "/"): y for rel, y in entries}
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: 'labels' must be [[relpath, integer label], ...] ({type(e).__name__}: "
                            f"{e})") from None
        # int(2.7) would be 2: a label that is not a JSON integer is refused, never truncated
        bad = [[rel, y] for rel, y in labels.items() if not isinstance(y, int) or isinstance(y, bool)]
        if bad:
            raise DataError(f"{path}: labels must be integers (class indices); {len(bad)} are not, e.g. "
                            f"{bad[0][0]}: {bad[0][1]!r}")
        found = set()
        for root, _, files in os.walk(folder):
            for f in files:
                if f.endswith(".npy"):
                    found.add(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/"))
        unlabelled = sorted(found - labels.keys())
        missing = sorted(labels.keys() - found)
        if unlabelled or missing:
            raise ValueError(f"{folder}: {len(unlabelled)} .npy files without a label in dataset.json (e.g. "
                             f"{unlabelled[:3]}) and {len(missing)} labelled files missing (e.g. "
                             f"{missing[:3]})")
        # relative paths
        self.files = sorted(found)
        self.labels = np.asarray([labels[r] for r in self.files], dtype=np.int64)
        first = _open_npy(os.path.join(folder, self.files[0]), mmap_mode="r")
        if first.ndim != 3 or first.shape[0] != 8:
            raise ValueError(f"{folder}/{self.files[0]}: expected moments (8, h, w), got {first.shape}")
        self.item_shape = tuple(first.shape)
        self.latent_size = first.shape[1]
        self.resolution = 8 * first.shape[1]
        self.num_classes = int(num_classes) if num_classes else max(int(self.labels.max()) + 1, 1)
        _check_labels(self.labels, self.num_classes, path, lambda i: self.files[i],
                      f" (--num-classes {num_classes})" if num_classes else "")

    def __len__(self):
        return len(self.files)

    def load(self, i) -> np.ndarray:
        """The stored array of item i as is (float32 (8, h, w))."""
        path = os.path.join(self.folder, self.files[i])
        x = _open_npy(path)
        if x.shape != self.item_shape:
            raise DataError(f"{path} has shape {x.shape}, expected {self.item_shape}")
        _check_finite(x, lambda: path)
        return x

    def __getitem__(self, i):
        x = self.load(int(i)).astype(np.float32, copy=False)
        return torch.from_numpy(x), torch.tensor(int(self.labels[i]), dtype=torch.int64)


def _short(values, limit=8):
    values = list(values or [])
    return str(values) if len(values) <= limit else f"[{', '.join(map(str, values[:limit]))}, ...]"


def parse_digits_spec(spec: str) -> tuple[int, str, tuple[int, ...] | None]:
    """'digits[:R[:SPLIT]][:CLASSES]' -> (R, SPLIT, CLASSES): 'digits' = (16, 'all', None),
    'digits:16:train' = (16, 'train', None), 'digits:16:0,1,2' = (16, 'all', (0, 1, 2))."""
    parts = spec.split(":")
    classes = None
    if len(parts) > 2 and all(c.isdigit() for c in parts[-1].split(",")):
        classes = tuple(int(c) for c in parts.pop().split(","))
    usage = (f"{spec!r}: the embedded dataset is 'digits[:R[:SPLIT]][:CLASSES]', e.g. 'digits:16:train' "
             f"or 'digits:16:0,1,2' (R a multiple of 8, SPLIT one of {', '.join(DIGITS_SPLITS)}, CLASSES "
             f"distinct digits 0-9)")
    if parts[0] != "digits" or len(parts) > 3 or (len(parts) > 1 and not parts[1].isdigit()):
        raise ValueError(usage)
    if classes is not None and (len(set(classes)) != len(classes) or max(classes) > 9):
        raise ValueError(usage)
    split = parts[2] if len(parts) == 3 else "all"
    if split not in DIGITS_SPLITS:
        raise ValueError(f"{spec!r}: unknown digits split {split!r} (one of {', '.join(DIGITS_SPLITS)})")
    return (int(parts[1]) if len(parts) > 1 else 16), split, classes


def build_dataset(data_dir: str, num_classes: int | None = None, features: str | None = None
                  ) -> torch.utils.data.Dataset:
    """'digits' / 'digits:32' / 'digits:16:train' / 'digits:16:0,1,2' -> DigitsDataset; a folder ->
    LatentShardDataset or RepaLatentDataset by layout.

    features: a precomputed-features folder name under data_dir (LatentShardDataset only; see its
    docstring)."""
    is_shards = os.path.isfile(os.path.join(data_dir, "dataset.json")) and _is_shard_json(
        os.path.join(data_dir, "dataset.json"))
    if features is not None and not is_shards:
        raise ValueError(f"precomputed features ({features}) need a dataset written by `python -m "
                         f"preprocessing` (dataset.json + shards/ + sources.txt); {data_dir!r} is not one "
                         f"(the digits and the REPA/SRA latent folder have none: run the encoder on the fly "
                         f"instead)")
    if data_dir == "digits" or str(data_dir).startswith("digits:"):
        return DigitsDataset(*parse_digits_spec(data_dir))
    if is_shards:
        return LatentShardDataset(data_dir, features)
    if _repa_folder(data_dir) is not None:
        return RepaLatentDataset(data_dir, num_classes)
    if os.path.isdir(os.path.join(data_dir, "shards")):
        raise FileNotFoundError(f"{data_dir} has shards/ but no dataset.json: preprocessing has not "
                                f"finished; rerun `python -m preprocessing SRC_DIR {data_dir} ...` with the "
                                f"same arguments")
    raise FileNotFoundError(
        f"no dataset in {data_dir!r}. Expected either\n"
        f"  - {os.path.join(data_dir, 'dataset.json')} + shards/moments-*.npy + labels.npy "
        f"(written by `python -m preprocessing IMAGENET_TRAIN_DIR {data_dir} --resolution 256`), or\n"
        f"  - {os.path.join(data_dir, 'vae-sd', 'dataset.json')} + vae-sd/**/*.npy (the REPA/SRA layout), "
        f"or\n"
        f"  - the name 'digits' (or 'digits:32', 'digits:16:train') for the embedded dataset.")


def sample_posterior(moments: torch.Tensor, scale: float = LATENT_SCALE,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """moments (N, 8, h, w) [mean, std] -> z = (mean + std * n) * scale, (N, 4, h, w) float32, n ~ N(0, I).

    Runs on moments' device; `generator` (optional) must live on that device.
    """
    if moments.ndim != 4 or moments.shape[1] % 2 != 0:
        raise ValueError(f"sample_posterior expects moments (N, 2C, h, w) = [mean, std], got "
                         f"{tuple(moments.shape)}")
    mean, std = moments.float().chunk(2, dim=1)                                     # (N, 4, h, w) each
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * noise) * scale


class EpochOrder:
    """Deterministic, resumable order of index batches for one rank.

    Epoch e is torch.randperm(num_items) drawn from a generator seeded with (seed, e); the last incomplete
    global batch is dropped; global batch j of epoch e is perm[j*G:(j+1)*G] with G = batch_size * world_size,
    and rank r takes its slice [r*batch_size:(r+1)*batch_size]. So ranks are disjoint and the order does not
    depend on when the run was interrupted.

        order = EpochOrder(len(ds), batch_size=32, seed=0, rank=rank, world_size=world)
        # on resume: {"epoch": e, "position": p}
        order.load_state_dict(ckpt["data"])
        # the rest of the current epoch, LongTensor (batch_size,)
        for idx in order:
            x, y = torch.utils.data.default_collate([ds[i] for i in idx]); ...
            # the next batch to be handed out
            ckpt["data"] = order.state_dict()

    Iterating advances (epoch, position); at the end of an epoch it moves to (epoch + 1, 0) and stops, so the
    next `for` loop runs the next epoch. It can also be a DataLoader batch_sampler, but a DataLoader fetches
    ahead, so its state runs ahead of the training loop: then checkpoint the number of batches consumed and
    call seek(batches_consumed) on resume (batches_consumed = optimizer steps * gradient accumulation;
    train_batches does).
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.batches_per_epoch = self.num_items // (self.batch_size * self.world_size)
        # the one check that a global batch fits in the data
        if self.num_items < self.batch_size * self.world_size * grad_accum:
            raise ValueError(f"{num_items} items cannot fill one global batch of {batch_size} x {world_size} "
                             f"ranks" + (f" x {grad_accum} accumulation steps" if grad_accum > 1 else ""))
        # optimizer steps per pass over the data, as the release and REPA count them (a DataLoader with
        # drop_last): floor(items / (batch x ranks)) batches per rank, one step per grad_accum batches (the
        # last, shorter accumulation of an epoch also steps); --epochs and the epoch of lambda's schedule
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / grad_accum)
        self.epoch = 0
        self.position = 0

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """(batches_per_epoch, batch_size) int64: this rank's index batches of `epoch`."""
        seed = int(np.random.SeedSequence([self.seed, int(epoch)]).generate_state(1, np.uint64)[0] >> 1)
        perm = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(seed))
        used = perm[:self.batches_per_epoch * self.batch_size * self.world_size]
        return used.view(self.batches_per_epoch, self.world_size, self.batch_size)[:, self.rank].contiguous()

    def __len__(self):
        # batches left in the current epoch
        return self.batches_per_epoch - self.position

    def __iter__(self):
        batches = self.epoch_batches(self.epoch)
        while self.position < self.batches_per_epoch:
            b = batches[self.position]
            self.position += 1
            yield b
        self.epoch, self.position = self.epoch + 1, 0

    def seek(self, batches_consumed: int):
        """Jump to the state after `batches_consumed` batches since epoch 0 (e.g. steps * grad
        accumulation)."""
        self.epoch, self.position = divmod(int(batches_consumed), self.batches_per_epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_items": self.num_items, "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict):
        for key in ("seed", "num_items", "batch_size", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"EpochOrder state was saved with {key}={state[key]}, this run has "
                                 f"{key}={getattr(self, key)}: the data order would not continue exactly")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if not 0 <= self.position <= self.batches_per_epoch:
            raise ValueError(f"EpochOrder position {self.position} outside 0..{self.batches_per_epoch}")


def _worker_init(ignore: tuple[int, ...], worker_id: int) -> None:
    """A DataLoader worker ignores the run's stop signals: launchers and SLURM signal the whole process
    group, and the training process decides when to stop (a worker killed by the signal would take the run
    down before its checkpoint). It dies with the training process (Linux: PR_SET_PDEATHSIG)."""
    for sig in ignore:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ignore)
    try:
        # 1 = PR_SET_PDEATHSIG
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _start_workers(loader: torch.utils.data.DataLoader, ignore: tuple[int, ...]) -> Iterator:
    """iter(loader), with `ignore` blocked while the workers are forked: a signal in that window waits in the
    training process (delivered when unblocked) and is discarded in the workers (_worker_init)."""
    if not ignore or loader.num_workers == 0:
        return iter(loader)
    signal.pthread_sigmask(signal.SIG_BLOCK, ignore)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, ignore)


def loader_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of the DataLoader of (run seed, rank, epoch): it draws its workers' base seed from its own
    generator, never from the global one that the loss draws from (a resumed run builds its loader at
    another point of that stream)."""
    return int(np.random.SeedSequence([seed, rank, epoch, 1]).generate_state(1, np.uint64)[0] >> 1)


def train_batches(dataset: torch.utils.data.Dataset, order: EpochOrder, start: int, device: torch.device,
                  num_workers: int = 0, ignore_signals: Sequence[int] = ()
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Yields this rank's training batches (x, y, extra) forever, from batch `start` (batches consumed since
    epoch 0, i.e. optimizer steps x gradient accumulation) on: the order depends only on (seed, batch index),
    so a resumed run continues exactly. x is the model input (a posterior sample z for latents), extra the
    loss's keyword arguments: {"features": (B, T, D)} when the dataset carries precomputed REPA targets, else
    {}.

    The digits live on the device and are indexed there; latents come through a DataLoader with `order` as
    its batch sampler (which runs ahead of the loop, so a checkpoint's `order` state is informative only),
    its own generator (loader_seed) and workers that ignore `ignore_signals` (the run's stop signals): close()
    the generator when done (it shuts the workers down)."""
    order.seek(start)
    if not dataset.is_latent:
        images = dataset.images.to(device)
        labels = dataset.labels.to(device)
        while True:
            for idx in order:
                idx = idx.to(device)
                yield images[idx], labels[idx], {}
    ignore = tuple(int(s) for s in ignore_signals)
    batches = None
    try:
        while True:
            generator = torch.Generator().manual_seed(loader_seed(order.seed, order.rank, order.epoch))
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, num_workers=num_workers,
                                                 pin_memory=device.type == "cuda", generator=generator,
                                                 worker_init_fn=functools.partial(_worker_init, ignore))
            batches = _start_workers(loader, ignore)
            # (moments, labels[, features])
            for x, y, *feats in batches:
                extra = {"features": feats[0].to(device, non_blocking=True)} if feats else {}
                # z = (mean + std n) * 0.18215
                z = sample_posterior(x.to(device, non_blocking=True))
                yield z, y.to(device, non_blocking=True), extra
    finally:
        # close(), or an error met in a worker: the loader's own shutdown (what freeing its iterator runs;
        # called here because a traceback the caller keeps would keep the iterator) asks the workers to exit
        # and stops watching them; one still alive is killed: it ignores the SIGTERM the loader (and Python
        # at exit, which would then wait for it forever) ends it with.
        if batches is not None and hasattr(batches, "_shutdown_workers"):
            batches._shutdown_workers()
        batches = None
        for worker in multiprocessing.active_children():
            if worker.daemon:
                worker.kill()
                worker.join(timeout=5)
