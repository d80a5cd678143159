"""The embedded digits metric (evaluations/digits_metric.py): the real data's own numbers, noise, input
formats, cache, determinism, CLI. Trains the 16x16 classifier once (a few seconds, CPU) into a temporary
cache."""
import json

import numpy as np
import pytest
import torch

from dataset import digits_images
from evaluations import digits_metric as dm

RES = 16


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SIT_SRA_CACHE", str(tmp_path_factory.mktemp("cache")))
    dm._MODELS.clear()
    yield
    dm._MODELS.clear()
    mp.undo()


@pytest.fixture(scope="module")
def real():
    return digits_images(RES)


@pytest.fixture(scope="module")
def real_numbers():
    return dm.real_reference(RES)


def test_real_digits_own_numbers(real_numbers):
    full, half = real_numbers["real_vs_real"], real_numbers["real_half_vs_real"]
    print(f"\nreal vs real: {full}\nreal half vs real: {half}")
    assert full["n"] == 1797 and full["real_n"] == 1797 and full["resolution"] == RES
    # the same features on both sides
    assert abs(full["fd"]) < 1e-6
    # training set (measured: about 0.99)
    assert full["accuracy"] >= 0.95
    assert half["accuracy"] >= 0.95 and 0.0 < half["fd"] < 20.0


def test_noise_gives_large_fd_and_chance_accuracy(real_numbers):
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(1000, 1, RES, RES, generator=gen) * 2 - 1
    labels = torch.arange(1000) % 10
    r = dm.digits_metric(noise, labels)
    print(f"\nuniform noise: {r}")
    assert r["fd"] > 10 * real_numbers["real_half_vs_real"]["fd"]
    # chance is 0.1
    assert r["accuracy"] < 0.3
    blank = dm.digits_metric(-torch.ones(200, 1, RES, RES), torch.arange(200) % 10)
    assert blank["fd"] > 10 * real_numbers["real_half_vs_real"]["fd"] and blank["accuracy"] <= 0.2


def test_uint8_layouts_match_float_input(real):
    x, y = real[0][:400], real[1][:400]
    u8 = torch.round((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)          # (N, 1, R, R)
    ref = dm.digits_metric(x, y)
    nhwc_rgb = u8.repeat(1, 3, 1, 1).permute(0, 2, 3, 1)
    for arr in (u8, u8[:, 0].numpy(), u8.permute(0, 2, 3, 1).numpy(), nhwc_rgb):
        r = dm.digits_metric(arr, y)
        assert r["fd"] == pytest.approx(ref["fd"], abs=0.05) and abs(r["accuracy"] - ref["accuracy"]) < 0.01
    # (N, R, R) float, no labels
    assert dm.digits_metric(x[:, 0], None)["accuracy"] is None


@pytest.mark.parametrize("images, match", [
    (np.zeros((4, 1, 16, 16), np.int32), "dtype"),
    (np.zeros((4, 2, 16, 16), np.float32), r"\(N, 1, R, R\)"),
    (np.zeros((4, 16, 12), np.uint8), "uint8 digit images"),
])
def test_bad_inputs_give_clear_errors(images, match):
    with pytest.raises(ValueError, match=match):
        dm.digits_metric(images)


def test_resolution_and_label_checks(real):
    x, y = real
    with pytest.raises(ValueError, match="resolution=32"):
        dm.digits_metric(x[:10], y[:10], resolution=32)
    with pytest.raises(ValueError, match="labels must have shape"):
        dm.digits_metric(x[:10], y[:9])


def test_classifier_is_cached_and_reused(real, monkeypatch):
    dm.digits_metric(real[0][:50], real[1][:50])
    path = dm.classifier_path(RES)
    saved = torch.load(path, weights_only=True)
    assert saved["recipe"] == dm.RECIPE and saved["train_accuracy"] >= 0.95
    dm._MODELS.clear()

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although cached")
    monkeypatch.setattr(dm, "train_classifier", no_training)
    net = dm.load_classifier(RES)
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k])


def test_training_is_deterministic_and_leaves_global_rng_alone():
    recipe = dict(dm.RECIPE, epochs=2)
    state = torch.get_rng_state()
    threads = torch.get_num_threads()
    a, _ = dm.train_classifier(8, recipe, log=lambda *a: None)
    b, _ = dm.train_classifier(8, recipe, log=lambda *a: None)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_cli_writes_json(real, tmp_path, capsys):
    x, y = real
    u8 = torch.round((x[:300, 0] + 1) * 127.5).to(torch.uint8).numpy()       # (N, R, R)
    path = str(tmp_path / "samples.npz")
    np.savez(path, arr_0=u8, labels=y[:300].numpy())
    record = dm.main([path])
    assert "digits fd:" in capsys.readouterr().out
    saved = json.load(open(str(tmp_path / "samples_digits_metric.json")))
    assert saved["n"] == 300 and saved["accuracy"] >= 0.95 and saved["fd"] == record["fd"]
    np.savez(str(tmp_path / "bad.npz"), images=u8)
    with pytest.raises(SystemExit):
        dm.main([str(tmp_path / "bad.npz")])
    assert "no 'arr_0'" in capsys.readouterr().err


def test_classifier_trains_even_when_called_under_no_grad(tmp_path, monkeypatch):
    """The quickstart calls the metric from sampling code that runs without autograd."""
    monkeypatch.setenv("SIT_SRA_CACHE", str(tmp_path))
    with torch.no_grad():
        net = dm.load_classifier(8, log=lambda *a: None)
    assert (tmp_path / "digits_classifier_8.pt").exists() and not net.training


def test_nearest_train_share_matches_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    q, train, held = (torch.randn(n, 5, generator=gen) for n in (30, 40, 20))
    naive = np.mean([min(float((a - b).norm()) for b in train) < min(float((a - c).norm()) for c in held)
                     for a in q])
    assert dm.nearest_train_share(q, train, held) == pytest.approx(naive)
    loo = np.mean([min(float((held[i] - b).norm()) for b in train) <
                   min(float((held[i] - held[j]).norm()) for j in range(20) if j != i) for i in range(20)])
    assert dm.nearest_train_share(held, train, held, exclude_self=True) == pytest.approx(loo)
    with pytest.raises(ValueError, match="exclude_self"):
        dm.nearest_train_share(q, train, held, exclude_self=True)


def test_heldout_reference_memorisation_and_classifier_split():
    """Copies of training digits are all 'memorised', the held-out digits none; the real held-out figure lies
    in between; the classifier of the held-out reference trains on the train split only (its own cache
    file)."""
    train, y_train = digits_images(RES, "train")
    heldout, y_heldout = digits_images(RES, "heldout")
    copies = dm.digits_metric(train[:300], y_train[:300], reference="heldout")
    assert copies["memorisation"] == 1.0 and copies["reference"] == "heldout" and copies["real_n"] == 445
    assert copies["train_n"] == 1352 and copies["accuracy"] >= 0.95
    own = dm.digits_metric(heldout, y_heldout, reference="heldout")
    assert own["memorisation"] == 0.0 and abs(own["fd"]) < 1e-6 and own["accuracy"] == own["heldout_accuracy"]
    assert 0.5 < own["memorisation_real"] < 0.95 and own["heldout_accuracy"] >= 0.9
    # the floor: 300 other random training digits give an fd of the same size as these 300
    assert 0 < copies["fd_train_same_n"] < 3 * copies["fd"] and copies["fd"] < 3 * copies["fd_train_same_n"]
    saved = torch.load(dm.classifier_path(RES, "train"), weights_only=True)
    assert saved["split"] == "train" and dm.classifier_path(RES, "train") != dm.classifier_path(RES)
    with pytest.raises(ValueError, match="reference"):
        dm.digits_metric(heldout, y_heldout, reference="test")


def test_cli_heldout_reference(tmp_path, capsys):
    heldout, y_heldout = digits_images(RES, "heldout")
    u8 = torch.round((heldout[:, 0] + 1) * 127.5).to(torch.uint8).numpy()
    path = str(tmp_path / "samples.npz")
    np.savez(path, arr_0=u8, labels=y_heldout.numpy())
    record = dm.main([path, "--reference", "heldout", "--out", str(tmp_path / "r.json")])
    assert "memorisation" in capsys.readouterr().out
    saved = json.load(open(tmp_path / "r.json"))
    assert saved["reference"] == "heldout" and saved["memorisation"] == record["memorisation"] <= 0.01
    assert saved["classifier"].endswith("digits_classifier_16_train.pt")
