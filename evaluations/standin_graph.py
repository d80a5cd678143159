"""Stand-ins for the ADM Inception graph, for tests and timing without the real 95 MB file. Written with
evaluations/graphdef.py (no TensorFlow needed); TensorFlow imports them like the real file.

- "small": the real graph's interface only: `ExpandDims` to remap, a TF1 bilinear resize to 299 and
  (x - 128) / 128, `mixed_6/conv` (N, 17, 17, 192) after a ReLU, `pool_3` (N, 1, 1, 2048) and
  `softmax/logits/MatMul` with a (2048, 1008) weight; a few pools and small convolutions in between.
- "full": Inception-v3 as the 2015 graph (inception-2015-12-05, classify_image_graph_def.pb) lays it out, from
  public facts: node names (conv .. conv_4, pool, pool_1, mixed .. mixed_10 with their tower / tower_1 /
  tower_2 sub-scopes, pool_3, softmax), op types (Conv2D + BatchNormWithGlobalNormalization + CheckNumerics +
  control-dependency Identity + Relu per convolution, CheckNumerics on each pool's input, Concat joins), the
  layer sizes of Inception-v3 (torchvision's names map one to one), average pools that exclude padding and a
  max pool in mixed_10/tower_2, shapes pool_3 2048, mixed_6/conv 17x17x192, softmax 2048 -> 1008. Not public,
  chosen here: the weights (random, seeded), the batch-norm epsilon 0.001, the name of the nested joins in
  mixed_9 / mixed_10 (`.../tower/mixed`), and whether the 1x1 convolutions say SAME or VALID (the same
  result).

    python -m evaluations.standin_graph OUT.pb [--kind full]        # write a graph
    python -m evaluations.standin_graph --bench 10000 [--kind full] [--backend tf]   # time evaluator.py
    python -m evaluations.standin_graph --compare 5000 --kind full  # torch vs TF: features and metrics
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

# run as a script: python evaluations/<this file>.py
if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from evaluations import evaluator, metrics
from evaluations.graphdef import Attr, encode_graph_def, encode_node
from evaluations.inception import load_network, read_activations
from infra.fileio import atomic_savez, atomic_write_bytes, atomic_write_json

# GraphDef producer version: BatchNormWithGlobalNormalization is refused by TensorFlow from version 9 on
PRODUCER = 8
F32 = np.float32


class _Graph:
    """Collects NodeDefs; every method returns the name of the node it added."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes = []

    def op(self, name, op, inputs=(), **attrs):
        self.nodes.append(encode_node(name, op, inputs, attrs))
        return name

    def const(self, name, value):
        value = np.asarray(value)
        return self.op(name, "Const", dtype=Attr.type(value.dtype), value=Attr.tensor(value))

    def weight(self, name, shape, std):
        return self.const(name, (self.rng.normal(size=shape) * std).astype(F32))

    def checked(self, name, x):
        """TF1's CheckNumerics pattern: name/CheckNumerics on x, name/control_dependency = Identity(x)."""
        self.op(f"{name}/CheckNumerics", "CheckNumerics", [x], T=Attr.type(F32),
                message=Attr.str("activation input is not finite."))
        return self.op(f"{name}/control_dependency", "Identity", [x, f"^{name}/CheckNumerics"],
                       T=Attr.type(F32))

    def input_block(self):
        """DecodeJpeg/contents -> DecodeJpeg -> Cast -> ExpandDims (the evaluator's feed) -> ResizeBilinear
        299 -> Sub 128 -> Mul 1/128, with the real graph's node names."""
        self.op("DecodeJpeg/contents", "Const", dtype=Attr.string_type(), value=Attr.string_tensor())
        self.op("DecodeJpeg", "DecodeJpeg", ["DecodeJpeg/contents"], channels=Attr.int(3))
        self.op("Cast", "Cast", ["DecodeJpeg"], SrcT=Attr.type(np.uint8), DstT=Attr.type(F32))
        self.const("ExpandDims/dim", np.int32(0))
        self.op("ExpandDims", "ExpandDims", ["Cast", "ExpandDims/dim"], T=Attr.type(F32),
                Tdim=Attr.type(np.int32))
        self.const("ResizeBilinear/size", np.array([299, 299], np.int32))
        self.op("ResizeBilinear", "ResizeBilinear", ["ExpandDims", "ResizeBilinear/size"], T=Attr.type(F32),
                align_corners=Attr.bool(False))
        self.const("Sub/y", F32(128.0))
        self.op("Sub", "Sub", ["ResizeBilinear", "Sub/y"], T=Attr.type(F32))
        self.const("Mul/y", F32(1.0 / 128.0))
        return self.op("Mul", "Mul", ["Sub", "Mul/y"], T=Attr.type(F32))

    def conv(self, scope, x, cin, cout, kernel, stride=1, padding="SAME", bn=True):
        """scope/conv2d_params, scope/Conv2D, scope/batchnorm (+ its four constants), the CheckNumerics
        pattern on the batch-norm output, and scope = Relu."""
        kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
        params = self.weight(f"{scope}/conv2d_params", (kh, kw, cin, cout), np.sqrt(2.0 / (kh * kw * cin)))
        y = self.op(f"{scope}/Conv2D", "Conv2D", [x, params], T=Attr.type(F32),
                    strides=Attr.ints([1, stride, stride, 1]), padding=Attr.str(padding))
        if not bn:
            return self.op(scope, "Relu", [y], T=Attr.type(F32))
        r = self.rng
        names = []
        for part, value in (("moving_mean", r.normal(0, 0.1, cout)),
                            ("moving_variance", r.uniform(0.5, 1.5, cout)),
                            ("beta", r.normal(0, 0.1, cout)), ("gamma", r.uniform(0.8, 1.2, cout))):
            names.append(self.const(f"{scope}/batchnorm/{part}", value.astype(F32)))
        y = self.op(f"{scope}/batchnorm", "BatchNormWithGlobalNormalization", [y] + names, T=Attr.type(F32),
                    variance_epsilon=Attr.float(0.001), scale_after_normalization=Attr.bool(True))
        return self.op(scope, "Relu", [self.checked(scope, y)], T=Attr.type(F32))

    def pool(self, name, x, kind, size, stride, padding):
        return self.op(name, kind, [self.checked(name, x)], T=Attr.type(F32),
                       ksize=Attr.ints([1, size, size, 1]), strides=Attr.ints([1, stride, stride, 1]),
                       padding=Attr.str(padding))

    def join(self, name, inputs):
        self.const(f"{name}/concat_dim", np.int32(3))
        return self.op(name, "Concat", [f"{name}/concat_dim"] + list(inputs), N=Attr.int(len(inputs)),
                       T=Attr.type(F32))

    def head(self, pool3, reshape_batch):
        """pool_3/_reshape, softmax/logits/MatMul with the (2048, 1008) weight, softmax/logits, softmax."""
        self.const("pool_3/_reshape/shape", np.array([reshape_batch, 2048], np.int32))
        flat = self.op("pool_3/_reshape", "Reshape", [pool3, "pool_3/_reshape/shape"], T=Attr.type(F32),
                       Tshape=Attr.type(np.int32))
        w = self.weight("softmax/weights", (2048, 1008), 1.0 / np.sqrt(2048))
        b = self.const("softmax/biases", np.zeros(1008, F32))
        logits = self.op("softmax/logits/MatMul", "MatMul", [flat, w], T=Attr.type(F32))
        logits = self.op("softmax/logits", "BiasAdd", [logits, b], T=Attr.type(F32))
        self.op("softmax", "Softmax", [logits], T=Attr.type(F32))

    def encode(self):
        return encode_graph_def(self.nodes, PRODUCER)


def _small(g: _Graph):
    x = g.input_block()
    x = g.op("pool_0", "AvgPool", [x], T=Attr.type(F32), ksize=Attr.ints([1, 17, 17, 1]),
             strides=Attr.ints([1, 17, 17, 1]), padding=Attr.str("VALID"))                  # (N, 17, 17, 3)
    x = g.conv("mixed_6/conv", x, 3, 192, 3, bn=False)                                      # (N, 17, 17, 192)
    x = g.op("pool_1", "MaxPool", [x], T=Attr.type(F32), ksize=Attr.ints([1, 3, 3, 1]),
             strides=Attr.ints([1, 2, 2, 1]), padding=Attr.str("VALID"))                    # (N, 8, 8, 192)
    x = g.conv("mixed_10/join", x, 192, 2048, 1, padding="VALID", bn=False)                # (N, 8, 8, 2048)
    x = g.op("pool_3", "AvgPool", [x], T=Attr.type(F32), ksize=Attr.ints([1, 8, 8, 1]),
             strides=Attr.ints([1, 1, 1, 1]), padding=Attr.str("VALID"))                    # (N, 1, 1, 2048)
    g.head(x, -1)


# mixed, mixed_1, mixed_2: 35 x 35
def _block_a(g, s, x, cin, pool_features):
    b0 = g.conv(f"{s}/conv", x, cin, 64, 1)
    b1 = g.conv(f"{s}/tower/conv_1", g.conv(f"{s}/tower/conv", x, cin, 48, 1), 48, 64, 5)
    b2 = g.conv(f"{s}/tower_1/conv", x, cin, 64, 1)
    b2 = g.conv(f"{s}/tower_1/conv_2", g.conv(f"{s}/tower_1/conv_1", b2, 64, 96, 3), 96, 96, 3)
    pooled = g.pool(f"{s}/tower_2/pool", x, "AvgPool", 3, 1, "SAME")
    b3 = g.conv(f"{s}/tower_2/conv", pooled, cin, pool_features, 1)
    return g.join(f"{s}/join", [b0, b1, b2, b3]), 224 + pool_features


# mixed_4 .. mixed_7: 17 x 17, 768 channels
def _block_c(g, s, x, c7):
    b0 = g.conv(f"{s}/conv", x, 768, 192, 1)
    b1 = g.conv(f"{s}/tower/conv", x, 768, c7, 1)
    b1 = g.conv(f"{s}/tower/conv_2", g.conv(f"{s}/tower/conv_1", b1, c7, c7, (1, 7)), c7, 192, (7, 1))
    b2 = g.conv(f"{s}/tower_1/conv", x, 768, c7, 1)
    for i, (k, cout) in enumerate((((7, 1), c7), ((1, 7), c7), ((7, 1), c7), ((1, 7), 192)), start=1):
        b2 = g.conv(f"{s}/tower_1/conv_{i}", b2, c7, cout, k)
    b3 = g.conv(f"{s}/tower_2/conv", g.pool(f"{s}/tower_2/pool", x, "AvgPool", 3, 1, "SAME"), 768, 192, 1)
    return g.join(f"{s}/join", [b0, b1, b2, b3])


# mixed_9, mixed_10: 8 x 8, 2048 channels out
def _block_e(g, s, x, cin, pool_kind):
    b0 = g.conv(f"{s}/conv", x, cin, 320, 1)
    t = g.conv(f"{s}/tower/conv", x, cin, 384, 1)
    b1 = g.join(f"{s}/tower/mixed", [g.conv(f"{s}/tower/mixed/conv", t, 384, 384, (1, 3)),
                                     g.conv(f"{s}/tower/mixed/conv_1", t, 384, 384, (3, 1))])
    t = g.conv(f"{s}/tower_1/conv_1", g.conv(f"{s}/tower_1/conv", x, cin, 448, 1), 448, 384, 3)
    b2 = g.join(f"{s}/tower_1/mixed", [g.conv(f"{s}/tower_1/mixed/conv", t, 384, 384, (1, 3)),
                                       g.conv(f"{s}/tower_1/mixed/conv_1", t, 384, 384, (3, 1))])
    b3 = g.conv(f"{s}/tower_2/conv", g.pool(f"{s}/tower_2/pool", x, pool_kind, 3, 1, "SAME"), cin, 192, 1)
    return g.join(f"{s}/join", [b0, b1, b2, b3])


def _full(g: _Graph):
    x = g.input_block()                                                         # (N, 299, 299, 3)
    x = g.conv("conv", x, 3, 32, 3, stride=2, padding="VALID")                  # 149
    x = g.conv("conv_1", x, 32, 32, 3, padding="VALID")                         # 147
    x = g.conv("conv_2", x, 32, 64, 3)                                          # 147
    x = g.pool("pool", x, "MaxPool", 3, 2, "VALID")                             # 73
    x = g.conv("conv_3", x, 64, 80, 1, padding="VALID")                         # 73
    x = g.conv("conv_4", x, 80, 192, 3, padding="VALID")                        # 71
    x = g.pool("pool_1", x, "MaxPool", 3, 2, "VALID")                           # 35 x 35 x 192
    x, c = _block_a(g, "mixed", x, 192, 32)                                     # 256
    x, c = _block_a(g, "mixed_1", x, c, 64)                                     # 288
    x, c = _block_a(g, "mixed_2", x, c, 64)                                     # 288
    b0 = g.conv("mixed_3/conv", x, 288, 384, 3, stride=2, padding="VALID")
    b1 = g.conv("mixed_3/tower/conv_1", g.conv("mixed_3/tower/conv", x, 288, 64, 1), 64, 96, 3)
    b1 = g.conv("mixed_3/tower/conv_2", b1, 96, 96, 3, stride=2, padding="VALID")
    # 17 x 17 x 768
    x = g.join("mixed_3/join", [b0, b1, g.pool("mixed_3/pool", x, "MaxPool", 3, 2, "VALID")])
    for s, c7 in (("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160), ("mixed_7", 192)):
        # mixed_6/conv: 17 x 17 x 192
        x = _block_c(g, s, x, c7)
    b0 = g.conv("mixed_8/tower/conv_1", g.conv("mixed_8/tower/conv", x, 768, 192, 1), 192, 320, 3, stride=2,
                padding="VALID")
    b1 = g.conv("mixed_8/tower_1/conv", x, 768, 192, 1)
    b1 = g.conv("mixed_8/tower_1/conv_1", b1, 192, 192, (1, 7))
    b1 = g.conv("mixed_8/tower_1/conv_2", b1, 192, 192, (7, 1))
    b1 = g.conv("mixed_8/tower_1/conv_3", b1, 192, 192, 3, stride=2, padding="VALID")
    x = g.join("mixed_8/join", [b0, b1, g.pool("mixed_8/pool", x, "MaxPool", 3, 2, "VALID")])   # 8 x 8 x 1280
    x = _block_e(g, "mixed_9", x, 1280, "AvgPool")
    x = _block_e(g, "mixed_10", x, 2048, "MaxPool")                             # 8 x 8 x 2048
    x = g.pool("pool_3", x, "AvgPool", 8, 1, "VALID")                           # 1 x 1 x 2048
    # the 2015 graph's reshape is for one image; the evaluator never runs it
    g.head(x, 1)


KINDS = {"small": _small, "full": _full}


def build_standin_graph(path: str, seed: int = 0, kind: str = "small") -> str:
    """Writes the `kind` stand-in GraphDef to `path` (atomically) and returns `path`."""
    g = _Graph(seed)
    KINDS[kind](g)
    atomic_write_bytes(path, g.encode())
    return path


def smooth_images(n: int, size: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """uint8 (n, size, size, 3) images: per-image random 8x8 colour fields, upsampled, plus a brightness
    shift."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    rep = size // 8
    for i in range(0, n, 256):
        low = rng.uniform(0, 255, size=(min(256, n - i), 8, 8, 3))
        out[i:i + 256] = np.clip(low.repeat(rep, 1).repeat(rep, 2) + shift, 0, 255).astype(np.uint8)
    return out


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
    p.add_argument("out", nargs="?", help="where to write the stand-in .pb")
    p.add_argument("--kind", choices=sorted(KINDS), default="small",
                   help="small (cheap) or full (Inception-v3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench", type=int, metavar="N", help="time the evaluator on N vs N images instead")
    p.add_argument("--compare", type=int, metavar="N", help="torch vs TF backends on N vs N images instead")
    p.add_argument("--backend", choices=["torch", "tf"], default="torch", help="backend timed by --bench")
    p.add_argument("--size", type=int, default=256,
                   help="image size for --bench (default 256, as ImageNet 256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", help="folder for the --bench / --compare files, reused when present "
                                     "(default: a temporary folder, removed)")
    args = p.parse_args(argv)
    if args.bench or args.compare:
        def go(folder):
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
    elif args.out:
        print(build_standin_graph(args.out, args.seed, args.kind))
    else:
        p.error("give OUT.pb, --bench N or --compare N")


if __name__ == "__main__":
    main()
