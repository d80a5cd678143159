"""preprocessing/: ADM crop, odd and broken inputs, shards + labels + dataset.json, resume, import-repa, VAE
loading.

CPU only, nothing downloaded: the VAE is diffusers' AutoencoderKL with the SD-VAE architecture and random
weights (a much narrower VAE with the same /8 geometry for the pipeline tests that run the encoder several
times).
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from test_dataset import stack_items

import preprocessing.encode as enc
from dataset import LatentShardDataset, RepaLatentDataset, build_dataset
from models.vae import encode_moments, load_vae
from preprocessing.crop import center_crop_adm, load_rgb
from preprocessing.encode import encode_folder, scan_folder
from preprocessing.encode import main as encode_main
from preprocessing.import_repa import import_repa

# crop size used in the pipeline tests (latent 4x4)
RES = 32


def sd_vae_config():
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256)


def tiny_vae_config():
    return dict(sd_vae_config(), block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8)


def make_vae(config):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(**config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def sd_vae():
    return make_vae(sd_vae_config())


@pytest.fixture(scope="module")
def tiny_vae():
    return make_vae(tiny_vae_config())


def _noise(rng, h, w, c=3):
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes, 14 image files: 11 readable (RGB, grey, 16-bit grey, CMYK, RGBA, palette+transparency,
    nested, BMP), 3 bad (truncated JPEG, a text file named .jpg, a 1x1 image), plus one ignored non-image
    file."""
    root = tmp_path_factory.mktemp("imagenet") / "train"
    rng = np.random.default_rng(0)
    for c in ("n01_alpha", "n02_beta", "n03_gamma"):
        (root / c).mkdir(parents=True)
    Image.fromarray(_noise(rng, 40, 48)).save(root / "n01_alpha" / "a0.JPEG", quality=95)
    Image.fromarray(_noise(rng, 64, 40)).save(root / "n01_alpha" / "a1.png")
    Image.fromarray(_noise(rng, 50, 50, 1)[..., 0], mode="L").save(root / "n01_alpha" / "a2.jpg")
    (root / "n01_alpha" / "sub").mkdir()
    Image.fromarray(_noise(rng, 45, 80)).save(root / "n01_alpha" / "sub" / "a3.JPEG")
    (root / "n01_alpha" / "notes.txt").write_text("not an image")
    Image.fromarray(_noise(rng, 70, 100)).save(root / "n02_beta" / "b0.JPEG")
    Image.fromarray(_noise(rng, 40, 60, 4), mode="RGBA").convert("CMYK").save(root / "n02_beta" / "b1.jpg")
    rgba = _noise(rng, 45, 45, 4)
    # a transparent band
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(root / "n02_beta" / "b2.png")
    pal = Image.fromarray(_noise(rng, 40, 40)).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(root / "n02_beta" / "b3.png", transparency=0)
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(root / "n02_beta" / "b4.png")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(root / "n02_beta" / "b5.png")
    Image.fromarray(_noise(rng, 64, 64)).save(root / "n03_gamma" / "c0.JPEG", quality=95)
    data = (root / "n03_gamma" / "c0.JPEG").read_bytes()
    # truncated
    (root / "n03_gamma" / "c0.JPEG").write_bytes(data[:int(len(data) * 0.6)])
    (root / "n03_gamma" / "c1.jpg").write_text("this is text, not a JPEG")
    Image.fromarray(_noise(rng, 64, 64)).save(root / "n03_gamma" / "c2.JPEG")
    Image.fromarray(_noise(rng, 77, 33)).save(root / "n03_gamma" / "c3.bmp")
    return str(root)


BAD = {"n02_beta/b5.png": "too small", "n03_gamma/c0.JPEG": "truncated", "n03_gamma/c1.jpg": "unreadable"}


# ----------------------------------------------------------------------------------------------- the ADM crop
def _pattern(w, h):
    """A deterministic RGB image with structure at every scale (gradients + a checkerboard)."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), ((x // 7 + y // 5) % 2) * 255], -1)
    return Image.fromarray(arr.astype(np.uint8), mode="RGB")


@pytest.mark.parametrize("size,res,steps", [
    # no halving: 400 < 512
    ((600, 400), 256, [((384, 256), Image.BICUBIC)]),
    ((600, 400), 128, [((300, 200), Image.BOX), ((192, 128), Image.BICUBIC)]),
    ((600, 400), 64, [((300, 200), Image.BOX), ((150, 100), Image.BOX), ((96, 64), Image.BICUBIC)]),
    # portrait, odd sizes floor, 200 >= 2*100 halves again
    ((401, 601), 100, [((200, 300), Image.BOX), ((100, 150), Image.BOX), ((100, 150), Image.BICUBIC)]),
    # 333 * 0.64 = 213.12 -> 213
    ((333, 200), 128, [((213, 128), Image.BICUBIC)]),
    # exactly 2x: one halving
    ((512, 512), 256, [((256, 256), Image.BOX), ((256, 256), Image.BICUBIC)]),
])
def test_center_crop_adm_steps(monkeypatch, size, res, steps):
    img = _pattern(*size)
    calls, real_resize = [], Image.Image.resize

    def spy(self, new_size, resample=None, *a, **k):
        calls.append((tuple(new_size), resample))
        return real_resize(self, new_size, resample, *a, **k)

    monkeypatch.setattr(Image.Image, "resize", spy)
    out = center_crop_adm(img, res)
    assert calls == steps
    monkeypatch.setattr(Image.Image, "resize", real_resize)
    # the same steps by hand, then the centre window (offsets rounded down)
    ref = img
    for new_size, resample in steps:
        ref = ref.resize(new_size, resample=resample)
    ref = np.asarray(ref)
    top, left = (ref.shape[0] - res) // 2, (ref.shape[1] - res) // 2
    assert out.dtype == np.uint8 and out.shape == (res, res, 3)
    np.testing.assert_array_equal(out, ref[top:top + res, left:left + res])


def test_center_crop_keeps_the_centre():
    """A 600x400 image, left half black / right half white: the centre crop straddles the edge at its
    middle."""
    arr = np.zeros((400, 600, 3), np.uint8)
    arr[:, 300:] = 255
    out = center_crop_adm(Image.fromarray(arr), 256)
    # edge at column 128 (+- bicubic)
    assert out[:, :120].max() == 0 and out[:, 136:].min() == 255


def test_load_rgb_odd_modes(image_folder):
    for rel in ["n01_alpha/a2.jpg", "n02_beta/b1.jpg", "n02_beta/b2.png", "n02_beta/b3.png",
                "n02_beta/b4.png"]:
        img, reason = load_rgb(os.path.join(image_folder, rel))
        assert reason is None and img.mode == "RGB", rel
    img, _ = load_rgb(os.path.join(image_folder, "n02_beta/b2.png"))
    # transparent -> white
    assert (np.asarray(img)[:10] == 255).all()
    for rel, why in BAD.items():
        img, reason = load_rgb(os.path.join(image_folder, rel))
        assert img is None and why in reason, (rel, reason)


# ------------------------------------------------------------------------------- end to end with the SD-VAE
@pytest.fixture(scope="module")
def encoded(image_folder, sd_vae, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("encoded") / "latents")
    info = encode_folder(image_folder, out, RES, vae=sd_vae, batch_size=3, shard_size=4, workers=0,
                         reference_batch=5, progress=False)
    return out, info


def test_shards_labels_and_json_agree(image_folder, encoded):
    out, info = encoded
    with open(os.path.join(out, "dataset.json")) as f:
        assert json.load(f) == info
    class_names, items, ignored = scan_folder(image_folder)
    assert class_names == ["n01_alpha", "n02_beta", "n03_gamma"] and ignored == 1
    assert info["num_files"] == len(items) == 14
    assert info["num_skipped"] == 3 and info["num_images"] == info["num_samples"] == 11
    assert info["resolution"] == RES and info["moments_shape"] == [8, RES // 8, RES // 8]
    assert info["num_classes"] == 3 and info["dtype"] == "float32" and info["flip"] is False
    counts = [np.load(os.path.join(out, s["file"]), mmap_mode="r").shape[0] for s in info["shards"]]
    assert counts == [s["count"] for s in info["shards"]] and sum(counts) == 11 and len(counts) == 4
    labels = np.load(os.path.join(out, "labels.npy"))
    sources = [line.split("\t") for line in open(os.path.join(out, "sources.txt")).read().splitlines()]
    assert labels.dtype == np.int64 and labels.shape == (11,)
    assert [class_names.index(p.split("/")[0]) for p, _ in sources] == labels.tolist()
    good = [rel for rel, _ in items if rel not in BAD]
    # file order, bad ones left out
    assert [p for p, _ in sources] == good
    skipped = dict(line.split("\t") for line in open(os.path.join(out, "skipped.txt")).read().splitlines())
    assert set(skipped) == set(BAD) and all(BAD[p] in r for p, r in skipped.items())
    assert not [f for f in os.listdir(os.path.join(out, "shards")) if f.endswith(".tmp")]
    # the recorded statistics
    x, _ = stack_items(LatentShardDataset(out), range(11))
    st = info["latent_stats"]
    np.testing.assert_allclose(st["channel_mean"], x[:, :4].double().mean((0, 2, 3)).numpy(), rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(st["channel_std"], x[:, :4].double().std((0, 2, 3), unbiased=False).numpy(),
                               rtol=1e-6)
    assert st["posterior_std_min"] == x[:, 4:].min().item()
    assert st["posterior_std_max"] == x[:, 4:].max().item()
    assert info["float16_rounding"] is None


def test_moments_match_the_vae_posterior(image_folder, encoded, sd_vae):
    out, _ = encoded
    ds = LatentShardDataset(out)
    sources = [line.split("\t")[0] for line in open(os.path.join(out, "sources.txt")).read().splitlines()]
    # L, CMYK, P
    pick = [sources.index(p) for p in ("n01_alpha/a2.jpg", "n02_beta/b1.jpg", "n02_beta/b3.png")]
    crops = np.stack([center_crop_adm(load_rgb(os.path.join(image_folder, sources[i]))[0], RES)
                      for i in pick])
    with torch.no_grad():
        post = sd_vae.encode(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist
    x, y = stack_items(ds, pick)
    assert x.shape == (3, 8, RES // 8, RES // 8)
    torch.testing.assert_close(x[:, :4], post.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x[:, 4:], post.std, atol=1e-5, rtol=1e-5)
    # and encode_moments (what the CLI runs) is that posterior too
    torch.testing.assert_close(encode_moments(sd_vae, torch.from_numpy(crops)),
                               torch.cat([post.mean, post.std], 1))


def test_reference_batch(image_folder, encoded):
    out, info = encoded
    ref = np.load(os.path.join(out, "reference_batch.npz"))["arr_0"]
    assert ref.dtype == np.uint8 and ref.shape == (5, RES, RES, 3) and info["reference_batch"]["count"] == 5
    _, items, _ = scan_folder(image_folder)
    perm = np.random.default_rng(0).permutation(len(items))
    # first 5 readable, file order
    chosen = sorted([i for i in perm if items[i][0] not in BAD][:5])
    for row, i in zip(ref, chosen):
        image, _ = load_rgb(os.path.join(image_folder, items[i][0]))
        np.testing.assert_array_equal(row, center_crop_adm(image, RES))
    assert not [f for f in os.listdir(os.path.join(out, "shards")) if f.startswith("reference-")]


# ------------------------------------------------------------------------------- resume, ranks, flips, fp16
def _all_bytes(out):
    files = {}
    for root, _, names in os.walk(out):
        for n in names:
            files[os.path.relpath(os.path.join(root, n), out)] = open(os.path.join(root, n), "rb").read()
    return files


def test_interrupted_runs_equal_an_uninterrupted_run(image_folder, tiny_vae, tmp_path, monkeypatch):
    kw = dict(vae=tiny_vae, batch_size=3, shard_size=4, workers=0, reference_batch=4, progress=False)
    straight = str(tmp_path / "straight")
    encode_folder(image_folder, straight, RES, **kw)

    resumed = str(tmp_path / "resumed")
    # stop after 1 shard
    assert encode_folder(image_folder, resumed, RES, max_shards=1, **kw) is None
    assert not os.path.exists(os.path.join(resumed, "dataset.json"))
    calls, real = [0], enc.encode_moments

    # a crash in the middle of a shard
    def dies_on_third_call(*a, **k):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    monkeypatch.setattr(enc, "encode_moments", dies_on_third_call)
    with pytest.raises(KeyboardInterrupt):
        encode_folder(image_folder, resumed, RES, **kw)
    monkeypatch.setattr(enc, "encode_moments", real)
    shards = sorted(os.listdir(os.path.join(resumed, "shards")))
    # no half-written shard left
    assert not [f for f in shards if ".tmp" in f]
    assert "moments-00001.npy" in shards and "moments-00002.npy" not in shards
    # finishes the rest
    encode_folder(image_folder, resumed, RES, **kw)
    assert _all_bytes(resumed) == _all_bytes(straight)

    # 2 "ranks", run one after the other
    ranks = str(tmp_path / "ranks")
    assert encode_folder(image_folder, ranks, RES, rank=1, world_size=2, **kw) is None
    encode_folder(image_folder, ranks, RES, rank=0, world_size=2, **kw)
    assert _all_bytes(ranks) == _all_bytes(straight)

    # resuming with other settings
    with pytest.raises(RuntimeError, match="other input files or settings"):
        encode_folder(image_folder, resumed, RES, **dict(kw, batch_size=2, reference_batch=0, shard_size=5))


def test_flip_and_float16(image_folder, tiny_vae, tmp_path):
    out32 = str(tmp_path / "f32")
    encode_folder(image_folder, out32, RES, vae=tiny_vae, batch_size=4, shard_size=6, workers=0,
                  progress=False)
    out = str(tmp_path / "flip16")
    info = encode_folder(image_folder, out, RES, vae=tiny_vae, batch_size=4, shard_size=6, workers=0,
                         flip=True, dtype="float16", progress=False)
    assert info["num_images"] == 11 and info["num_samples"] == 22 and info["flip"] is True
    ds, ds32 = LatentShardDataset(out), LatentShardDataset(out32)
    assert ds.has_flips and len(ds) == 22
    assert np.load(os.path.join(out, info["shards"][0]["file"])).dtype == np.float16
    x, _ = stack_items(ds, range(22))
    x32, _ = stack_items(ds32, range(11))
    # originals = the fp32 run, rounded
    torch.testing.assert_close(x[0::2], x32, atol=0, rtol=2 ** -10)
    # mirror: same label
    assert torch.equal(stack_items(ds, range(0, 22, 2))[1], stack_items(ds, range(1, 22, 2))[1])
    sources = [line.split("\t") for line in open(os.path.join(out, "sources.txt")).read().splitlines()]
    crop = center_crop_adm(load_rgb(os.path.join(image_folder, sources[3][0]))[0], RES)
    assert sources[3][1] == "1"
    mirrored = encode_moments(tiny_vae, torch.from_numpy(np.ascontiguousarray(crop[:, ::-1]))[None])
    # the mirrored image, encoded
    torch.testing.assert_close(x[3:4], mirrored, atol=0, rtol=2 ** -10)
    r = info["float16_rounding"]
    assert 0 < r["mean_abs_err_over_std"] <= r["max_abs_err_over_std"] < 0.01


# ------------------------------------------------------------------------------------- import-repa, loading
def test_import_repa_round_trip(encoded, tmp_path):
    src, _ = encoded
    ds = LatentShardDataset(src)
    repa = tmp_path / "repa" / "vae-sd"
    entries = []
    for i in range(len(ds)):
        # REPA's naming
        rel = f"{i // 4:05d}/img-mean-std-{i:08d}.npy"
        (repa / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(repa / rel, ds[i][0].numpy())
        entries.append([rel, int(ds.labels[i])])
    (repa / "dataset.json").write_text(json.dumps({"labels": entries[::-1]}))
    direct = build_dataset(str(tmp_path / "repa"))
    assert isinstance(direct, RepaLatentDataset) and len(direct) == len(ds) and direct.resolution == RES
    out = str(tmp_path / "imported")
    info = import_repa(str(tmp_path / "repa"), out, shard_size=4, workers=0, progress=False)
    imported = build_dataset(out)
    assert isinstance(imported, LatentShardDataset) and info["num_samples"] == len(ds)
    assert imported.num_classes == 3 and imported.latent_size == RES // 8
    a, ya = stack_items(imported, range(len(ds)))
    b, yb = stack_items(ds, range(len(ds)))
    # bit for bit, same order
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert import_repa(str(tmp_path / "repa"), out, shard_size=4, workers=0, progress=False) == info


def test_load_vae_from_folder_and_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "sd-vae"
    make_vae(tiny_vae_config()).save_pretrained(folder)
    vae = load_vae(str(folder))
    x = torch.randint(0, 256, (2, RES, RES, 3), dtype=torch.uint8)
    torch.testing.assert_close(encode_moments(vae, x), encode_moments(make_vae(tiny_vae_config()), x))
    with pytest.raises(FileNotFoundError, match="--vae /path/to/sd-vae-ft-mse") as e:
        load_vae(str(tmp_path / "nowhere"))
    assert "config.json" in str(e.value)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download nobody/no-such-vae"):
        load_vae(None, "nobody/no-such-vae")


def test_cli(image_folder, tmp_path, capsys):
    folder = tmp_path / "sd-vae"
    make_vae(tiny_vae_config()).save_pretrained(folder)
    out = str(tmp_path / "cli")
    rc = encode_main([image_folder, out, "--resolution", str(RES), "--vae", str(folder), "--batch-size", "4",
                      "--workers", "1", "--device", "cpu", "--shard-size", "8", "--no-progress"])
    assert rc == 0 and build_dataset(out).num_classes == 3 and len(build_dataset(out)) == 11
    assert encode_main([image_folder, str(tmp_path / "x"), "--vae", str(tmp_path / "none"),
                        "--device", "cpu"]) == 2
    assert "SD-VAE weights not found" in capsys.readouterr().err


# ------------------------------------------------------------------------- faults and odd files (issue 26)
def _copy_folder(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return str(dst)


class _Hang(Exception):
    pass


def test_a_fifo_named_png_is_skipped_and_listed_not_read(image_folder, tiny_vae, tmp_path):
    import signal
    src = _copy_folder(image_folder, tmp_path / "src")
    fifo = os.path.join(src, "n01_alpha", "pipe.png")
    os.mkfifo(fifo)
    img, reason = load_rgb(fifo)
    assert img is None and "not a regular file" in reason

    def hang(*_):
        raise _Hang()

    # before the fix this blocked forever in open(); a minute is far more than it needs
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        out = str(tmp_path / "out")
        info = encode_folder(src, out, RES, vae=tiny_vae, batch_size=4, shard_size=8, workers=0,
                             progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    skipped = dict(line.split("\t") for line in open(os.path.join(out, "skipped.txt")).read().splitlines())
    assert "not a regular file" in skipped["n01_alpha/pipe.png"] and info["num_images"] == 11


WORKER_OF_A_KILLED_PARENT = r"""
import sys, time
import torch
from preprocessing.launch import die_with_parent

class Stuck(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        time.sleep(600)

loader = torch.utils.data.DataLoader(Stuck(), num_workers=1, worker_init_fn=die_with_parent)
it = iter(loader)
print(it._workers[0].pid, flush=True)
next(it)
"""


def _running(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_decoding_workers_die_with_their_killed_parent():
    import signal
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, "-c", WORKER_OF_A_KILLED_PARENT], cwd=root, text=True,
                              stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=root))
    try:
        worker = int(parent.stdout.readline())
        # the worker is inside __getitem__ (it sleeps): kill the parent, as a job scheduler would
        time.sleep(1)
        assert _running(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.time() + 20
        while _running(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not _running(worker), "the worker outlived its killed parent"
    finally:
        parent.kill()
        if _running(worker):
            os.kill(worker, signal.SIGKILL)


def _corrupt_jpeg():
    """A JPEG with 5 bits flipped in its entropy-coded data (after the SOS segment): PIL decodes it without a
    word (garbled), libjpeg warns."""
    import io
    buf = io.BytesIO()
    _pattern(96, 64).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sos = data.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    rng = np.random.default_rng(3)
    for p in rng.integers(start, len(data) - 2, 5):
        data[p] ^= 1 << int(rng.integers(0, 8))
    return bytes(buf.getvalue()), bytes(data)


def test_a_jpeg_with_corrupted_entropy_data_is_skipped_not_encoded_garbled(tmp_path):
    import io
    clean, corrupt = _corrupt_jpeg()
    # what PIL does with it: decodes, no error, no warning, other pixels
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        garbled = Image.open(io.BytesIO(corrupt))
        garbled.load()
    assert not np.array_equal(np.asarray(garbled), np.asarray(Image.open(io.BytesIO(clean))))
    (tmp_path / "clean.jpg").write_bytes(clean)
    (tmp_path / "corrupt.jpg").write_bytes(corrupt)
    img, reason = load_rgb(str(tmp_path / "clean.jpg"))
    assert reason is None and img.size == (96, 64)
    img, reason = load_rgb(str(tmp_path / "corrupt.jpg"))
    assert img is None and reason.startswith("corrupt: Corrupt JPEG data"), reason
    # junk between the last scan and the end-of-image marker: every pixel decoded, kept (as REPA keeps it)
    (tmp_path / "tail.jpg").write_bytes(clean[:-2] + b"\x00\x12" + clean[-2:])
    img, reason = load_rgb(str(tmp_path / "tail.jpg"))
    assert reason is None and np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(clean))))


def test_a_float_tiff_holding_0_8_is_light_grey_not_black(tmp_path):
    for value, grey in ((0.8, 204), (1.0, 255), (0.0, 0), (100.0, 100), (300.0, 255)):
        path = str(tmp_path / f"f{value}.tif")
        Image.fromarray(np.full((16, 16), value, np.float32), mode="F").save(path)
        img, reason = load_rgb(path)
        assert reason is None and np.asarray(img).min() == np.asarray(img).max() == grey, (value, reason)
    path = str(tmp_path / "nan.tif")
    Image.fromarray(np.full((16, 16), np.nan, np.float32), mode="F").save(path)
    img, reason = load_rgb(path)
    assert img is None and "NaN" in reason


def test_an_image_changed_under_the_same_name_is_encoded_again(image_folder, tiny_vae, tmp_path, capsys):
    src = _copy_folder(image_folder, tmp_path / "src")
    out = str(tmp_path / "out")
    kw = dict(vae=tiny_vae, batch_size=4, shard_size=4, workers=0, progress=False)
    encode_folder(src, out, RES, **kw)
    before = _all_bytes(out)
    x_before, _ = stack_items(LatentShardDataset(out), range(11))
    # n01_alpha/a1.png (item 1, shard 0): other pixels, same name
    path = os.path.join(src, "n01_alpha", "a1.png")
    Image.fromarray(_noise(np.random.default_rng(7), 64, 40)).save(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    capsys.readouterr()
    encode_folder(src, out, RES, **kw)
    assert "shard 0: image files under SRC_DIR changed" in capsys.readouterr().out
    after = _all_bytes(out)
    assert after["shards/moments-00000.npy"] != before["shards/moments-00000.npy"]
    others = [f for f in before if f.startswith("shards/moments-") and f != "shards/moments-00000.npy"]
    assert len(others) == 3 and all(after[f] == before[f] for f in others)
    x_after, _ = stack_items(LatentShardDataset(out), range(11))
    sources = [line.split("\t")[0] for line in open(os.path.join(out, "sources.txt")).read().splitlines()]
    i = sources.index("n01_alpha/a1.png")
    assert not torch.equal(x_after[i], x_before[i])
    keep = [j for j in range(11) if j != i]
    assert torch.equal(x_after[keep], x_before[keep])


def test_a_full_disk_during_shard_writes_is_one_line_naming_the_path_and_bytes(image_folder, tmp_path,
                                                                                monkeypatch, capsys):
    import errno

    from infra import fileio
    from preprocessing.shards import ShardWriter
    folder = tmp_path / "sd-vae"
    make_vae(tiny_vae_config()).save_pretrained(folder)
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 1000)
    out = str(tmp_path / "out")
    rc = encode_main([image_folder, out, "--resolution", str(RES), "--vae", str(folder), "--workers", "0",
                      "--device", "cpu", "--shard-size", "8", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    shard = os.path.join(out, "shards", "moments-00000.npy")
    # 8 samples of (8, 4, 4) float32 and the 128-byte header
    assert f"{shard}: no space left on the device: 4.1 KiB needed, 1000 B free" in err
    assert not [f for f in os.listdir(os.path.join(out, "shards")) if f.startswith("moments")]
    # the disk fills up while the shard is written: the write's ENOSPC, said the same way
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 2 ** 40)
    w = ShardWriter(shard, 8, (8, 4, 4), "float32")

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    w.file.close()
    w.file = Full()
    with pytest.raises(fileio.WriteError, match="moments-00000.npy: no space left on the device"):
        w.write(np.ones((2, 8, 4, 4), np.float32))
    w.abort()
    assert not os.listdir(os.path.join(out, "shards"))
