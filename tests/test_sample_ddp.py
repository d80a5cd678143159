"""sample_ddp.py end to end on CPU with a tiny SiT-T/2 on 8x8 one-channel 'pixels' (no downloads)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import sample_ddp
import samplers
from infra import fileio
from models import SiT_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 10


def tiny_state_dict(in_channels=1, input_size=8, seed=0):
    """SiT-T/2 with random (non-zero) weights: the SiT init has a zero output layer, which would hide bugs."""
    torch.manual_seed(seed)
    m = SiT_models["SiT-T/2"](input_size=input_size, in_channels=in_channels, num_classes=10)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.state_dict()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "0000123.pt")
    sd = tiny_state_dict()
    torch.save({"model": tiny_state_dict(seed=1), "ema": sd, "args": {"model": "SiT-T/2"}, "steps": 123,
                "time_convention": "ours"}, path)
    return path


def run(ckpt, out, *extra):
    argv = ["--ckpt", ckpt, "--num-fid-samples", str(N), "--per-proc-batch-size", "4", "--num-steps", "4",
            "--sample-dir", str(out), "--global-seed", "3", "--no-progress", *extra]
    return sample_ddp.main(argv)


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    """One uninterrupted single-process run (SDE, 4 steps, CFG 2 inside [0.3, 0.9]): the images to match."""
    out = tmp_path_factory.mktemp("ref")
    path = run(ckpt, out, "--cfg-scale", "2", "--guidance-low", "0.3", "--guidance-high", "0.9")
    with np.load(path) as z:
        return path, z["arr_0"], z["labels"]


def test_npz_format_pngs_and_record(reference):
    path, arr, labels = reference
    folder = os.path.dirname(path)
    assert arr.shape == (N, 8, 8, 3) and arr.dtype == np.uint8
    # grey -> 3 channels
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
    assert labels.shape == (N,) and labels.dtype == np.int64
    assert labels.tolist() == sample_ddp.image_labels(range(N), 10, 3).tolist()
    assert len(set(labels.tolist())) > 1
    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    assert pngs == [f"{i:06d}.png" for i in range(N)]
    assert np.array_equal(np.asarray(Image.open(os.path.join(folder, "000007.png"))), arr[7])
    # not a constant image
    assert arr.std() > 5
    rec = json.load(open(os.path.join(folder, "sampling.json")))
    assert rec["status"] == "done" and rec["settings"]["steps"] == 123 and rec["settings"]["cfg_scale"] == 2.0
    name = os.path.basename(folder)
    parts = ("SiT-T-2", "0000123", "ema", "sde4", "cfg2", "g0.3-0.9", "chall", "seed3", "uniform", "fp32")
    for part in parts:
        assert part in name, (part, name)
    assert not [f for f in os.listdir(folder) if "tmp" in f]


def test_same_images_for_other_batch_sizes_and_npz_only(ckpt, reference, tmp_path):
    _, arr, labels = reference
    cfg = ["--cfg-scale", "2", "--guidance-low", "0.3", "--guidance-high", "0.9"]
    p3 = run(ckpt, tmp_path / "b3", *cfg, "--per-proc-batch-size", "3")
    p_npz = run(ckpt, tmp_path / "npz", *cfg, "--per-proc-batch-size", "7", "--npz-only")
    for p in (p3, p_npz):
        with np.load(p) as z:
            assert np.array_equal(z["arr_0"], arr) and np.array_equal(z["labels"], labels)
    assert not [f for f in os.listdir(os.path.dirname(p_npz)) if f.endswith(".png")]
    # a smaller N gives the first images of the larger set
    p_small = sample_ddp.main(["--ckpt", ckpt, "--num-fid-samples", "4", "--num-steps", "4", "--sample-dir",
                               str(tmp_path / "small"), "--global-seed", "3", "--no-progress", *cfg])
    with np.load(p_small) as z:
        assert np.array_equal(z["arr_0"], arr[:4])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_same_images_on_two_processes(ckpt, reference, tmp_path):
    """torchrun with 2 CPU processes (gloo): image i comes from rank i % 2, same pixels as world size 1."""
    _, arr, labels = reference
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), "sample_ddp.py", "--ckpt", ckpt,
           "--num-fid-samples", str(N), "--per-proc-batch-size", "2", "--num-steps", "4", "--sample-dir",
           str(tmp_path), "--global-seed", "3", "--no-progress", "--cfg-scale", "2", "--guidance-low", "0.3",
           "--guidance-high", "0.9"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (folder,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    with np.load(folder / f"samples_{N}.npz") as z:
        assert np.array_equal(z["arr_0"], arr) and np.array_equal(z["labels"], labels)
    assert json.load(open(folder / "sampling.json"))["world_size"] == 2


class Killed(Exception):
    pass


@pytest.mark.parametrize("npz_only", [False, True])
def test_killed_run_resumes_without_gaps_or_duplicates(ckpt, reference, tmp_path, monkeypatch, npz_only):
    _, arr, _ = reference
    extra = ["--cfg-scale", "2", "--guidance-low", "0.3", "--guidance-high", "0.9"]
    extra += ["--npz-only"] if npz_only else []
    real, made = sample_ddp.sample_images, []

    def dies_on_third_batch(model, seeds, *a, **k):
        if len(made) == 2:
            raise Killed()
        made.append(list(seeds))
        return real(model, seeds, *a, **k)

    monkeypatch.setattr(sample_ddp, "sample_images", dies_on_third_batch)
    with pytest.raises(Killed):
        run(ckpt, tmp_path, *extra)
    (folder,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    # no npz from an unfinished run
    assert not list(folder.glob("*.npz"))
    # debris of a kill mid-write is ignored
    (folder / ".000009.png.tmp").write_bytes(b"half a file")
    first = sorted(s - 3 for b in made for s in b)
    assert first == list(range(8))

    made.clear()
    monkeypatch.setattr(sample_ddp, "sample_images",
                        lambda *a, **k: (made.append(list(a[1])), real(*a, **k))[1])
    path = run(ckpt, tmp_path, *extra)
    # only the missing indices
    assert sorted(s - 3 for b in made for s in b) == [8, 9]
    with np.load(path) as z:
        assert np.array_equal(z["arr_0"], arr)
    made.clear()
    # complete: nothing is generated again
    run(ckpt, tmp_path, *extra)
    assert made == []


def test_to_uint8_rounds_half_up_and_grid(tmp_path):
    x = torch.tensor([-1.0, -0.9961, 0.0, 1 / 255, 0.99, 1.0, 1.5]).view(1, 1, 1, 7)
    # floor(127.5 x + 128)
    u = samplers.to_uint8(x, "dit")
    assert u.shape == (1, 1, 7, 3) and u.dtype == np.uint8
    assert u[0, 0, :, 0].tolist() == [0, 0, 128, 128, 254, 255, 255]
    # default: floor(127.5 x + 127.5)
    r = samplers.to_uint8(x)
    assert r[0, 0, :, 0].tolist() == [0, 0, 127, 128, 253, 255, 255]
    with pytest.raises(ValueError, match="quantize"):
        samplers.to_uint8(x, "round")
    imgs = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    fileio.save_grid(imgs, str(tmp_path / "g.png"), nrow=3, pad=1)
    g = np.asarray(Image.open(tmp_path / "g.png"))
    assert g.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    assert np.array_equal(g[6:10, 8:14], imgs[4])


def test_quantize_rules_and_record(ckpt, reference, tmp_path):
    """--quantize dit is the release rule plus half a level: each pixel equal or one brighter, in its own
    folder."""
    _, arr, _ = reference
    cfg = ["--cfg-scale", "2", "--guidance-low", "0.3", "--guidance-high", "0.9"]
    p = run(ckpt, tmp_path, *cfg, "--quantize", "dit")
    with np.load(p) as z:
        dit = z["arr_0"]
    diff = dit.astype(np.int16) - arr.astype(np.int16)
    assert set(np.unique(diff).tolist()) <= {0, 1} and 0.3 < diff.mean() < 0.7
    rec = json.load(open(os.path.join(os.path.dirname(p), "sampling.json")))
    assert rec["settings"]["quantize"] == "dit" and "qdit" in p
    ref_record = json.load(open(os.path.join(os.path.dirname(reference[0]), "sampling.json")))
    assert ref_record["settings"]["quantize"] == "release"


def test_path_type_from_the_checkpoint(ckpt, tmp_path):
    """A cosine-path run is sampled with the cosine score; a flag that contradicts the file is an error."""
    import samplers

    state = torch.load(ckpt, weights_only=True)
    cos = str(tmp_path / "cosine.pt")
    torch.save(dict(state, args={"model": "SiT-T/2", "path_type": "cosine"}), cos)
    p = run(cos, tmp_path / "s", "--num-fid-samples", "2")
    assert "-cosine-" in p
    record = json.load(open(os.path.join(os.path.dirname(p), "sampling.json")))
    assert record["settings"]["path_type"] == "cosine"
    from models import load_checkpoint
    model, _ = load_checkpoint(cos)
    labels = sample_ddp.image_labels(range(2), 10, 3)
    want = {path: samplers.sample_images(model, [3, 4], labels, "cpu", mode="sde", num_steps=4,
                                         path_type=path)
            for path in samplers.PATH_TYPES}
    with np.load(p) as z:
        assert np.array_equal(z["arr_0"], want["cosine"]) and not np.array_equal(z["arr_0"], want["linear"])
    message = "--path-type linear but .*cosine.pt was trained with --path-type cosine"
    with pytest.raises(ValueError, match=message):
        run(cos, tmp_path / "t", "--path-type", "linear")
    # the file says nothing: linear
    assert "-linear-" in run(ckpt, tmp_path / "u", "--num-fid-samples", "1")


def test_grid_mode(ckpt, tmp_path):
    folder = sample_ddp.main(["--ckpt", ckpt, "--grid", "--grid-classes", "0", "3", "--grid-per-class", "3",
                              "--num-steps", "3", "--mode", "ode", "--heun", "--sample-dir", str(tmp_path)])
    g = np.asarray(Image.open(os.path.join(folder, "grid-0-3.png")))
    assert g.shape == (2 * 10 + 2, 3 * 10 + 2, 3)
    assert "ode-heun3" in folder
    with pytest.raises(ValueError, match="grid-classes"):
        sample_ddp.main(["--ckpt", ckpt, "--grid", "--grid-classes", "10", "--sample-dir", str(tmp_path)])


def test_foreign_files_and_errors(ckpt, tmp_path):
    raw = str(tmp_path / "public.pt")
    # a bare state dict, as the releases
    torch.save(torch.load(ckpt, weights_only=True)["ema"], raw)
    with pytest.raises(ValueError, match="time.convention"):
        run(raw, tmp_path)
    ours = run(ckpt, tmp_path / "a", "--mode", "ode", "--num-steps", "2")
    repa = run(raw, tmp_path / "b", "--mode", "ode", "--num-steps", "2", "--time-convention", "repa")
    sit = run(raw, tmp_path / "c", "--mode", "ode", "--num-steps", "2", "--time-convention", "sit")
    a, b, c = (np.load(p)["arr_0"] for p in (ours, repa, sit))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(FileNotFoundError, match="--vae"):
        run(ckpt, tmp_path, "--vae", str(tmp_path / "no-such-vae"))
    with pytest.raises(ValueError, match="cfg-channels"):
        run(ckpt, tmp_path, "--cfg-channels", "3")
    with pytest.raises(SystemExit):
        sample_ddp.parse_args(["--ckpt", ckpt, "--mode", "sde", "--heun"])
    # the help text formats
    with pytest.raises(SystemExit) as e:
        sample_ddp.parse_args(["--help"])
    assert e.value.code == 0


def test_latent_model_through_a_local_vae(tmp_path):
    """A 4-channel latent model decoded by a tiny AutoencoderKL saved locally (random weights, SD-VAE
    layout)."""
    from diffusers.models import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4,
                        sample_size=8)
    vae.save_pretrained(str(tmp_path / "vae"))
    path = str(tmp_path / "latent.pt")
    torch.save({"ema": tiny_state_dict(in_channels=4, input_size=4), "steps": 5, "time_convention": "ours"},
               path)
    out = sample_ddp.main(["--ckpt", path, "--num-fid-samples", "3", "--num-steps", "2", "--vae",
                           str(tmp_path / "vae"), "--sample-dir", str(tmp_path / "s"), "--no-progress"])
    with np.load(out) as z:
        assert z["arr_0"].shape == (3, 8, 8, 3) and z["arr_0"].dtype == np.uint8
    assert "vaevae" in out
