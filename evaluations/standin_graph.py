"""A cheap stand-in for the ADM Inception graph, for tests and timing without the real 95 MB file.

It has the real graph's interface: an `ExpandDims` tensor to remap (the real graph expands a decoded JPEG there),
a TF1-style bilinear resize to 299 and (x - 128) / 128 inside, `mixed_6/conv` (N, 17, 17, 192) after a ReLU,
`pool_3` (N, 1, 1, 2048), and `softmax/logits/MatMul` whose second input is a (2048, 1008) constant. The layers in
between are a few pools and small convolutions with random (seeded) weights; the numbers mean nothing beyond
"different images give different features".

    python -m evaluations.standin_graph OUT.pb             # write the graph
    python -m evaluations.standin_graph --bench 10000      # time evaluator.py on 10K vs 10K images with it
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

if __package__ in (None, ""):                      # run as a script: python evaluations/<this file>.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fileio import atomic_savez, atomic_write_bytes


def build_standin_graph(path: str, seed: int = 0) -> str:
    """Writes the stand-in GraphDef to `path` (atomically) and returns `path`."""
    from evaluations.inception import _import_tensorflow
    tf = _import_tensorflow()
    tf1 = tf.compat.v1
    rng = np.random.default_rng(seed)

    def const(shape, fan_in, name):
        return tf.constant((rng.normal(size=shape) / np.sqrt(fan_in)).astype(np.float32), name=name)

    graph = tf.Graph()
    with graph.as_default():
        decoded = tf1.placeholder(tf.float32, [None, None, 3], name="DecodeJpeg")        # the real graph: a JPEG
        x = tf.expand_dims(decoded, 0, name="ExpandDims")                                # (1, H, W, 3), remapped
        x = tf1.image.resize_bilinear(x, [299, 299], align_corners=False, name="ResizeBilinear")
        x = tf.multiply(tf.subtract(x, 128.0, name="Sub"), 1.0 / 128.0, name="Mul")      # (N, 299, 299, 3)
        x = tf.nn.avg_pool2d(x, 17, 17, "VALID", name="pool_0")                          # (N, 17, 17, 3)
        x = tf.nn.conv2d(x, const((3, 3, 3, 192), 27, "mixed_6/conv/conv2d_params"), 1, "SAME",
                         name="mixed_6/conv/Conv2D")
        x = tf.nn.relu(x, name="mixed_6/conv")                                           # (N, 17, 17, 192)
        x = tf.nn.max_pool2d(x, 3, 2, "VALID", name="pool_1")                            # (N, 8, 8, 192)
        x = tf.nn.conv2d(x, const((1, 1, 192, 2048), 192, "mixed_10/conv/conv2d_params"), 1, "VALID",
                         name="mixed_10/conv/Conv2D")
        x = tf.nn.relu(x, name="mixed_10/join")                                          # (N, 8, 8, 2048)
        pool = tf.nn.avg_pool2d(x, 8, 1, "VALID", name="pool_3")                         # (N, 1, 1, 2048)
        flat = tf.reshape(pool, [-1, 2048], name="pool_3/_reshape")
        logits = tf.matmul(flat, const((2048, 1008), 4, "softmax/weights"), name="softmax/logits/MatMul")
        logits = tf.nn.bias_add(logits, tf.zeros([1008]), name="softmax/logits")
        tf.nn.softmax(logits, name="softmax")
    data = graph.as_graph_def().SerializeToString()
    atomic_write_bytes(path, data)
    return path


def smooth_images(n: int, size: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """uint8 (n, size, size, 3) images: per-image random 8x8 colour fields, upsampled, plus a brightness shift."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    rep = size // 8
    for i in range(0, n, 256):
        low = rng.uniform(0, 255, size=(min(256, n - i), 8, 8, 3))
        out[i:i + 256] = np.clip(low.repeat(rep, 1).repeat(rep, 2) + shift, 0, 255).astype(np.uint8)
    return out


def bench(n: int, size: int, batch_size: int, folder: str) -> None:
    """Times `evaluator.py REF SAMPLE` on n vs n stand-in images (two different image draws)."""
    from evaluations import evaluator
    graph = build_standin_graph(os.path.join(folder, "standin.pb"))
    ref, smp = os.path.join(folder, "ref.npz"), os.path.join(folder, "samples.npz")
    atomic_savez(ref, arr_0=smooth_images(n, size, seed=1))
    atomic_savez(smp, arr_0=smooth_images(n, size, seed=2, shift=10.0))
    t0 = time.time()
    evaluator.main([ref, smp, "--inception", graph, "--out", os.path.join(folder, "eval.json"),
                    "--batch-size", str(batch_size)])
    print(f"evaluator wall time, {n} vs {n} images of {size}x{size}, stand-in graph, CPU "
          f"({os.cpu_count()} cores): {time.time() - t0:.1f} s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="where to write the stand-in .pb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench", type=int, metavar="N", help="time the evaluator on N vs N images instead")
    p.add_argument("--size", type=int, default=256, help="image size for --bench (default 256, as ImageNet 256)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", help="folder for the --bench files (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    if args.bench:
        if args.workdir:
            bench(args.bench, args.size, args.batch_size, args.workdir)
        else:
            with tempfile.TemporaryDirectory() as d:
                bench(args.bench, args.size, args.batch_size, d)
    elif args.out:
        print(build_standin_graph(args.out, args.seed))
    else:
        p.error("give OUT.pb or --bench N")


if __name__ == "__main__":
    main()
