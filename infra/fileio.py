"""Writing files so that a killed process never leaves half of one: every writer goes through `atomic_path`
(arrays, JSON, checkpoints, PNGs and sample grids).

    with atomic_path("out/x.npz") as tmp:   # tmp = out/.x.tmp-PID-XXXX.npz (same folder, same extension)
        np.savez(tmp, ...)                   # renamed to out/x.npz only if the block finishes

The temporary is created with O_EXCL under a fresh name, so a link planted at a predictable name is never
followed; a write that fails for want of space or permission raises `WriteError`, one line naming the path.
"""
import contextlib
import errno
import io
import json
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Iterable, Iterator

import numpy as np
from PIL import Image


class WriteError(OSError):
    """A write refused by the file system (full disk, read-only, no permission), said in one line."""


_WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted", errno.EIO: "the write failed (input/output error)"}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def free_bytes(path: str) -> int:
    """Free bytes for an unprivileged writer on the file system that holds `path` (or its nearest existing
    parent)."""
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return shutil.disk_usage(folder).free


def _refused(code: int, path: str, nbytes: int | None, free: int) -> WriteError:
    """'PATH: no space left on the device: 4.1 KiB needed, 1000 B free' (the sizes when known)."""
    need = f": {human_bytes(nbytes)} needed, {human_bytes(free)} free" if nbytes else ""
    return WriteError(code, f"{path}: {_WRITE_ERRNOS[code]}{need}")


def ensure_free_space(path: str, nbytes: int) -> None:
    """Refuse, before writing, a file of `nbytes` that the file system holding `path` cannot take."""
    free = free_bytes(path)
    if nbytes > free:
        raise _refused(errno.ENOSPC, path, nbytes, free)


def write_error(exc: BaseException, path: str, nbytes: int | None = None) -> WriteError | None:
    """The one-line `WriteError` for a failed write of `path` (ENOSPC, EDQUOT, EROFS, EACCES, EPERM, and
    torch's "file write failed"), None for any other error."""
    code = getattr(exc, "errno", None)
    # torch.save's writer reports a full disk as a RuntimeError
    torch_write = code not in _WRITE_ERRNOS and "file write failed" in str(exc)
    if code not in _WRITE_ERRNOS and not torch_write:
        return None
    free = free_bytes(path)
    if torch_write:
        code = errno.ENOSPC if nbytes is None or nbytes > free else errno.EIO
    return _refused(code, path, nbytes, free)


@contextlib.contextmanager
def atomic_path(path: str, nbytes: int | None = None) -> Iterator[str]:
    """Yield a fresh temporary name next to `path`, created empty with O_EXCL (never a planted link); rename
    it onto `path` on success (atomic), delete it on error. `nbytes`, when known, is checked against the free
    space first; a full disk or a refused write raises `WriteError` naming `path`."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    try:
        os.makedirs(folder or ".", exist_ok=True)
        if nbytes is not None:
            ensure_free_space(folder or ".", nbytes)
        while True:
            tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{ext}")
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                                 0o666))
                break
            except FileExistsError:
                continue
    except OSError as exc:
        raise (write_error(exc, path, nbytes) or exc) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.lexists(tmp):
            os.remove(tmp)
        clear = write_error(exc, path, nbytes) if isinstance(exc, (OSError, RuntimeError)) else None
        if clear is not None:
            raise clear from None
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # someone else's live process
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[tuple[str, int]]:
    """Delete the temporaries `.NAME.tmp-PID[-XXXX].EXT` in `folder` whose writer (PID, on this machine) is
    dead: what a kill during an atomic write leaves behind. -> [(path, bytes)] removed."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        m = re.fullmatch(r"\..+\.tmp-(\d+)(-[0-9a-f]+)?(\.[^.]*)?", name)
        path = os.path.join(folder, name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))) and os.path.isfile(path):
            size = os.path.getsize(path)
            os.remove(path)
            removed.append((path, size))
    return removed


def atomic_write_bytes(path: str, data: bytes, fsync: bool = False) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str, obj: object, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def tensor_bytes(obj: object) -> int:
    """Bytes of the tensors and arrays inside nested dicts / lists / tuples: a checkpoint's size, near
    enough to check the free space before writing it."""
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    nbytes = getattr(obj, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else 0


def atomic_torch_save(obj: object, path: str) -> None:
    # torch only here: the evaluator and the metric code use this module without importing torch
    import torch
    with atomic_path(path, nbytes=tensor_bytes(obj)) as tmp:
        torch.save(obj, tmp)


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue(), fsync=True)


def atomic_savez(path: str, **arrays: np.ndarray) -> None:
    """np.savez (uncompressed, so arr_0 can be streamed back) to `path`, atomically."""
    if not path.endswith(".npz"):
        raise ValueError(f"npz output path must end with .npz, got {path!r}")
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def npy_header(dtype: np.dtype | str | type, shape: tuple[int, ...]) -> bytes:
    """The .npy (version 1.0) header numpy writes for a C-ordered array of this dtype and shape."""
    buf = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def stream_npz(path: str, shape: tuple[int, ...], chunks: Iterable[np.ndarray],
               dtype: np.dtype | type = np.uint8, extra: dict | None = None) -> None:
    """Write an uncompressed .npz (the ADM evaluator's format) whose `arr_0` of `shape` is the concatenation
    of `chunks` (arrays along axis 0), without holding it in memory; `extra` arrays are stored beside it.
    Atomic."""
    written = 0
    with atomic_path(path, nbytes=int(np.prod(shape)) * np.dtype(dtype).itemsize) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                f.write(npy_header(dtype, shape))
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk, dtype=dtype)
                    if chunk.shape[1:] != tuple(shape[1:]):
                        raise ValueError(f"{path}: chunk of shape {chunk.shape} does not fit "
                                         f"arr_0 {tuple(shape)}")
                    f.write(chunk.tobytes())
                    written += len(chunk)
            if written != shape[0]:
                raise ValueError(f"{path}: {written} rows written for arr_0 of {shape[0]}")
            for key, value in (extra or {}).items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(value))


def unusable_folder(path: str, what: str) -> str:
    """Why `path` cannot be (or become) a folder to write in, as a message naming `what` (the flag); "" when
    it can. Checked before any work starts, so that a long run does not fail at its first write."""
    if os.path.isdir(path):
        return "" if os.access(path, os.W_OK | os.X_OK) else f"{what} {path}: the folder is not writable"
    if os.path.exists(path):
        return f"{what} {path} is a file, not a folder"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{what} {path}: {parent} is a file, not a folder"
    return "" if os.access(parent, os.W_OK | os.X_OK) else f"{what} {path}: {parent} is not writable"


def save_png(image: np.ndarray, path: str) -> None:
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


@contextlib.contextmanager
def scratch_file(path: str) -> Iterator[tuple[int, str]]:
    """A scratch file next to `path` for a writer that needs one besides its output: created empty with
    O_EXCL under a fresh name (never a planted link), named as atomic_path names its temporaries (so that
    remove_stale_temporaries clears it after a kill). Yields (fd opened for reading and writing, name); always
    closed and deleted."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    while True:
        tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{ext}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise (write_error(exc, path) or exc) from None
    try:
        yield fd, tmp
    finally:
        os.close(fd)
        os.remove(tmp)
