"""The evaluator's two backends on the stand-in Inception graphs (fixtures/standin_graph.py): the wall time of
evaluations/evaluator.py with one backend (--bench), and the torch and TF backends on the same images, their
largest feature differences and both metric sets (--compare). Run from anywhere; README.md next to this file
gives the findings.

    python studies/evaluator-backends/compare.py --bench 10000 [--kind full] [--backend tf]   # time it
    python studies/evaluator-backends/compare.py --compare 5000 --kind full   # features and metrics

Both write their inputs (the graph, N reference and N sample images of smooth colour fields) into --workdir
and reuse them when present; --compare also caches each backend's features there (features-BACKEND-*.npz, so
a long comparison resumes per backend) and writes its result to WORKDIR/compare-KIND-N.json.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
# E402: the repository root is not on the path of studies/ until the line above
from evaluations import evaluator, metrics  # noqa: E402
from evaluations.inception import load_network, read_activations  # noqa: E402
from fixtures.standin_graph import KINDS, build_standin_graph, smooth_images  # noqa: E402
from infra.fileio import atomic_savez, atomic_write_json  # noqa: E402


def _bench_files(n, size, kind, folder):
    graph = os.path.join(folder, f"standin-{kind}.pb")
    if not os.path.isfile(graph):
        build_standin_graph(graph, kind=kind)
    ref = os.path.join(folder, f"ref-{n}-{size}.npz")
    smp = os.path.join(folder, f"samples-{n}-{size}.npz")
    if not os.path.isfile(ref):
        atomic_savez(ref, arr_0=smooth_images(n, size, seed=1))
    if not os.path.isfile(smp):
        atomic_savez(smp, arr_0=smooth_images(n, size, seed=2, shift=10.0))
    return graph, ref, smp


def bench(n: int, size: int, batch_size: int, folder: str, kind: str, backend: str) -> None:
    """Times `evaluator.py REF SAMPLE --backend B` on n vs n stand-in images (two different image draws)."""
    graph, ref, smp = _bench_files(n, size, kind, folder)
    t0 = time.time()
    evaluator.main([ref, smp, "--inception", graph, "--out", os.path.join(folder, f"eval-{backend}.json"),
                    "--batch-size", str(batch_size), "--backend", backend, "--no-ref-cache"])
    print(f"evaluator wall time, {n} vs {n} images of {size}x{size}, {kind} stand-in graph, "
          f"--backend {backend}, CPU ({os.cpu_count()} cores): {time.time() - t0:.1f} s")


def _cached_features(net, backend: str, ref: str, smp: str, batch_size: int, folder: str):
    """-> ((ref pool, ref spatial, sample pool, sample spatial), seconds): read from
    FOLDER/features-BACKEND-*.npz when an earlier --compare wrote it (a long comparison resumes per
    backend)."""
    cache = os.path.join(folder, f"features-{backend}-{os.path.basename(smp)}")
    if os.path.isfile(cache):
        with np.load(cache) as f:
            return (f["ref_pool"], f["ref_spatial"], f["pool"], f["spatial"]), float(f["seconds"])
    t0 = time.time()
    ref_pool, ref_spatial = read_activations(net, ref, batch_size=batch_size, progress=True)
    pool, spatial = read_activations(net, smp, batch_size=batch_size, progress=True)
    seconds = time.time() - t0
    atomic_savez(cache, ref_pool=ref_pool, ref_spatial=ref_spatial, pool=pool, spatial=spatial,
                 seconds=np.float64(seconds))
    return (ref_pool, ref_spatial, pool, spatial), seconds


def compare(n: int, size: int, batch_size: int, folder: str, kind: str) -> dict:
    """The torch and TF backends on the same n vs n images: largest feature differences and both metric
    sets."""
    graph, ref, smp = _bench_files(n, size, kind, folder)
    feats = {}
    records = {}
    for backend in ("torch", "tf"):
        net = load_network(graph, backend)
        try:
            feats[backend], seconds = _cached_features(net, backend, ref, smp, batch_size, folder)
            probs = net.class_probs(feats[backend][2])
        finally:
            net.close()
        ref_pool, ref_spatial, smp_pool, smp_spatial = feats[backend]
        records[backend] = evaluator.compute_metrics(ref_pool, metrics.feature_stats(ref_pool),
                                                     metrics.feature_stats(ref_spatial), smp_pool,
                                                     smp_spatial, probs)
        print(f"{backend}: Inception on {2 * n} images {seconds:.1f} s; " + ", ".join(
            f"{k} {records[backend][k]:.8g}" for k in evaluator.METRIC_KEYS), flush=True)
    out = {"n": n, "kind": kind}
    for i, what in enumerate(("ref pool_3", "ref mixed_6/conv", "sample pool_3", "sample mixed_6/conv")):
        a = feats["torch"][i].astype(np.float64)
        b = feats["tf"][i].astype(np.float64)
        out[f"{what} max |torch - tf| / max |tf|"] = float(np.abs(a - b).max() / np.abs(b).max())
        big = np.abs(b) > 1e-3 * np.abs(b).max()
        relative = np.abs(a - b)[big] / np.abs(b)[big]
        out[f"{what} max elementwise relative (|tf| > 1e-3 max)"] = float(relative.max())
    for k in evaluator.METRIC_KEYS:
        t = records["torch"][k]
        f = records["tf"][k]
        out[f"{k} torch - tf"] = t - f
        out[f"{k} relative"] = abs(t - f) / abs(f) if f else abs(t - f)
    for k, v in out.items():
        print(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}")
    out["records"] = records
    atomic_write_json(os.path.join(folder, f"compare-{kind}-{n}.json"), out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--bench", type=int, metavar="N", help="time the evaluator on N vs N images")
    what.add_argument("--compare", type=int, metavar="N", help="torch vs TF backends on N vs N images")
    p.add_argument("--kind", choices=sorted(KINDS), default="small",
                   help="the stand-in graph: small (cheap) or full (Inception-v3)")
    p.add_argument("--backend", choices=["torch", "tf"], default="torch", help="backend timed by --bench")
    p.add_argument("--size", type=int, default=256, help="image size (default 256, as ImageNet 256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", help="folder for the inputs, caches and results, reused when present "
                                     "(default: a temporary folder, removed)")
    args = p.parse_args(argv)

    def go(folder: str) -> None:
        if args.bench:
            bench(args.bench, args.size, args.batch_size, folder, args.kind, args.backend)
        else:
            compare(args.compare, args.size, args.batch_size, folder, args.kind)

    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        go(args.workdir)
    else:
        with tempfile.TemporaryDirectory() as d:
            go(d)


if __name__ == "__main__":
    main()
