"""Faults and crafted inputs of the evaluator and of sample_ddp.py (issue 26): a graph op outside the
allow-list refused by both backends before anything runs, small files that declare a lot of memory refused
or left unallocated, the sampler's temporaries (planted links, dead writers' leftovers), a huge
--num-fid-samples and a full disk during the npz assembly. CPU only."""
import os
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from tf_support import quiet, require_tensorflow

from evaluations import evaluator
from evaluations.graphdef import (
    ALLOWED_OPS,
    Attr,
    GraphDefError,
    _enc,
    _enc_shape,
    check_allowed_ops,
    fetch_path,
    parse_graph_def,
)
from evaluations.inception import INPUT_TENSOR, POOL_TENSOR, SOFTMAX_MATMUL_OP, SPATIAL_TENSOR
from fixtures.standin_graph import F32, _Graph, _small, smooth_images
from infra.fileio import atomic_savez, npy_header

FETCHES = [POOL_TENSOR, SPATIAL_TENSOR, SOFTMAX_MATMUL_OP]


def small_graph(extra=None):
    """The small stand-in Inception graph; `extra(g)` adds nodes after it."""
    g = _Graph(0)
    _small(g)
    if extra is not None:
        extra(g)
    return g.encode()


def with_write_file(g):
    """A WriteFile wired as a control input of pool_3's input (TF runs control inputs: it would write)."""
    g.op("evil/path", "Const", dtype=Attr.string_type(), value=Attr.string_tensor())
    g.op("evil/write", "WriteFile", ["evil/path", "evil/path"])
    # rewire: pool_3 now reads an Identity that waits for the write
    g.op("evil/gate", "Identity", ["mixed_10/join", "^evil/write"], T=Attr.type(F32))
    g.nodes = [n for n in g.nodes if b"\n\x06pool_3\x12" not in n]
    g.op("pool_3", "AvgPool", ["evil/gate"], T=Attr.type(F32), ksize=Attr.ints([1, 8, 8, 1]),
         strides=Attr.ints([1, 1, 1, 1]), padding=Attr.str("VALID"))


# ---- the op allow-list, both backends ---------------------------------------------------------------------

def test_the_allow_list_is_the_torch_executors():
    from evaluations.torch_graph import SUPPORTED_OPS
    assert set(SUPPORTED_OPS) == ALLOWED_OPS


def test_allow_list_check_refuses_write_file_on_the_fetch_path_without_tensorflow():
    clean = parse_graph_def(small_graph())
    names = check_allowed_ops(clean, "g.pb", INPUT_TENSOR, FETCHES)
    # stops at the fed tensor: the JPEG decoder above it is not on the path
    assert "pool_3" in names and "DecodeJpeg" not in names and "ExpandDims" not in names
    crafted = parse_graph_def(small_graph(with_write_file))
    assert "evil/write" in fetch_path(crafted, "g.pb", INPUT_TENSOR, FETCHES)
    with pytest.raises(ValueError, match="node 'evil/write' has op type 'WriteFile'"):
        check_allowed_ops(crafted, "g.pb", INPUT_TENSOR, FETCHES)
    # off the fetch path, an unknown op is never run, so it is not refused
    off = parse_graph_def(small_graph(lambda g: g.op("unused", "WriteFile", ["pool_3", "pool_3"])))
    assert "unused" not in check_allowed_ops(off, "g.pb", INPUT_TENSOR, FETCHES)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    d = tmp_path_factory.mktemp("batches")
    paths = {}
    for name, seed in (("ref", 1), ("samples", 2)):
        paths[name] = str(d / f"{name}.npz")
        atomic_savez(paths[name], arr_0=smooth_images(8, 32, seed=seed))
    return paths


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_a_graph_with_write_file_is_refused_by_both_backends_before_it_runs(batches, tmp_path, capsys,
                                                                            backend):
    if backend == "tf":
        require_tensorflow()
    graph = tmp_path / "evil.pb"
    graph.write_bytes(small_graph(with_write_file))
    with pytest.raises(SystemExit) as e:
        evaluator.main([batches["ref"], batches["samples"], "--inception", str(graph), "--backend", backend,
                        "--no-progress", "--no-ref-cache", "--out", str(tmp_path / "rec.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'WriteFile'" in err and "'evil/write'" in err, err
    assert not (tmp_path / "rec.json").exists()


# ---- small files that declare a lot of memory -------------------------------------------------------------

def crafted_npz(path, arrays):
    """An npz whose members are (header of `shape`, then only `body` bytes): what no numpy call writes."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, (dtype, shape, body) in arrays.items():
            zf.writestr(f"{key}.npy", npy_header(dtype, shape) + body)
    return path


def test_a_reference_npz_declaring_a_huge_arr_0_is_refused_before_allocating(batches, tmp_path):
    ref = crafted_npz(str(tmp_path / "ref.npz"),
                      {"arr_0": (np.uint8, (50000, 1024, 1024, 3), bytes(2 * 1024 * 1024))})
    graph = tmp_path / "g.pb"
    graph.write_bytes(small_graph())
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"declares shape \(50000, 1024, 1024, 3\)") as e:
            evaluator.evaluate(ref, batches["samples"], str(graph), progress=False, log=quiet)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ref in str(e.value) and "146.5 GiB" in str(e.value) and "2.0 MiB" in str(e.value)
    assert peak < 64 * 2 ** 20


def test_reference_statistics_of_a_wrong_shape_are_refused_before_they_are_loaded(batches, tmp_path,
                                                                                   monkeypatch):
    ref = str(tmp_path / "ref.npz")
    images = smooth_images(4, 32, seed=0)
    np.savez(ref, arr_0=images, mu=np.zeros(2048), sigma=np.zeros((16, 16)), mu_s=np.zeros(2023),
             sigma_s=np.zeros((2023, 2023), np.float32))
    loads = []
    monkeypatch.setattr(evaluator.np, "load", lambda *a, **k: loads.append(a) or pytest.fail("loaded"))
    with pytest.raises(ValueError, match=r"'sigma' have shapes \(2048,\) / \(16, 16\)"):
        evaluator.load_reference_stats(ref)
    assert loads == []
    # a statistic whose header declares more than the member holds
    crafted_npz(ref, {"arr_0": (np.uint8, images.shape, images.tobytes()),
                      "mu": (np.float64, (2048,), bytes(8 * 2048)),
                      "sigma": (np.float64, (2048, 2048 * 400), bytes(1024)),
                      "mu_s": (np.float64, (2023,), bytes(8 * 2023)),
                      "sigma_s": (np.float64, (2023, 2023), bytes(8 * 2023 * 2023))})
    with pytest.raises(ValueError, match="'sigma' declares shape"):
        evaluator.load_reference_stats(ref)


def big_const_tensor(count, values):
    """A float32 TensorProto of shape (count,) that stores only `values` (TF's repeated-last-value form)."""
    packed = struct.pack(f"<{len(values)}f", *values)
    return _enc(8, _enc(1, 1) + _enc(2, _enc_shape((count,))) + _enc(5, packed))


def test_a_tiny_const_declaring_2_28_floats_off_the_fetch_path_is_never_allocated(batches, tmp_path,
                                                                                 monkeypatch):
    from evaluations.inception import TorchInceptionNet, read_activations

    graph = tmp_path / "big.pb"
    graph.write_bytes(small_graph(lambda g: g.op("big", "Const", dtype=Attr.type(F32),
                                                 value=big_const_tensor(2 ** 28, [0.5]))))
    assert graph.stat().st_size < 20 * 2 ** 20
    tracemalloc.start()
    try:
        parsed = parse_graph_def(graph.read_bytes())
        net = TorchInceptionNet(str(graph), "cpu")
        pool, _ = read_activations(net, batches["samples"], batch_size=4, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # 2^28 float32 would be 1 GiB
    assert peak < 256 * 2 ** 20 and np.isfinite(pool).all() and pool.shape == (8, 2048)
    big = next(n for n in parsed.nodes if n.name == "big").attrs["value"]
    assert big.shape == (2 ** 28,) and big[12345] == 0.5 and "big" not in net.executor.values
    # a few values that declare a huge tensor (not one value broadcast): refused
    with pytest.raises(GraphDefError, match="declares 268435456 elements but stores 2 values"):
        parse_graph_def(small_graph(lambda g: g.op("big", "Const", dtype=Attr.type(F32),
                                                   value=big_const_tensor(2 ** 28, [0.5, 1.0]))))


def test_the_tf_backend_imports_only_the_nodes_the_fetches_run(tmp_path):
    require_tensorflow()
    from evaluations.inception import TFInceptionNet

    graph = tmp_path / "big.pb"
    graph.write_bytes(small_graph(lambda g: g.op("big", "Const", dtype=Attr.type(F32),
                                                 value=big_const_tensor(2 ** 28, [0.5]))))
    net = TFInceptionNet(str(graph))
    try:
        names = {op.name for op in net.graph.get_operations()}
        assert "inception/pool_3" in names and "inception/big" not in names
        assert "inception/DecodeJpeg" not in names
        pool, spatial = net.features(smooth_images(2, 32, seed=0))
        assert pool.shape == (2, 2048) and spatial.shape == (2, 2023)
    finally:
        net.close()


# ---- sample_ddp.py: temporaries, a huge N, a full disk -----------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch
    from test_sample_ddp import tiny_state_dict

    path = str(tmp_path_factory.mktemp("ckpt") / "0000123.pt")
    torch.save({"model": tiny_state_dict(seed=1), "ema": tiny_state_dict(), "args": {"model": "SiT-T/2"},
                "steps": 123, "time_convention": "ours"}, path)
    return path


def sample(ckpt, out, n, *extra):
    import sample_ddp
    return sample_ddp.main(["--ckpt", ckpt, "--num-fid-samples", str(n), "--per-proc-batch-size", "4",
                            "--num-steps", "2", "--sample-dir", str(out), "--no-progress", *extra])


def dead_pid():
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sampling_never_writes_through_links_planted_at_the_old_temporary_names(ckpt, tmp_path):
    folder = os.path.dirname(sample(ckpt, tmp_path / "s", 2))
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    pid = os.getpid()
    links = [f".samples_6.tmp-{pid}.npz", f".{3:06d}.tmp-{pid}.png", f".{5:06d}.tmp-{pid}.png",
             "samples_6.npz.arr_0.tmp.npy", f".sampling.tmp-{pid}.json"]
    for name in links:
        os.symlink(outside, os.path.join(folder, name))
    path = sample(ckpt, tmp_path / "s", 6)
    assert outside.read_text() == "precious"
    with np.load(path) as z:
        assert z["arr_0"].shape == (6, 8, 8, 3)
    assert all(os.path.islink(os.path.join(folder, name)) for name in links)


def test_dead_writers_temporaries_are_removed_at_start_and_named(ckpt, tmp_path, capsys):
    folder = os.path.dirname(sample(ckpt, tmp_path / "s", 2))
    pid = dead_pid()
    debris = [f".samples_4.tmp-{pid}.npz", f".{3:06d}.tmp-{pid}-0a1b2c3d.png",
              f".samples_4-rows.tmp-{pid}-00ff00ff.bin"]
    for name in debris:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"half a file")
    # a live writer's temporary is left alone
    live = os.path.join(folder, f".{2:06d}.tmp-{os.getppid()}-0a1b2c3d.png")
    open(live, "wb").close()
    capsys.readouterr()
    sample(ckpt, tmp_path / "s", 4)
    out = capsys.readouterr().out
    for name in debris:
        assert not os.path.exists(os.path.join(folder, name))
        assert f"removed {os.path.join(folder, name)} (11 B)" in out
    assert os.path.exists(live)


def test_a_huge_num_fid_samples_is_refused_at_once_with_the_size_it_needs(ckpt, tmp_path, monkeypatch):
    import sample_ddp
    monkeypatch.setattr(sample_ddp, "free_bytes", lambda path: 10 * 2 ** 30)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as e:
            sample(ckpt, tmp_path, 100_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(e.value)
    # 2 x 1e8 x 8 x 8 x 3 bytes
    assert "--num-fid-samples 100000000" in msg and "35.8 GiB" in msg and "10.0 GiB are free" in msg, msg
    assert peak < 64 * 2 ** 20


class Started(Exception):
    pass


def test_a_huge_num_fid_samples_that_fits_starts_at_once_with_bounded_memory(ckpt, tmp_path, monkeypatch):
    import sample_ddp
    monkeypatch.setattr(sample_ddp, "free_bytes", lambda path: 2 ** 50)

    def first_batch(model, seeds, labels, *a, **k):
        raise Started(list(seeds), list(labels))

    monkeypatch.setattr(sample_ddp, "sample_images", first_batch)
    tracemalloc.start()
    try:
        with pytest.raises(Started) as e:
            sample(ckpt, tmp_path, 100_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    seeds, labels = e.value.args
    assert seeds == [0, 1, 2, 3] and labels == sample_ddp.image_labels(range(4), 10, 0).tolist()
    assert peak < 64 * 2 ** 20


def test_a_full_disk_during_npz_assembly_is_one_line_naming_the_path_and_bytes(ckpt, tmp_path, monkeypatch):
    import errno

    from infra import fileio
    # the space check before sampling passes; the disk is full by the time the npz is assembled
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 1000)
    with pytest.raises(fileio.WriteError) as e:
        sample(ckpt, tmp_path / "a", 6)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "samples_6.npz: no space left on the device" in msg
    assert "2.2 KiB needed, 1000 B free" in msg, msg
    folder = os.path.dirname(str(e.value.args[1]).split(":")[0])
    assert not [f for f in os.listdir(folder) if f.endswith((".npz", ".bin"))]
    # the space disappears while the rows are written: ENOSPC from the write itself
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 2 ** 40)

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(fileio.WriteError) as e:
        sample(ckpt, tmp_path / "a", 6)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "samples_6-rows.tmp-" in msg and "no space left" in msg, msg
    assert "1.1 KiB needed" in msg
    assert not [f for f in os.listdir(folder) if f.endswith((".npz", ".bin"))]


def with_big_const_on_the_path(g):
    """pool_3 reads mixed_10/join + a constant that declares 2^28 floats and stores one."""
    g.op("big", "Const", dtype=Attr.type(F32), value=big_const_tensor(2 ** 28, [0.5]))
    g.op("evil/add", "Add", ["mixed_10/join", "big"], T=Attr.type(F32))
    g.nodes = [n for n in g.nodes if b"\n\x06pool_3\x12" not in n]
    g.op("pool_3", "AvgPool", ["evil/add"], T=Attr.type(F32), ksize=Attr.ints([1, 8, 8, 1]),
         strides=Attr.ints([1, 1, 1, 1]), padding=Attr.str("VALID"))


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_a_tiny_const_declaring_2_28_floats_on_the_fetch_path_is_refused_before_it_runs(batches, tmp_path,
                                                                                       capsys, backend):
    if backend == "tf":
        require_tensorflow()
    with pytest.raises(ValueError, match="constant 'big' declares 268435456 elements"):
        check_allowed_ops(parse_graph_def(small_graph(with_big_const_on_the_path)), "g.pb", INPUT_TENSOR,
                          FETCHES)
    graph = tmp_path / "big.pb"
    graph.write_bytes(small_graph(with_big_const_on_the_path))
    with pytest.raises(SystemExit) as e:
        evaluator.main([batches["ref"], batches["samples"], "--inception", str(graph), "--backend", backend,
                        "--no-progress", "--no-ref-cache", "--out", str(tmp_path / "rec.json")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "'big' declares" in err, err
