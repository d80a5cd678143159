"""ADM evaluator: IS, FID, sFID, precision and recall of a sample batch against a reference batch.

    python -m evaluations.evaluator REF.npz SAMPLE.npz [--inception PATH] [--out JSON] [--backend torch|tf]

Follows openai/guided-diffusion evaluations/evaluator.py (the numbers in SiT / REPA / SRA tables):
- images: `arr_0`, uint8 N x H x W x 3, streamed in batches in file order through the Inception graph
  (evaluations/inception.py); any resolution (the graph resizes to 299 itself). `--backend torch` (default)
  runs the graph file in PyTorch (evaluations/torch_graph.py, fp32 without TF32, `--device`), `--backend tf`
  in TensorFlow; the metric math below is the same NumPy code for both, so they differ only in the features;
- FID on pool_3 (2048-d), sFID on mixed_6/conv[..., :7] (2023-d); the reference's `mu, sigma, mu_s, sigma_s`
  are used when the reference npz has them (ADM's VIRTUAL_imagenet256_labeled.npz does), computed from its
  arr_0 otherwise;
- IS over consecutive splits of 5000 samples (10 splits at 50K, 2 at 10K);
- precision / recall with k = 3 on pool_3 features of the reference's arr_0 and of all samples.
Differences from the ADM code, none of which changes the protocol: the Frechet distance comes from eigenvalues
in float64 instead of scipy.linalg.sqrtm, IS is computed in float64, and the fp16 distances of
precision/recall are emulated on the CPU (fp32 accumulation, fp16 rounding; `--pr-dtype float32` to skip the
rounding).

With fewer than 50,000 samples every number is labelled with the count, e.g. FID-10K, as the paper's
ablations. Prints the five numbers and writes a JSON record (default: SAMPLE_eval.json next to the samples),
which keeps the backend, the device and the graph file's sha256. No published sha256 of
classify_image_graph_def.pb is known to this code (neither the ADM release nor the TF model archive lists
one), so the digest is recorded, not checked. The reference batch's features (pool_3 for precision/recall, the
statistics of both feature sets) are cached in $SIT_SRA_CACHE/ref_features/, keyed by the REF file's and the
graph's sha256 and the backend (`--no-ref-cache`).
"""
import argparse
import hashlib
import os
import sys
import time
from typing import Callable

import numpy as np

# run as a script: python evaluations/<this file>.py
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluations import metrics
from evaluations.common import NpzArrayReader, cache_dir, check_images_array, now_iso, npz_keys, versions
from evaluations.inception import (
    BACKENDS,
    POOL_DIM,
    SPATIAL_DIM,
    InceptionNet,
    load_network,
    read_activations,
    resolve_graph_path,
)
from infra.fileio import atomic_savez, atomic_write_json, unusable_folder

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
METRIC_KEYS = ("inception_score", "fid", "sfid", "precision", "recall")
# ADM's output lines: print(name, value), in its order
ADM_LINES = (("Inception Score:", "inception_score"), ("FID:", "fid"), ("sFID:", "sfid"),
             ("Precision:", "precision"), ("Recall:", "recall"))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def check_batch_file(path: str, flag: str) -> list:
    """Clear errors for a missing file, a missing or mis-shaped arr_0, or partial reference statistics."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} file not found: {path}")
    keys = npz_keys(path)
    if "arr_0" not in keys:
        raise KeyError(f"{path} ({flag}): no 'arr_0' array (arrays in file: {keys}); the evaluator reads "
                       f"uint8 N x H x W x 3 images from arr_0, as np.savez(path, images) writes them")
    with NpzArrayReader(path, "arr_0") as r:
        check_images_array(path, "arr_0", r.shape, r.dtype)
        if r.shape[0] < 2:
            raise ValueError(f"{path} ({flag}): 'arr_0' holds {r.shape[0]} image; "
                             f"the statistics need at least 2")
    present = [k for k in STAT_KEYS if k in keys]
    if present and len(present) != len(STAT_KEYS):
        raise KeyError(f"{path} ({flag}): has {present} but not all of {list(STAT_KEYS)}; store all four "
                       f"reference statistics or none")
    return keys


def batch_warnings(ref_shape: tuple, sample_shape: tuple) -> list[str]:
    """What makes the numbers not compare with a published table: a sample batch at another resolution than
    the reference's, or a sample count that is not the one its label (FID, FID-10K, ...) states."""
    out = []
    if tuple(ref_shape[1:3]) != tuple(sample_shape[1:3]):
        out.append(f"the sample batch is {sample_shape[1]}x{sample_shape[2]} but the reference batch is "
                   f"{ref_shape[1]}x{ref_shape[2]}: the Inception graph resizes both to 299, so this runs, "
                   "but the numbers compare with nothing published (sample at the reference's resolution, or "
                   "make a reference at the samples' with python -m evaluations.make_reference)")
    n = int(sample_shape[0])
    suffix = metrics.count_suffix(n)
    # '' = 50K, '-10K' = 10,000, '-200' = exactly 200
    stated = n
    if not suffix:
        stated = metrics.FULL_SAMPLE_COUNT
    elif suffix.endswith("K"):
        stated = int(suffix[1:-1]) * 1000
    if n != stated:
        out.append(f"the sample batch holds {n} images, not the {stated} that its label FID{suffix} states "
                   "(the paper's tables: FID-50K, the B/2 ablations FID-10K): FID depends on the count, so "
                   "the numbers do not compare exactly")
    return out


def load_reference_stats(path: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(mu, sigma), (mu_s, sigma_s) stored in a reference npz, shape-checked (from the headers, before
    anything is loaded), as float64."""
    shapes = {}
    for k in STAT_KEYS:
        with NpzArrayReader(path, k) as r:
            shapes[k] = r.shape
    for mu, sigma, dim in (("mu", "sigma", POOL_DIM), ("mu_s", "sigma_s", SPATIAL_DIM)):
        if shapes[mu] != (dim,) or shapes[sigma] != (dim, dim):
            raise ValueError(f"{path}: '{mu}' / '{sigma}' have shapes {shapes[mu]} / {shapes[sigma]}, "
                             f"expected ({dim},) / ({dim}, {dim})")
    with np.load(path) as z:
        out = {k: np.asarray(z[k], dtype=np.float64) for k in STAT_KEYS}
    bad = [k for k in STAT_KEYS if not np.isfinite(out[k]).all()]
    if bad:
        raise ValueError(f"{path}: the reference statistics {bad} hold NaN or inf; recompute them "
                         f"(python -m evaluations.make_reference) or drop them to compute them from arr_0")
    return (out["mu"], out["sigma"]), (out["mu_s"], out["sigma_s"])


def reference_features(net: InceptionNet, ref_path: str, graph_sha256: str, batch_size: int, progress: bool,
                       use_cache: bool = True, log: Callable[[str], None] = print) -> tuple:
    """pool_3 features of REF's arr_0 and the (mu, sigma), (mu_s, sigma_s) computed from them, cached on disk
    by (REF sha256, graph sha256, backend, device type).
    Returns (pool, pool_stats, spatial_stats, cache record)."""
    key = hashlib.sha256(f"{_sha256(ref_path)} {graph_sha256} {net.backend} "
                         f"{str(net.device).split(':')[0]}".encode()).hexdigest()[:32]
    path = os.path.join(cache_dir(), "ref_features", f"{key}.npz")
    if use_cache and os.path.isfile(path):
        try:
            with np.load(path) as z:
                pool = z["pool"]
                stats = tuple(np.asarray(z[k], dtype=np.float64) for k in STAT_KEYS)
            log(f"reference features: read from the cache {path}")
            return pool, stats[:2], stats[2:], {"path": path, "hit": True}
        except (OSError, KeyError, ValueError) as e:
            log(f"reference features: ignoring an unreadable cache file {path} ({e})")
    pool, spatial = read_activations(net, ref_path, batch_size=batch_size, progress=progress)
    stats = metrics.feature_stats(pool)
    stats_s = metrics.feature_stats(spatial)
    if use_cache:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_savez(path, pool=pool, mu=stats[0], sigma=stats[1], mu_s=stats_s[0], sigma_s=stats_s[1])
    return pool, stats, stats_s, {"path": path if use_cache else None, "hit": False}


def compute_metrics(ref_pool: np.ndarray, ref_stats: tuple, ref_stats_s: tuple, smp_pool: np.ndarray,
                    smp_spatial: np.ndarray, probs: np.ndarray, pr_dtype: str = "float16",
                    timings: dict | None = None) -> dict:
    """The five numbers from features (the NumPy code both backends share)."""
    timings = {} if timings is None else timings
    t0 = time.time()
    out = {"inception_score": metrics.inception_score(probs),
           "fid": metrics.frechet_distance(*metrics.feature_stats(smp_pool), *ref_stats),
           "sfid": metrics.frechet_distance(*metrics.feature_stats(smp_spatial), *ref_stats_s)}
    timings["is_fid_sfid"] = round(time.time() - t0, 2)
    t0 = time.time()
    out["precision"], out["recall"] = metrics.precision_recall(ref_pool, smp_pool, metrics.NHOOD_SIZE,
                                                               pr_dtype)
    timings["precision_recall"] = round(time.time() - t0, 2)
    return out


def evaluate(ref_path: str, sample_path: str, inception: str | None = None, batch_size: int = 64,
             pr_dtype: str = "float16", progress: bool = True, log: Callable[[str], None] = print,
             backend: str = "torch", device: str | None = None, check_numerics: bool = True,
             ref_cache: bool = True) -> dict:
    """Runs the ADM protocol and returns the JSON record (see main).
    Raises with a clear message on bad input."""
    t_start = time.time()
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    # fail fast, before TensorFlow or any image is read
    graph = resolve_graph_path(inception)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    ref_keys = check_batch_file(ref_path, "REF")
    check_batch_file(sample_path, "SAMPLE")
    with NpzArrayReader(ref_path, "arr_0") as ref, NpzArrayReader(sample_path, "arr_0") as smp:
        warnings = batch_warnings(ref.shape, smp.shape)
    for warning in warnings:
        log(f"warning: {warning}")
    stored_stats = load_reference_stats(ref_path) if all(k in ref_keys for k in STAT_KEYS) else None
    graph_sha256 = _sha256(graph)

    timings = {}
    t0 = time.time()
    net = load_network(graph, backend, device, check_numerics)
    try:
        ref_pool, ref_stats, ref_stats_s, cache = reference_features(net, ref_path, graph_sha256, batch_size,
                                                                     progress, ref_cache, log)
        smp_pool, smp_spatial = read_activations(net, sample_path, batch_size=batch_size, progress=progress)
        probs = net.class_probs(smp_pool)
    finally:
        net.close()
    timings["inception"] = round(time.time() - t0, 2)
    n = smp_pool.shape[0]
    if n < 2 or ref_pool.shape[0] < 2:
        raise ValueError(f"need at least 2 images in each batch (reference {ref_pool.shape[0]}, samples {n})")

    if stored_stats is not None:
        ref_stats, ref_stats_s = stored_stats
        stats_source = "stored in REF (mu, sigma, mu_s, sigma_s)"
    else:
        stats_source = f"computed from REF arr_0 ({ref_pool.shape[0]} images)"
    log(f"reference statistics: {stats_source}")
    if progress:
        log("computing IS, FID, sFID, precision/recall (k=3 nearest neighbours) ...")
    values = compute_metrics(ref_pool, ref_stats, ref_stats_s, smp_pool, smp_spatial, probs, pr_dtype,
                             timings)

    suffix = metrics.count_suffix(n)
    named = {f"IS{suffix}": values["inception_score"], f"FID{suffix}": values["fid"],
             f"sFID{suffix}": values["sfid"], f"Precision{suffix}": values["precision"],
             f"Recall{suffix}": values["recall"]}
    return {
        "protocol": "ADM evaluator (openai/guided-diffusion evaluations/evaluator.py)",
        "ref": os.path.abspath(ref_path),
        "samples": os.path.abspath(sample_path),
        "num_samples": int(n),
        "num_ref_images": int(ref_pool.shape[0]),
        "metrics": named,
        **values,
        "label_suffix": suffix,
        "is_splits": metrics.num_is_splits(n), "is_split_size": metrics.IS_SPLIT_SIZE,
        "pr_nhood_size": metrics.NHOOD_SIZE, "pr_distance_dtype": pr_dtype,
        "reference_stats": stats_source,
        "warnings": warnings,
        "reference_features_cache": cache,
        "backend": backend,
        "device": net.device,
        "check_numerics": check_numerics,
        "inception_graph": os.path.abspath(graph),
        "inception_graph_sha256": graph_sha256,
        "inception_graph_published_sha256": None,
        "versions": versions("numpy", "scipy", "torch" if backend == "torch" else "tensorflow"),
        "time": now_iso(),
        "wall_seconds": round(time.time() - t_start, 2),
        "phase_seconds": timings,
    }


def default_out_path(sample_path: str) -> str:
    base = sample_path[:-4] if sample_path.endswith(".npz") else sample_path
    return base + "_eval.json"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", help="reference batch npz: arr_0 uint8 NHWC, optionally mu, sigma, mu_s, sigma_s")
    p.add_argument("samples", help="sample batch npz: arr_0 uint8 NHWC (e.g. 50000 x 256 x 256 x 3)")
    p.add_argument("--inception", help="path to classify_image_graph_def.pb (else $ADM_INCEPTION_GRAPH, else "
                                       "~/.cache/sit_sra/classify_image_graph_def.pb); never downloaded")
    p.add_argument("--out", help="JSON record path (default: SAMPLES_eval.json next to the samples)")
    p.add_argument("--batch-size", type=int, default=64, help="images per Inception batch (ADM: 64)")
    p.add_argument("--pr-dtype", choices=["float16", "float32"], default="float16",
                   help="precision/recall distance arithmetic; float16 emulates ADM's (default)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch: the graph file executed in PyTorch (no TensorFlow needed); tf: TensorFlow")
    p.add_argument("--device", help="--backend torch: where the graph runs (default cuda when available, "
                                    "else cpu); fp32 without TF32")
    p.add_argument("--no-check-numerics", action="store_true",
                   help="--backend torch: skip the graph's CheckNumerics nodes (NaN / Inf then reach the "
                        "metrics)")
    p.add_argument("--no-ref-cache", action="store_true",
                   help="neither read nor write the cached reference features ($SIT_SRA_CACHE/ref_features)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = p.parse_args(argv)
    out = args.out or default_out_path(args.samples)
    problem = unusable_folder(os.path.dirname(os.path.abspath(out)), "--out")
    if problem or os.path.isdir(out):
        print(f"error: {problem or f'--out {out} is a folder; give the JSON file path'}", file=sys.stderr)
        raise SystemExit(2)
    try:
        record = evaluate(args.ref, args.samples, args.inception, args.batch_size, args.pr_dtype,
                          progress=not args.no_progress, backend=args.backend, device=args.device,
                          check_numerics=not args.no_check_numerics, ref_cache=not args.no_ref_cache)
    except (FileNotFoundError, KeyError, ValueError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2)
    for name, value in record["metrics"].items():
        print(f"{name}: {value:.6g}" if name.startswith(("IS", "FID", "sFID")) else f"{name}: {value:.4f}")
    # ADM's evaluator.py prints these lines, names and order, for scripts that read its output
    print("Computing evaluations...")
    for name, key in ADM_LINES:
        print(name, float(record[key]))
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
