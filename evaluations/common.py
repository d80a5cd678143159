"""Small shared helpers for evaluations/: cache folder, streamed npz arrays, version record (atomic writes:
fileio).

Nothing here imports TensorFlow or torch, so the metric math and its tests stay light.
"""
import datetime
import math
import os
import platform
import zipfile
from collections.abc import Iterator

import numpy as np

from infra.fileio import human_bytes

CACHE_ENV = "SIT_SRA_CACHE"


def cache_dir() -> str:
    """The project's cache folder: $SIT_SRA_CACHE if set, else ~/.cache/sit_sra (not created here)."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "sit_sra")


def npz_keys(path: str) -> list:
    """Array names in an npz file (without the .npy suffix), read from the zip directory only."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not an npz (zip) file ({e})") from None


class NpzArrayReader:
    """Streams one array of an npz file in batches along axis 0, without loading it whole.

    Works for np.savez and np.savez_compressed files (the zip member is decompressed on the fly), which is
    what makes a 50K x 256 x 256 x 3 sample batch (about 9.8 GB) readable on a small machine.
    Attributes: shape, dtype. Use as a context manager.
    """

    def __init__(self, path: str, key: str = "arr_0"):
        keys = npz_keys(path)
        if key not in keys:
            raise KeyError(f"{path}: no array named '{key}' (arrays in file: {keys}); samples and reference "
                           f"images are read from '{key}' (uint8, N x H x W x C), as in the ADM evaluator")
        self.path = path
        self.key = key
        self._zip = zipfile.ZipFile(path)
        self._file = self._zip.open(key + ".npy")
        version = np.lib.format.read_magic(self._file)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self._file)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self._file)
        if fortran and len(shape) > 1:
            self.close()
            raise ValueError(f"{path}: '{key}' is stored in Fortran order; save it C-contiguous")
        if dtype.hasobject:
            self.close()
            raise ValueError(f"{path}: '{key}' holds Python objects; expected a numeric array")
        # what the header declares against what the zip member holds, before any of it is allocated (a few
        # MB can declare an array of many GB)
        declared = math.prod(shape) * dtype.itemsize
        held = self._zip.getinfo(key + ".npy").file_size - self._file.tell()
        if declared > held:
            self.close()
            raise ValueError(f"{path}: '{key}' declares shape {tuple(shape)} of {dtype} "
                             f"({human_bytes(declared)}) but the file holds {human_bytes(held)} of it: "
                             f"the file is damaged or not an array file numpy wrote; nothing was read")
        self.shape = tuple(shape)
        self.dtype = dtype
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._next_row = 0

    def __len__(self):
        return self.shape[0]

    def read(self, n: int) -> np.ndarray:
        """The next min(n, remaining) rows as an array of shape (rows,) + shape[1:]."""
        n = min(n, self.shape[0] - self._next_row)
        data = self._file.read(n * self._row_bytes)
        if len(data) != n * self._row_bytes:
            raise ValueError(f"{self.path}: '{self.key}' is truncated (expected {self.shape[0]} rows)")
        self._next_row += n
        return np.frombuffer(data, dtype=self.dtype).reshape((n,) + self.shape[1:])

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yields consecutive batches (file order) until the array is exhausted."""
        while self._next_row < self.shape[0]:
            yield self.read(batch_size)

    def close(self) -> None:
        self._file.close()
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_images_array(path: str, key: str, shape: tuple, dtype: np.dtype, channels: tuple = (3,)) -> None:
    """Clear error unless the array is uint8 N x H x W x C (C in `channels`), the ADM sample-batch layout."""
    if dtype != np.uint8:
        raise ValueError(f"{path}: '{key}' has dtype {dtype}; expected uint8 images in 0..255 "
                         f"(convert with np.clip(np.round(x), 0, 255).astype(np.uint8))")
    if len(shape) != 4 or shape[-1] not in channels:
        raise ValueError(f"{path}: '{key}' has shape {tuple(shape)}; expected N x H x W x C (NHWC) with "
                         f"C in {tuple(channels)}")
    if shape[0] == 0:
        raise ValueError(f"{path}: '{key}' holds no images")


def versions(*modules: str) -> dict:
    """Versions of python and the named modules that are importable (absent ones are left out)."""
    out = {"python": platform.python_version()}
    for name in modules:
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "unknown")
        except ImportError:
            pass
    return out


def now_iso() -> str:
    """Local time with offset, seconds precision (the `time` field of the JSON records)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
