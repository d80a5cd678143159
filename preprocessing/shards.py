"""Writing the shard format described in preprocessing/__init__.py: one shard at a time, atomically, then the
dataset-level files (labels.npy, sources.txt, skipped.txt, reference_batch.npz, dataset.json) once all are
done.

A shard is finished when shards/moments-KKKKK.npy exists (it is renamed into place last, after its meta file),
with the same settings and file names (`fingerprint`) and the same file sizes and modification times
(`files_fingerprint`: a shard whose images changed is encoded again). Temporary files end in ".tmp" and are
replaced by the next attempt.
"""
import hashlib
import json
import os
import shutil

import numpy as np

from infra.fileio import (
    atomic_path,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    ensure_free_space,
    npy_header,
    stream_npz,
    write_error,
)

FORMAT_NAME = "sit-latent-shards"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")


def fingerprint(obj: object) -> str:
    """Stable hash of a JSON-able object (settings + a shard's file list)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def shard_files(out_dir: str, k: int) -> dict[str, str]:
    d = os.path.join(out_dir, "shards")
    return {"moments": os.path.join(d, f"moments-{k:05d}.npy"),
            "meta": os.path.join(d, f"meta-{k:05d}.json"),
            "reference": os.path.join(d, f"reference-{k:05d}.npy")}


def files_fingerprint(src_dir: str, rel_paths: list[str]) -> str:
    """Stable hash of the size and modification time of each file: an image changed under the same name
    changes it (a shard's "files" in its meta file)."""
    stats = []
    for rel in rel_paths:
        try:
            st = os.stat(os.path.join(src_dir, rel))
            stats.append([st.st_size, st.st_mtime_ns])
        except OSError:
            stats.append(None)
    return fingerprint(stats)


def shard_files_changed(out_dir: str, k: int, expected_files: str) -> bool:
    """True when finished shard k records a files fingerprint other than `expected_files` (shards written
    before it was recorded are taken as they are)."""
    with open(shard_files(out_dir, k)["meta"]) as f:
        recorded = json.load(f).get("files")
    return recorded is not None and recorded != expected_files


class SettingsMismatch(RuntimeError, ValueError):
    """OUT_DIR holds shards made with other settings or input files (a ValueError too: a one-line error)."""


# the command-line flag of each setting a shard's fingerprint covers
SETTING_FLAGS = {"resolution": "--resolution", "vae": "--vae / --vae-id", "precision": "--precision",
                 "dtype": "--dtype", "flip": "--flip", "min_size": "--min-size", "shard_size": "--shard-size",
                 "reference_seed": "--reference-seed", "source": "the source layout"}


def _flag_value(key, value):
    if key == "flip":
        return "--flip" if value else "no --flip"
    return f"{SETTING_FLAGS.get(key, key)} {value}"


def shard_is_done(out_dir: str, k: int, expected_fingerprint: str, settings: dict = None) -> bool:
    """True if shard k is finished with the same inputs and settings; raises SettingsMismatch, naming the
    settings that differ (when the shard's meta file records them: `settings`), if it was made differently."""
    files = shard_files(out_dir, k)
    if not (os.path.isfile(files["moments"]) and os.path.isfile(files["meta"])):
        return False
    try:
        with open(files["meta"]) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise SettingsMismatch(f"{files['meta']} cannot be read ({type(e).__name__}: {e}): delete it and "
                               f"{files['moments']}, then rerun") from None
    if meta.get("fingerprint") == expected_fingerprint:
        return True
    done = "finished" if os.path.isfile(os.path.join(out_dir, "dataset.json")) else "partly written"
    old = meta.get("settings")
    if settings is not None and isinstance(old, dict):
        diff = [k for k in settings if k in old and old[k] != settings[k]]
        if diff:
            was = ", ".join(_flag_value(k, old[k]) for k in diff)
            now = ", ".join(_flag_value(k, settings[k]) for k in diff)
            raise SettingsMismatch(
                f"OUT_DIR {out_dir} is a {done} dataset written with {was}; this run asks for {now}: its "
                f"shards hold other input files or settings. Rerun with {was} to reuse or resume it, or "
                f"write to a new OUT_DIR (or delete {os.path.join(out_dir, 'shards')} to start over)")
        what = "the settings match, so the image files under SRC_DIR or --reference-batch changed"
    else:
        what = ("resolution, VAE, precision, dtype, --flip, --min-size, --shard-size, --reference-batch/"
                "--reference-seed")
    raise SettingsMismatch(
        f"{files['moments']} was written from other input files or settings ({what}). OUT_DIR {out_dir} is a "
        f"{done} dataset; use a new OUT_DIR, or delete {os.path.join(out_dir, 'shards')} to start over.")


class ShardWriter:
    """Appends float32 moments (n, 8, h, w) to a .npy of at most `capacity` samples, cast to `dtype`.

    The free space for `capacity` samples is checked before anything is written, and the samples are
    appended by plain writes (no memory map: a disk that fills up anyway is a WriteError naming the shard and
    the bytes, never a SIGBUS). close() trims the file to the samples written and renames it into place;
    nothing is held in RAM.
    """

    def __init__(self, path: str, capacity: int, sample_shape: tuple[int, ...], dtype: str):
        if dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
        self.path = path
        self.tmp = path[:-len(".npy")] + ".tmp"
        self.capacity = capacity
        self.sample_shape = tuple(sample_shape)
        self.dtype = np.dtype(dtype)
        self.sample_bytes = int(np.prod(self.sample_shape)) * self.dtype.itemsize
        self.count = 0
        c = self.sample_shape[0] // 2
        # running sums; the fp16 errors in std units
        self.stats = {"n": 0, "mean_sum": [0.0] * c, "mean_sqsum": [0.0] * c,
                      "std_sum": 0.0, "std_min": None, "std_max": None,
                      "fp16_err_max": 0.0, "fp16_err_sum": 0.0}
        header = npy_header(self.dtype, (capacity,) + self.sample_shape)
        self.nbytes = len(header) + capacity * self.sample_bytes
        ensure_free_space(path, self.nbytes)
        # a previous attempt's temporary (or a link planted there) is replaced, never written through
        if os.path.lexists(self.tmp):
            os.remove(self.tmp)
        try:
            self.file = open(self.tmp, "xb")
            self.file.write(header)
        except OSError as exc:
            raise (write_error(exc, path, self.nbytes) or exc) from None
        self.offset = len(header)

    def write(self, moments: np.ndarray) -> None:
        n = moments.shape[0]
        if moments.shape[1:] != self.sample_shape:
            raise ValueError(f"shard {self.path}: expected samples of shape {self.sample_shape}, "
                             f"got {moments.shape[1:]}")
        if self.count + n > self.capacity:
            raise ValueError(f"shard {self.path}: more than {self.capacity} samples written")
        stored = np.ascontiguousarray(moments.astype(self.dtype))
        try:
            self.file.write(stored.tobytes())
        except OSError as exc:
            raise (write_error(exc, self.path, self.nbytes) or exc) from None
        self.count += n
        if n == 0:
            return
        c = moments.shape[1] // 2
        st = self.stats
        mean = moments[:, :c].astype(np.float64)
        std = moments[:, c:].astype(np.float64)
        st["n"] += mean[:, 0].size
        st["mean_sum"] = [a + b for a, b in zip(st["mean_sum"], mean.sum(axis=(0, 2, 3)).tolist())]
        st["mean_sqsum"] = [a + b for a, b in zip(st["mean_sqsum"],
                                                  (mean ** 2).sum(axis=(0, 2, 3)).tolist())]
        st["std_sum"] += float(std.sum())
        lo = float(std.min())
        hi = float(std.max())
        st["std_min"] = lo if st["std_min"] is None else min(st["std_min"], lo)
        st["std_max"] = hi if st["std_max"] is None else max(st["std_max"], hi)
        # what fp16 storage costs, in std units
        if self.dtype == np.float16:
            err = np.abs(stored[:, :c].astype(np.float64) - mean) / std
            st["fp16_err_max"] = max(st["fp16_err_max"], float(err.max()))
            st["fp16_err_sum"] += float(err.sum())

    def close(self) -> None:
        """Trim to `count` samples, flush, and rename into place (atomic)."""
        header = npy_header(self.dtype, (self.count,) + self.sample_shape)
        nbytes = self.count * self.sample_bytes
        try:
            # usual case: patch the shape in place
            if len(header) == self.offset:
                self.file.seek(0)
                self.file.write(header)
                self.file.truncate(self.offset + nbytes)
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
            # header size changed: copy the samples (all the file holds after the header) behind the new one
            else:
                self.file.close()
                with atomic_path(self.tmp + "2", nbytes=len(header) + nbytes) as tmp2, \
                        open(self.tmp, "rb") as src, open(tmp2, "wb") as dst:
                    dst.write(header)
                    src.seek(self.offset)
                    shutil.copyfileobj(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.replace(self.tmp + "2", self.tmp)
        except OSError as exc:
            raise (write_error(exc, self.path, self.nbytes) or exc) from None
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if hasattr(self, "file"):
            self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def write_reference_npz(out_dir: str, selection: list[tuple[str, list[int]]]) -> None:
    """selection: [(part path, rows)] -> reference_batch.npz (arr_0 uint8 NHWC, the rows of each part in
    order), streamed without holding the images in RAM. If the parts are gone, a previous finalize already
    wrote the npz (and deleted them): keep it."""
    path = os.path.join(out_dir, "reference_batch.npz")
    if not all(os.path.isfile(p) for p, _ in selection):
        if os.path.isfile(path):
            return
        raise RuntimeError(f"reference parts missing in {os.path.join(out_dir, 'shards')} and no {path}: "
                           f"delete the shards whose meta lists reference_ranks and rerun")
    first = np.load(selection[0][0], mmap_mode="r")
    shape = (sum(len(rows) for _, rows in selection),) + first.shape[1:]      # (N, res, res, 3)
    del first
    def rows_of_parts():
        for p, rows in selection:
            part = np.load(p, mmap_mode="r")
            if part.dtype != np.uint8 or part.shape[1:] != shape[1:]:
                raise RuntimeError(f"{p}: expected uint8 {shape[1:]} crops, got {part.dtype} {part.shape}")
            yield part[rows]
            del part

    stream_npz(path, shape, rows_of_parts())


def summarize_stats(stats: list[dict], float16: bool) -> dict:
    """Per-shard running sums -> dataset.json's latent_stats and float16_rounding."""
    stats = [s for s in stats if s["n"] > 0]
    n = sum(s["n"] for s in stats)
    if n == 0:
        return {"latent_stats": None, "float16_rounding": None}
    c = len(stats[0]["mean_sum"])
    m1 = [sum(s["mean_sum"][i] for s in stats) / n for i in range(c)]
    m2 = [sum(s["mean_sqsum"][i] for s in stats) / n for i in range(c)]
    overall = float(np.sqrt(sum(m2) / c - (sum(m1) / c) ** 2))
    out = {"latent_stats": {
        "what": "statistics of the unscaled posterior mean per channel, and of the posterior std, over the "
                "dataset",
        "channel_mean": m1, "channel_std": [float(np.sqrt(max(b - a * a, 0.0))) for a, b in zip(m1, m2)],
        # compare with scale_factor 0.18215
        "scale_for_unit_std": 1.0 / overall if overall > 0 else None,
        "posterior_std_mean": sum(s["std_sum"] for s in stats) / (n * c),
        "posterior_std_min": min(s["std_min"] for s in stats),
        "posterior_std_max": max(s["std_max"] for s in stats)},
        "float16_rounding": None}
    if float16:
        out["float16_rounding"] = {
            "what": "|float16(mean) - float32(mean)| / posterior std over all mean values",
            "max_abs_err_over_std": max(s["fp16_err_max"] for s in stats),
            "mean_abs_err_over_std": sum(s["fp16_err_sum"] for s in stats) / (n * c)}
    return out


def finalize(out_dir: str, num_shards: int, header: dict, reference: dict | None = None) -> dict:
    """All shards finished -> labels.npy, sources.txt, skipped.txt, reference_batch.npz, dataset.json.
    Idempotent.

    reference: None, or {"count": N, "seed": s}: the reference batch takes the N readable candidates of
    smallest rank (the shard metas list each saved crop's rank in the seeded permutation), in file order.
    """
    shards = []
    labels = []
    sources = []
    skipped = []
    # (rank, shard, row) of every reference candidate
    candidates = []
    # per-shard running sums
    stats = []
    for k in range(num_shards):
        files = shard_files(out_dir, k)
        if not os.path.isfile(files["moments"]):
            raise RuntimeError(f"cannot finalize {out_dir}: shard {files['moments']} is missing; "
                               f"rerun the command")
        with open(files["meta"]) as f:
            meta = json.load(f)
        mm = np.load(files["moments"], mmap_mode="r")
        if mm.shape[0] != meta["count"] or len(meta["labels"]) != meta["count"]:
            raise RuntimeError(f"{files['moments']} holds {mm.shape[0]} samples but {files['meta']} says "
                               f"{meta['count']} ({len(meta['labels'])} labels); delete both and rerun")
        shards.append({"file": os.path.relpath(files["moments"], out_dir).replace(os.sep, "/"),
                       "count": meta["count"]})
        labels += meta["labels"]
        sources += meta["sources"]
        skipped += meta["skipped"]
        candidates += [(r, k, row) for row, r in enumerate(meta.get("reference_ranks", []))]
        stats.append(meta["stats"])

    atomic_save_npy(os.path.join(out_dir, "labels.npy"), np.asarray(labels, dtype=np.int64).reshape(-1))
    atomic_write_bytes(os.path.join(out_dir, "sources.txt"),
                       "".join(f"{p}\t{int(fl)}\n" for p, fl in sources).encode())
    atomic_write_bytes(os.path.join(out_dir, "skipped.txt"),
                       "".join(f"{p}\t{r}\n" for p, r in skipped).encode())

    if reference:
        chosen = sorted(candidates)[:reference["count"]]
        if not chosen:
            raise RuntimeError("--reference-batch: none of the candidate images could be read")
        by_shard = {}
        for _, k, row in chosen:
            by_shard.setdefault(k, []).append(row)
        write_reference_npz(out_dir, [(shard_files(out_dir, k)["reference"], sorted(rows))
                                      for k, rows in sorted(by_shard.items())])
        # the crops now live in the npz
        for k in range(num_shards):
            if os.path.isfile(shard_files(out_dir, k)["reference"]):
                os.remove(shard_files(out_dir, k)["reference"])
        reference = {"file": "reference_batch.npz", "count": len(chosen), "requested": reference["count"],
                     "seed": reference["seed"]}

    num_samples = len(labels)
    info = dict(header)
    info.update({
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "num_images": num_samples // (2 if header.get("flip") else 1),
        "num_skipped": len(skipped), "num_samples": num_samples,
        "shards": shards, "labels": "labels.npy", "sources": "sources.txt", "skipped": "skipped.txt",
        "reference_batch": reference,
        **summarize_stats(stats, header.get("dtype") == "float16"),
    })
    info["num_files"] = info["num_images"] + info["num_skipped"]
    atomic_write_json(os.path.join(out_dir, "dataset.json"), info)
    return info
