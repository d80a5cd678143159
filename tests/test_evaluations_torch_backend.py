"""The evaluator's PyTorch backend (evaluations/graphdef.py, torch_graph.py): the GraphDef reader against
TensorFlow's parser, each op against TensorFlow (and ResizeBilinear against a NumPy transcription of TF1's
sampling), the full-topology Inception-v3 stand-in and the small stand-in against the TF backend, bad graphs,
and the torch path with TensorFlow made unimportable. CPU, small batches."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tf_support import quiet, require_tensorflow

from evaluations import evaluator
from evaluations.graphdef import Attr, parse_graph_def, read_graph_def
from evaluations.inception import TorchInceptionNet, read_activations
from evaluations.torch_graph import SUPPORTED_OPS, GraphExecutor
from fixtures.standin_graph import _Graph, build_standin_graph, smooth_images
from infra.fileio import atomic_savez

# one BLAS thread for the 2048-d eigendecompositions (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_blas_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = np.float32


@pytest.fixture(scope="module")
def tf():
    tf = require_tensorflow()
    return tf


def tf_run(tf, graph_bytes, feed, fetches, feed_name="ExpandDims:0"):
    """TensorFlow's values of `fetches` with `feed` mapped onto `feed_name`, as the TF backend imports a
    graph."""
    tf1 = tf.compat.v1
    gd = tf1.GraphDef()
    gd.ParseFromString(graph_bytes)
    with tf.Graph().as_default() as g:
        x = tf1.placeholder(tf.as_dtype(feed.dtype), [None] * feed.ndim)
        outs = tf1.import_graph_def(gd, input_map={feed_name: x}, return_elements=fetches, name="g")
        with tf1.Session(graph=g) as s:
            return s.run(outs, {x: feed})


def torch_run(graph_bytes, feed, fetches, feed_name="ExpandDims:0", **kw):
    ex = GraphExecutor(parse_graph_def(graph_bytes), "graph.pb", feed_name, fetches, **kw)
    return [v.cpu().numpy() for v in ex.run(feed)]


# ---- the reader --------------------------------------------------------------------------------------------

def test_reader_agrees_with_tensorflows_parser(tf):
    """A graph TF serialises (attrs of every kind, packed and unpacked values) reads back to the same
    nodes."""
    tf1 = tf.compat.v1
    with tf.Graph().as_default() as g:
        x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="x")
        w = tf.constant(np.arange(54, dtype=F32).reshape(3, 3, 3, 2), name="w")
        y = tf.nn.conv2d(x, w, [1, 2, 2, 1], "SAME", name="conv")
        tf.nn.max_pool2d(y, 3, 2, "VALID", name="pool")
        tf.constant([1, 2, 3], tf.int64, name="i64")
        tf.constant(2.5, name="scalar")
        tf.fill([2, 3], 7.0, name="filled")
        tf.constant(np.full((4,), 3, np.int32), name="repeated")
    data = g.as_graph_def().SerializeToString()
    ours = {n.name: n for n in parse_graph_def(data).nodes}
    theirs = g.as_graph_def()
    assert [n.name for n in theirs.node] == list(ours)
    for n in theirs.node:
        assert ours[n.name].op == n.op and ours[n.name].inputs == list(n.input)
    assert ours["conv"].attrs["strides"] == [1, 2, 2, 1] and ours["conv"].attrs["padding"] == b"SAME"
    assert ours["x"].attrs["shape"] == (-1, 8, 8, 3) and ours["x"].attrs["dtype"] == 1
    np.testing.assert_array_equal(ours["w"].attrs["value"], np.arange(54, dtype=F32).reshape(3, 3, 3, 2))
    np.testing.assert_array_equal(ours["i64"].attrs["value"], [1, 2, 3])
    assert ours["scalar"].attrs["value"].shape == () and ours["scalar"].attrs["value"] == 2.5
    np.testing.assert_array_equal(ours["repeated"].attrs["value"], [3, 3, 3, 3])


def test_writer_output_is_what_tensorflow_reads(tf, tmp_path):
    path = build_standin_graph(str(tmp_path / "small.pb"))
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(open(path, "rb").read())
    ours = read_graph_def(path)
    assert [n.name for n in gd.node] == [n.name for n in ours.nodes]
    weights = {n.name: n for n in ours.nodes}["softmax/weights"].attrs["value"]
    theirs = tf.make_ndarray([n for n in gd.node if n.name == "softmax/weights"][0].attr["value"].tensor)
    np.testing.assert_array_equal(weights, theirs)


# ---- the ops, one at a time, against TensorFlow ------------------------------------------------------------

def _conv_w(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(F32)


def _conv(tf, x, cout):
    return tf.nn.conv2d(x, _conv_w((3, 3, x.shape[-1], cout), seed=cout), 1, "SAME")


OP_CASES = {
    # odd/even sizes with stride 2: SAME pads asymmetrically (the extra cell after), unlike torch's padding
    "conv_same_s2_even": ((2, 10, 12, 3), lambda tf, x: tf.nn.conv2d(x, _conv_w((3, 3, 3, 4)), 2, "SAME")),
    "conv_same_s2_odd": ((2, 11, 9, 3), lambda tf, x: tf.nn.conv2d(x, _conv_w((4, 2, 3, 4)), 2, "SAME")),
    "conv_valid_1x7": ((1, 9, 9, 3), lambda tf, x: tf.nn.conv2d(x, _conv_w((1, 7, 3, 5)), 1, "VALID")),
    "conv_same_dilated": ((1, 9, 9, 2), lambda tf, x: tf.nn.conv2d(x, _conv_w((3, 3, 2, 2)), 1, "SAME",
                                                                   dilations=2)),
    "max_pool_same_s2": ((2, 10, 11, 3), lambda tf, x: tf.nn.max_pool2d(x - 5.0, 3, 2, "SAME")),
    "avg_pool_same_s1": ((2, 7, 7, 3), lambda tf, x: tf.nn.avg_pool2d(x, 3, 1, "SAME")),
    "avg_pool_same_s2_even": ((2, 10, 12, 3), lambda tf, x: tf.nn.avg_pool2d(x, 3, 2, "SAME")),
    "avg_pool_same_k4": ((1, 9, 9, 2), lambda tf, x: tf.nn.avg_pool2d(x, 4, 1, "SAME")),
    "resize_up": ((2, 13, 7, 3), lambda tf, x: tf.compat.v1.image.resize_bilinear(x, [29, 31])),
    "resize_down": ((1, 40, 37, 3), lambda tf, x: tf.compat.v1.image.resize_bilinear(x, [17, 9])),
    "resize_align": ((1, 8, 9, 2), lambda tf, x: tf.compat.v1.image.resize_bilinear(x, [15, 4],
                                                                                     align_corners=True)),
    "resize_half_pixel": ((1, 8, 9, 2), lambda tf, x: tf.raw_ops.ResizeBilinear(
        images=x, size=[13, 5], half_pixel_centers=True)),
    "fused_bn_v3": ((2, 5, 5, 3), lambda tf, x: tf.compat.v1.nn.fused_batch_norm(
        x, [1.0, 2.0, 0.5], [0.0, 0.1, -0.1], [0.2, 0.0, 0.1], [1.0, 0.5, 2.0], is_training=False)[0]),
    # convolution outputs are kept as NCHW inside: joins, reshapes and broadcasts must still see NHWC
    "concat_v1_channels": ((2, 4, 4, 3), lambda tf, x: tf.raw_ops.Concat(
        concat_dim=3, values=[_conv(tf, x, 2), _conv(tf, x, 3) * 2.0, tf.nn.relu6(x)])),
    "concat_v2_height": ((2, 4, 4, 3), lambda tf, x: tf.concat([_conv(tf, x, 3), _conv(tf, x, 3) - 1.0],
                                                               axis=1)),
    "reshape_matmul_softmax": ((3, 2, 2, 4), lambda tf, x: tf.nn.softmax(tf.nn.bias_add(
        tf.matmul(tf.reshape(_conv(tf, x, 4), [-1, 16]), _conv_w((16, 5))), [0.1, 0.2, 0.3, 0.4, 0.5]))),
    "squeeze_mean": ((2, 3, 4, 5), lambda tf, x: tf.squeeze(
        tf.reduce_mean(_conv(tf, x, 3), [1, 2], keepdims=True), [1, 2])),
    "broadcast_add_vector": ((2, 3, 3, 4), lambda tf, x: _conv(tf, x, 4) + tf.constant([1.0, 2.0, 3.0, 4.0])),
    "bias_add_after_conv": ((2, 3, 3, 4), lambda tf, x: tf.nn.relu(
        tf.nn.bias_add(_conv(tf, x, 2), [1.0, -1.0]))),
    "cast_expand": ((2, 3, 3, 2), lambda tf, x: tf.expand_dims(tf.cast(tf.cast(x, tf.int32), tf.float32), 0)),
    "elementwise": ((2, 3, 3, 2), lambda tf, x: tf.maximum(x, 0.5) / tf.minimum(x + 3.0, 2.0)),
}


def test_each_op_matches_tensorflow(tf):
    """Every case in one TF graph and session (TF's start-up dominates otherwise); one executor per case."""
    tf1 = tf.compat.v1
    rng = np.random.default_rng(1)
    feeds = {case: (rng.normal(size=shape) * 3).astype(F32) for case, (shape, _) in OP_CASES.items()}
    with tf.Graph().as_default() as g:
        for case, (shape, build) in OP_CASES.items():
            x = tf1.placeholder(tf.float32, [None] + list(shape[1:]), name=f"{case}/in")
            tf.identity(build(tf, x), name=f"{case}/out")
        with tf1.Session(graph=g) as sess:
            want = sess.run({c: f"{c}/out:0" for c in OP_CASES}, {f"{c}/in:0": feeds[c] for c in OP_CASES})
        data = g.as_graph_def().SerializeToString()
    graph = parse_graph_def(data)
    for case in OP_CASES:
        got, = GraphExecutor(graph, "ops.pb", f"{case}/in:0", [f"{case}/out:0"]).run(feeds[case])
        got = got.numpy()
        assert got.shape == want[case].shape, case
        np.testing.assert_allclose(got, want[case], rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want[case]).max()),
                                   err_msg=case)


@pytest.mark.parametrize("after_conv", [False, True])
def test_batch_norm_with_global_normalization_matches_tensorflow(tf, after_conv):
    """The 2015 graph's op (TF refuses to create it in new graphs, so the graph is written here, producer 8);
    after a Conv2D the executor folds it into the convolution."""
    g = _Graph(3)
    x = g.op("in", "Placeholder", dtype=Attr.type(F32))
    if after_conv:
        x = g.op("conv", "Conv2D", [x, g.weight("w", (3, 3, 3, 4), 0.5)], T=Attr.type(F32),
                 strides=Attr.ints([1, 1, 1, 1]), padding=Attr.str("SAME"))
    params = [g.const(name, np.asarray(v, F32)) for name, v in (
        ("m", [0.1, -0.2, 0.3, 0.0]), ("v", [0.5, 1.5, 2.0, 0.1]), ("beta", [0.0, 1.0, -1.0, 0.5]),
        ("gamma", [1.0, 0.5, 2.0, -1.0]))]
    g.op("out", "BatchNormWithGlobalNormalization", [x] + params, T=Attr.type(F32),
         variance_epsilon=Attr.float(0.001), scale_after_normalization=Attr.bool(True))
    feed = np.random.default_rng(0).normal(size=(2, 6, 5, 3 if after_conv else 4)).astype(F32)
    want, = tf_run(tf, g.encode(), feed, ["out:0"], feed_name="in:0")
    got, = torch_run(g.encode(), feed, ["out:0"], feed_name="in:0")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def tf1_resize_reference(img, out_h, out_w):
    """TF1's ResizeBilinear (align_corners=False, half_pixel_centers=False), transcribed literally: source
    coordinate = output index * (in / out), lower = floor, upper = min(ceil, in - 1), lerp = fraction."""
    in_h, in_w = img.shape[:2]
    sy = F32(in_h) / F32(out_h)
    sx = F32(in_w) / F32(out_w)
    out = np.empty((out_h, out_w) + img.shape[2:], F32)
    for i in range(out_h):
        y = F32(i) * sy
        y0 = int(np.floor(y))
        y1 = min(int(np.ceil(y)), in_h - 1)
        ly = F32(y - np.floor(y))
        for j in range(out_w):
            x = F32(j) * sx
            x0 = int(np.floor(x))
            x1 = min(int(np.ceil(x)), in_w - 1)
            lx = F32(x - np.floor(x))
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * lx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * lx
            out[i, j] = top + (bottom - top) * ly
    return out


@pytest.mark.parametrize("size, out", [((7, 5), (29, 31)), ((64, 48), (299, 299)), ((20, 20), (6, 7))])
def test_resize_bilinear_is_tf1s_sampling_without_tensorflow(size, out):
    g = _Graph(0)
    g.op("in", "Placeholder", dtype=Attr.type(F32))
    g.const("size", np.array(out, np.int32))
    g.op("out", "ResizeBilinear", ["in", "size"], T=Attr.type(F32), align_corners=Attr.bool(False))
    img = np.random.default_rng(0).uniform(0, 255, size=size + (3,)).astype(F32)
    got, = torch_run(g.encode(), img[None], ["out:0"], feed_name="in:0")
    np.testing.assert_array_equal(got[0], tf1_resize_reference(img, *out))


# ---- the stand-ins against the TF backend ------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_graph(tmp_path_factory):
    return build_standin_graph(str(tmp_path_factory.mktemp("full") / "full.pb"), kind="full")


def test_full_standin_has_the_2015_graphs_layout(full_graph):
    g = read_graph_def(full_graph)
    ops = {n.name: n.op for n in g.nodes}
    # Inception-v3's 94 convolutions
    assert sum(op == "Conv2D" for op in ops.values()) == 94
    assert sum(op == "BatchNormWithGlobalNormalization" for op in ops.values()) == 94
    for name, op in (("DecodeJpeg", "DecodeJpeg"), ("Cast", "Cast"), ("ExpandDims", "ExpandDims"),
                     ("ResizeBilinear", "ResizeBilinear"), ("Sub", "Sub"), ("Mul", "Mul"),
                     ("conv/Conv2D", "Conv2D"), ("conv/batchnorm", "BatchNormWithGlobalNormalization"),
                     ("conv/CheckNumerics", "CheckNumerics"), ("conv/control_dependency", "Identity"),
                     ("conv", "Relu"), ("pool", "MaxPool"), ("pool/CheckNumerics", "CheckNumerics"),
                     ("mixed/join", "Concat"), ("mixed_4/tower/conv_2/CheckNumerics", "CheckNumerics"),
                     ("mixed_6/conv", "Relu"), ("mixed_9/tower_2/pool", "AvgPool"),
                     ("mixed_10/tower_2/pool", "MaxPool"), ("mixed_10/join", "Concat"), ("pool_3", "AvgPool"),
                     ("pool_3/_reshape", "Reshape"), ("softmax/logits/MatMul", "MatMul"),
                     ("softmax", "Softmax")):
        assert ops[name] == op, name
    consts = {n.name: n.attrs.get("value") for n in g.nodes if n.op == "Const"}
    assert consts["softmax/weights"].shape == (2048, 1008)
    assert consts["mixed_6/conv/conv2d_params"].shape == (1, 1, 768, 192)
    assert consts["mixed_9/tower/mixed/conv/conv2d_params"].shape == (1, 3, 384, 384)


def test_full_standin_features_match_tensorflow(tf, full_graph):
    """The torch executor's pool_3 / mixed_6/conv equal TF's to 1e-4 relative on the full Inception-v3
    topology (the measured difference is about 1e-6); mixed_6/conv is 17 x 17 x 192."""
    images = np.concatenate([smooth_images(2, 64, seed=3),
                             np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)])
    data = open(full_graph, "rb").read()
    feed = images.astype(F32)
    fetches = ["pool_3:0", "mixed_6/conv:0"]
    want = tf_run(tf, data, feed, fetches)
    got = torch_run(data, feed, fetches)
    assert got[1].shape == (4, 17, 17, 192) and got[0].shape == (4, 1, 1, 2048)
    for a, b in zip(got, want):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    net = TorchInceptionNet(full_graph, "cpu")
    weight = tf.make_ndarray([n for n in _tf_graph_def(tf, data).node if n.name == "softmax/weights"][0]
                             .attr["value"].tensor)
    np.testing.assert_array_equal(net.softmax_weight, weight)


def _tf_graph_def(tf, data):
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(data)
    return gd


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    paths = {"graph": build_standin_graph(str(d / "small.pb")), "dir": d}
    for name, seed, shift in (("ref", 1, 0.0), ("samples", 2, 10.0)):
        paths[name] = str(d / f"{name}.npz")
        atomic_savez(paths[name], arr_0=smooth_images(96, 32, seed=seed, shift=shift))
    return paths


def test_both_backends_give_the_same_metrics_on_the_small_standin(tf, small_files, monkeypatch, tmp_path):
    monkeypatch.setenv("SIT_SRA_CACHE", str(tmp_path / "cache"))
    rec = {b: evaluator.evaluate(small_files["ref"], small_files["samples"], small_files["graph"],
                                 batch_size=40, progress=False, log=quiet, backend=b)
           for b in ("torch", "tf")}
    t, f = rec["torch"], rec["tf"]
    assert t["backend"] == "torch" and f["backend"] == "tf" and t["device"] == "cpu"
    # different image sets: a real comparison
    assert t["fid"] > 1.0 and t["sfid"] > 1.0
    assert t["fid"] == pytest.approx(f["fid"], rel=1e-3) and t["sfid"] == pytest.approx(f["sfid"], rel=1e-3)
    assert t["inception_score"] == pytest.approx(f["inception_score"], rel=1e-4)
    assert abs(t["precision"] - f["precision"]) <= 1e-3 and abs(t["recall"] - f["recall"]) <= 1e-3
    assert t["inception_graph_sha256"] == f["inception_graph_sha256"]
    assert len(t["inception_graph_sha256"]) == 64


def test_reference_features_are_cached(small_files, monkeypatch, tmp_path):
    monkeypatch.setenv("SIT_SRA_CACHE", str(tmp_path / "cache"))
    args = (small_files["ref"], small_files["samples"], small_files["graph"])
    first = evaluator.evaluate(*args, batch_size=48, progress=False, log=quiet)
    second = evaluator.evaluate(*args, batch_size=48, progress=False, log=quiet)
    assert first["reference_features_cache"]["hit"] is False
    assert second["reference_features_cache"]["hit"] is True
    cache_folder = str(tmp_path / "cache" / "ref_features")
    assert os.path.dirname(second["reference_features_cache"]["path"]) == cache_folder
    for k in evaluator.METRIC_KEYS:
        assert first[k] == second[k]
    off = evaluator.evaluate(*args, batch_size=48, progress=False, log=quiet, ref_cache=False)
    assert off["reference_features_cache"] == {"path": None, "hit": False} and off["fid"] == first["fid"]


# ---- bad graphs: one line each -----------------------------------------------------------------------------

def _evaluator_error(capsys, small_files, graph, *flags):
    with pytest.raises(SystemExit) as e:
        evaluator.main([small_files["ref"], small_files["samples"], "--inception", str(graph),
                        "--no-progress", "--no-ref-cache", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("content", [b"", b"hello, this is not a graph\n", bytes(range(256)) * 8,
                                     b"\x0a\xff\xff\xff\x0f"])
def test_not_a_graphdef(capsys, small_files, tmp_path, content):
    graph = tmp_path / "bad.pb"
    graph.write_bytes(content)
    err = _evaluator_error(capsys, small_files, graph)
    assert "not a TensorFlow GraphDef" in err and str(graph) in err


def _graph_with(extra):
    """The small stand-in's interface with `extra(g, x)` spliced in before mixed_6/conv."""
    g = _Graph(0)
    x = extra(g, g.input_block())
    x = g.op("pool_0", "AvgPool", [x], T=Attr.type(F32), ksize=Attr.ints([1, 17, 17, 1]),
             strides=Attr.ints([1, 17, 17, 1]), padding=Attr.str("VALID"))
    x = g.conv("mixed_6/conv", x, 3, 192, 3)
    x = g.conv("mixed_10/join", x, 192, 2048, 1)
    x = g.pool("pool_3", x, "AvgPool", 17, 1, "VALID")
    g.head(x, -1)
    return g.encode()


def test_unknown_op_names_the_op_and_the_node(capsys, small_files, tmp_path):
    def extra(g, x):
        g.const("evil/path", np.zeros(3, F32))
        return g.op("evil/write", "WriteFile", [x, "evil/path"])
    graph = tmp_path / "evil.pb"
    graph.write_bytes(_graph_with(extra))
    err = _evaluator_error(capsys, small_files, graph)
    assert "'WriteFile'" in err and "'evil/write'" in err
    assert "WriteFile" not in SUPPORTED_OPS and not (tmp_path / "evil").exists()


def test_missing_pool_3(capsys, small_files, tmp_path):
    g = _Graph(0)
    x = g.conv("mixed_6/conv", g.input_block(), 3, 192, 3)
    g.head(g.pool("pool_2", g.conv("mixed_10/join", x, 192, 2048, 1), "AvgPool", 299, 1, "VALID"), -1)
    graph = tmp_path / "nopool.pb"
    graph.write_bytes(g.encode())
    err = _evaluator_error(capsys, small_files, graph)
    assert "no tensor pool_3:0" in err and str(graph) in err


def test_non_finite_activation_names_the_node_and_the_batch(tmp_path):
    """1 / max(x, 0) is infinite for a black image: batch 1 of 4-image batches holds one; the CheckNumerics of
    mixed_6/conv reports it. With the checks off, the NaN reaches the features instead."""
    def extra(g, x):
        g.const("zero", F32(0.0))
        g.const("one", F32(1.0))
        return g.op("inverse", "RealDiv", ["one", g.op("positive", "Maximum", [x, "zero"], T=Attr.type(F32))],
                    T=Attr.type(F32))
    graph = tmp_path / "inf.pb"
    graph.write_bytes(_graph_with(extra))
    images = np.random.default_rng(0).integers(140, 256, (8, 20, 20, 3), dtype=np.uint8)
    images[5] = 0
    path = str(tmp_path / "x.npz")
    atomic_savez(path, arr_0=images)
    net = TorchInceptionNet(str(graph), "cpu")
    with pytest.raises(ValueError) as e:
        read_activations(net, path, batch_size=4, progress=False)
    msg = str(e.value)
    assert "batch 1 (images 4..7)" in msg and "'mixed_6/conv/CheckNumerics'" in msg and path in msg
    pool, _ = read_activations(TorchInceptionNet(str(graph), "cpu", check_numerics=False), path, batch_size=4,
                               progress=False)
    assert np.isfinite(pool[:4]).all() and not np.isfinite(pool[4:]).all()


# ---- no TensorFlow -----------------------------------------------------------------------------------------

NO_TF = r"""
import json, os, sys
sys.modules["tensorflow"] = None                    # import tensorflow -> ImportError
sys.path.insert(0, os.getcwd())
import numpy as np
from evaluations import evaluator, make_reference
from fixtures.standin_graph import build_standin_graph, smooth_images
from infra.fileio import atomic_savez
d = sys.argv[1]
graph = build_standin_graph(os.path.join(d, "g.pb"))
for name, seed in (("ref", 1), ("samples", 2)):
    atomic_savez(os.path.join(d, name + ".npz"), arr_0=smooth_images(40, 32, seed=seed))
make_reference.main([os.path.join(d, "stats.npz"), "--npz", os.path.join(d, "ref.npz"), "--inception", graph,
                     "--num-ref", "40"])
evaluator.main([os.path.join(d, "stats.npz"), os.path.join(d, "samples.npz"), "--inception", graph, "--out",
                os.path.join(d, "rec.json"), "--no-progress", "--device", "cpu"])
try:
    evaluator.main([os.path.join(d, "ref.npz"), os.path.join(d, "samples.npz"), "--inception", graph,
                    "--backend", "tf", "--no-progress"])
except SystemExit as e:
    print("tf exit", e.code)
"""


def test_torch_backend_needs_no_tensorflow(tmp_path):
    env = {**os.environ, "SIT_SRA_CACHE": str(tmp_path / "cache"), "OPENBLAS_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", NO_TF, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    rec = json.load(open(tmp_path / "rec.json"))
    assert rec["backend"] == "torch" and rec["reference_stats"].startswith("stored")
    assert "tensorflow" not in rec["versions"] and "torch" in rec["versions"]
    assert np.isfinite(rec["fid"]) and rec["fid"] > 0
    # --backend tf without TensorFlow: one line, not a traceback
    assert "tf exit 2" in res.stdout and "--backend tf needs TensorFlow" in res.stderr
