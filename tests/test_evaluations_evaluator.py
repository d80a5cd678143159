"""evaluations/evaluator.py and make_reference.py end to end, on a stand-in Inception graph built here
(same tensor names and shapes as classify_image_graph_def.pb, random weights), with both backends where it
matters (the TF ones skip without TensorFlow). CPU, small batches."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from tf_support import quiet, require_tensorflow

from evaluations import evaluator, make_reference, metrics
from evaluations.common import NpzArrayReader
from evaluations.inception import (
    GRAPH_ENV,
    GRAPH_FILE,
    TFInceptionNet,
    TorchInceptionNet,
    read_activations,
    resolve_graph_path,
)
from fixtures.standin_graph import build_standin_graph, smooth_images
from infra.fileio import atomic_savez

# one BLAS thread for the 2048-d eigendecompositions (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_blas_thread")

# images per batch file
N = 96


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("adm")
    paths = {"graph": build_standin_graph(str(d / "standin.pb"))}
    images = smooth_images(N, 32, seed=1)
    for name, arr in {"ref": images, "same": images.copy(),
                      "shifted": np.clip(images.astype(np.int16) + 60, 0, 255).astype(np.uint8)}.items():
        paths[name] = str(d / f"{name}.npz")
        atomic_savez(paths[name], arr_0=arr)
    paths["dir"] = d
    return paths


def run(files, sample, ref="ref", **kw):
    return evaluator.evaluate(files[ref], files[sample], files["graph"], batch_size=32, progress=False,
                              log=quiet, **kw)


def test_standin_graph_has_the_real_tensor_shapes(files):
    require_tensorflow()
    net = TFInceptionNet(files["graph"])
    try:
        assert net.pool.shape.as_list()[1:] == [1, 1, 2048]
        assert net.spatial.shape.as_list()[1:] == [17, 17, 7]
        assert net.graph.get_tensor_by_name("inception/mixed_6/conv:0").shape.as_list()[1:] == [17, 17, 192]
        assert net.softmax_weight.shape == (2048, 1008)
        # any input size
        pool, spatial = net.features(np.zeros((3, 20, 30, 3), np.uint8))
        assert pool.shape == (3, 2048) and spatial.shape == (3, 2023)
    finally:
        net.close()


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_identical_images_give_zero_fid_and_full_precision_recall(files, capsys, backend, monkeypatch):
    if backend == "tf":
        require_tensorflow()
    monkeypatch.setenv("SIT_SRA_CACHE", str(files["dir"] / f"cache-{backend}"))
    out = str(files["dir"] / "record.json")
    evaluator.main([files["ref"], files["same"], "--inception", files["graph"], "--out", out, "--no-progress",
                    "--batch-size", "40", "--backend", backend])
    printed = capsys.readouterr().out
    for name in ("IS", "FID", "sFID", "Precision", "Recall"):
        # fewer than 50K samples: labelled with N
        assert f"{name}-{N}: " in printed
    r = json.load(open(out))
    # and ADM's own lines, its names in its order, as scripts that parse its output expect
    adm = printed.split("Computing evaluations...\n")[1].splitlines()[:5]
    assert adm == [f"{name} {float(r[key])}" for name, key in evaluator.ADM_LINES]
    assert [line.split(":")[0] for line in adm] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    assert r["warnings"] == []
    assert abs(r["fid"]) < 1e-6 and abs(r["sfid"]) < 1e-6
    assert r["precision"] == 1.0 and r["recall"] == 1.0
    assert r["inception_score"] > 1.0 and np.isfinite(r["inception_score"])
    assert r["num_samples"] == N and r["is_splits"] == 1 and r["samples"] == os.path.abspath(files["same"])
    assert r["metrics"] == {f"IS-{N}": r["inception_score"], f"FID-{N}": r["fid"], f"sFID-{N}": r["sfid"],
                            f"Precision-{N}": r["precision"], f"Recall-{N}": r["recall"]}
    assert r["reference_stats"].startswith("computed")
    assert {"numpy", "scipy", {"torch": "torch", "tf": "tensorflow"}[backend]} <= set(r["versions"])
    assert r["backend"] == backend and r["inception_graph_published_sha256"] is None


def test_warnings_for_another_resolution_or_a_count_its_label_does_not_state():
    assert evaluator.batch_warnings((50000, 256, 256, 3), (50000, 256, 256, 3)) == []
    assert evaluator.batch_warnings((50000, 256, 256, 3), (10000, 256, 256, 3)) == []
    (res,) = evaluator.batch_warnings((50000, 256, 256, 3), (50000, 512, 512, 3))
    assert res.startswith("the sample batch is 512x512 but the reference batch is 256x256")
    (count,) = evaluator.batch_warnings((50000, 256, 256, 3), (10240, 256, 256, 3))
    assert count.startswith("the sample batch holds 10240 images, not the 10000 that its label FID-10K")
    (more,) = evaluator.batch_warnings((50000, 256, 256, 3), (60000, 256, 256, 3))
    assert "not the 50000 that its label FID states" in more
    # below 500 samples the label is the count itself
    assert evaluator.batch_warnings((96, 32, 32, 3), (96, 32, 32, 3)) == []


def test_shifted_images_give_larger_fid_with_stored_reference_statistics(files, monkeypatch):
    monkeypatch.setenv("SIT_SRA_CACHE", str(files["dir"] / "cache"))
    # make_reference from the npz: streamed statistics over all images, every image kept in arr_0.
    ref_stats = str(files["dir"] / "ref_stats.npz")
    make_reference.make_reference(ref_stats, npz=files["ref"], num_ref=N, inception=files["graph"],
                                  batch_size=40, progress=False)
    net = TorchInceptionNet(files["graph"])
    pool, spatial = read_activations(net, files["ref"], progress=False)
    net.close()
    with np.load(ref_stats) as z:
        assert set(z.files) == {"arr_0", "mu", "sigma", "mu_s", "sigma_s"}
        np.testing.assert_array_equal(z["arr_0"], np.load(files["ref"])["arr_0"])
        for (mu, sigma), feats in (((z["mu"], z["sigma"]), pool), ((z["mu_s"], z["sigma_s"]), spatial)):
            want_mu, want_sigma = metrics.feature_stats(feats)
            np.testing.assert_allclose(mu, want_mu, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(sigma, want_sigma, rtol=1e-5, atol=1e-9)
    files["ref_stats"] = ref_stats
    r = run(files, "shifted", ref="ref_stats")
    assert r["reference_stats"].startswith("stored")
    assert r["fid"] > 1.0 and r["sfid"] > 1.0
    assert r["precision"] < 1.0


def test_missing_graph_gives_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(GRAPH_ENV, raising=False)
    monkeypatch.setenv("SIT_SRA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as e:
        resolve_graph_path(None)
    msg = str(e.value)
    assert GRAPH_FILE in msg and "--inception" in msg and GRAPH_ENV in msg and str(tmp_path / "cache") in msg
    assert "never downloads" in msg
    with pytest.raises(SystemExit) as e:
        evaluator.main(["ref.npz", "samples.npz", "--inception", str(tmp_path / "nope.pb")])
    assert e.value.code == 2
    assert "nope.pb" in capsys.readouterr().err


def test_graph_path_resolution_order(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    env = tmp_path / "env.pb"
    flag = tmp_path / "flag.pb"
    cache.mkdir()
    for p in (cache / GRAPH_FILE, env, flag):
        p.write_bytes(b"x")
    monkeypatch.setenv("SIT_SRA_CACHE", str(cache))
    monkeypatch.delenv(GRAPH_ENV, raising=False)
    assert resolve_graph_path(None) == str(cache / GRAPH_FILE)
    monkeypatch.setenv(GRAPH_ENV, str(env))
    assert resolve_graph_path(None) == str(env)
    assert resolve_graph_path(str(flag)) == str(flag)


@pytest.mark.parametrize("arrays, match", [
    ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, "no 'arr_0'"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.float32)}, "dtype float32"),
    ({"arr_0": np.zeros((4, 8, 8), np.uint8)}, r"shape \(4, 8, 8\)"),
    ({"arr_0": np.zeros((4, 3, 8, 8), np.uint8)}, "NHWC"),
])
def test_bad_sample_files_give_clear_errors(tmp_path, arrays, match):
    graph = tmp_path / "g.pb"
    # input checks run before the graph is read
    graph.write_bytes(b"x")
    good, bad = str(tmp_path / "good.npz"), str(tmp_path / "bad.npz")
    np.savez(good, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    np.savez(bad, **arrays)
    with pytest.raises((KeyError, ValueError), match=match):
        evaluator.evaluate(good, bad, str(graph), progress=False, log=quiet)


def test_partial_reference_statistics_are_rejected(tmp_path):
    graph = tmp_path / "g.pb"
    graph.write_bytes(b"x")
    ref = str(tmp_path / "ref.npz")
    np.savez(ref, arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(KeyError, match="not all of"):
        evaluator.evaluate(ref, ref, str(graph), progress=False, log=quiet)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_reader_streams_batches(tmp_path, compressed):
    x = np.random.default_rng(0).integers(0, 256, size=(37, 5, 6, 3), dtype=np.uint8)
    path = str(tmp_path / "x.npz")
    (np.savez_compressed if compressed else np.savez)(path, arr_0=x, labels=np.arange(37))
    with NpzArrayReader(path) as r:
        assert r.shape == x.shape and r.dtype == np.uint8
        np.testing.assert_array_equal(np.concatenate(list(r.batches(10))), x)


def test_adm_center_crop():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(300, 500, 3), dtype=np.uint8))
    # 300x500 -> box 150x250 -> 75x125 -> bicubic 64x107
    out = make_reference.adm_center_crop(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # A centred square image that needs no crop: a plain (BOX-halved, then bicubic) resize.
    flat = Image.fromarray(np.full((128, 128, 3), 77, np.uint8))
    assert (make_reference.adm_center_crop(flat, 32) == 77).all()


def test_make_reference_from_folder_without_stats(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("b_class", "a_class"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / cls / f"{i}.png")
    out = str(tmp_path / "ref.npz")
    s = make_reference.make_reference(out, images=str(tmp_path / "imgs"), resolution=16, num_ref=4,
                                      stats=False, progress=False)
    assert s["images_used"] == 6 and s["ref_images"] == 4
    with np.load(out) as z:
        assert set(z.files) == {"arr_0", "labels"}
        assert z["arr_0"].shape == (4, 16, 16, 3) and set(z["labels"]) <= {0, 1}
