"""evaluations/pca.py: the PCA against numpy's SVD, the figure for flow and DDPM checkpoints side by side."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from evaluations import pca
from models import SiT_models


def test_pca_components_match_numpy_svd():
    rng = np.random.default_rng(0)
    # tokens with a dominant 3-d structure plus noise, per image its own
    feats = rng.normal(size=(3, 16, 3)) @ rng.normal(size=(3, 24)) * 5 + rng.normal(size=(3, 16, 24))
    got = pca.pca_components(torch.from_numpy(feats)).numpy()                 # (3, 16, 3)
    for n in range(3):
        x = feats[n] - feats[n].mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        want = x @ vt[:3].T                                                    # (16, 3)
        for k in range(3):
            # the same axis up to its sign, which pca fixes: the largest entry positive
            sign = np.sign(want[np.abs(want[:, k]).argmax(), k])
            assert np.allclose(got[n, :, k], sign * want[:, k], atol=1e-9)
            assert got[n, np.abs(got[n, :, k]).argmax(), k] > 0
    rgb = pca.to_rgb(torch.from_numpy(got), grid=4)
    assert rgb.shape == (3, 4, 4, 3) and rgb.min() == 0 and rgb.max() == 1


def save_ckpt(path, learn_sigma, process, seed):
    torch.manual_seed(seed)
    m = SiT_models["SiT-N/4"](input_size=16, in_channels=1, num_classes=10, learn_sigma=learn_sigma)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = m.state_dict()
    torch.save({"model": sd, "ema": sd, "args": {"model": "SiT-N/4", "process": process}, "steps": 5,
                "time_convention": "ours"}, path)


def test_figure_for_flow_and_ddpm_checkpoints(tmp_path):
    runs = tmp_path / "runs"
    for name, sigma, process in (("flow", False, "flow"), ("ddpm", True, "ddpm")):
        os.makedirs(runs / name / "checkpoints")
        save_ckpt(str(runs / name / "checkpoints" / "0000005.pt"), sigma, process, seed=len(name))
    out = str(tmp_path / "figs" / "pca.png")
    ckpts = [str(runs / n / "checkpoints" / "0000005.pt") for n in ("flow", "ddpm")]
    assert pca.main([*ckpts, "--digits", "3", "--block", "2", "--t", "0.3", "--out", out]) == out
    img = Image.open(out)
    assert img.size[0] > 100 and img.size[1] > 100
    # an image folder and a latent file give the same figure machinery
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((20, 24, 3)) * 255).astype(np.uint8)).save(
            folder / f"{i}.png")
    pca.main([ckpts[0], "--images", str(folder), "--block", "6", "--t", "1", "--out", out])
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 16, 16), dtype=np.float32))
    pca.main([ckpts[1], "--latents", str(tmp_path / "x.npy"), "--block", "1", "--t", "0", "--out", out])
    assert os.path.getsize(out) > 0


def test_block_and_noise_level_feed_the_model(tmp_path):
    path = str(tmp_path / "c.pt")
    save_ckpt(path, True, "ddpm", seed=0)
    from models import load_checkpoint

    model, info = load_checkpoint(path)
    x0 = torch.zeros(2, 1, 16, 16)
    # block k's output is forward_features(layer=k) on the DDPM x_t at step round(t * 999), null label
    got = pca.block_features(model, info, x0, block=3, t=0.5, seed=7)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    import ddpm

    steps = torch.full((2,), 500)
    x_t = ddpm.GaussianDiffusion.dit().q_sample(x0, steps, eps)
    # without gradients, as pca runs it (the blocks fuse their multiply-adds then)
    with torch.no_grad():
        want = model.forward_features(x_t, steps.float(), torch.full((2,), 10), layer=3)
    assert torch.equal(got, want) and got.shape == (2, 16, 64)
    with pytest.raises(ValueError, match="--block 7 is outside"):
        pca.block_features(model, info, x0, block=7, t=0.5)


def test_main_leaves_gradients_on(tmp_path):
    path = str(tmp_path / "c.pt")
    save_ckpt(path, False, "flow", seed=1)
    pca.main([path, "--digits", "2", "--block", "1", "--t", "0.5", "--out", str(tmp_path / "f.png")])
    assert torch.is_grad_enabled()


def test_bad_flags_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        pca.main(["c.pt", "--digits", "2", "--block", "1", "--t", "2", "--out", "x.png"])
    assert e.value.code == 2 and "--t must lie in [0, 1]" in capsys.readouterr().err
