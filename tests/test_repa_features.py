"""Precomputed REPA targets: `python -m preprocessing repa-features`, the dataset's (moments, label, feats)
triples, the loss reading them, and train.py --repa-features.

CPU only, nothing downloaded: a random-weight DINOv2 ViT-S/14 saved to a temporary file, the narrow
random-weight VAE and the image folder of test_preprocessing.py. 64 px crops -> 8 x 8 latents -> 4 x 4 tokens
(SiT /2) -> DINOv2 at 56 px.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from test_dataset import stack_items
from test_preprocessing import image_folder, tiny_vae  # noqa: F401  (module fixtures)

import train
from dataset import LatentShardDataset, build_dataset, sample_posterior
from loss import Draw, LossConfig, REPATarget, TrainingLoss
from models import SiT_models
from models.dinov2 import build_dinov2, dinov2_patch_tokens, preprocess_for_dinov2
from preprocessing import repa_features as rf
from preprocessing.crop import center_crop_adm, load_rgb
from preprocessing.encode import encode_folder

RES = 64
ENC, DIM = "dinov2_vits14", 384
NAME = "repa-dinov2_vits14-p2"
TOKENS = (RES // 8 // 2) ** 2                                      # 16
CLI = ["--enc-type", ENC, "--batch-size", "5", "--workers", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_dinov2(ENC).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def weights(encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2") / f"{ENC}_pretrain.pth"
    torch.save(encoder.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def featurized(image_folder, tiny_vae, weights, tmp_path_factory):  # noqa: F811
    """11 readable images of 14 files, --flip (22 samples), shards of 4 files -> counts [8, 8, 2, 4]; then
    the CLI."""
    out = str(tmp_path_factory.mktemp("latents") / "data")
    encode_folder(image_folder, out, RES, vae=tiny_vae, batch_size=4, shard_size=4, workers=0, flip=True,
                  progress=False)
    assert rf.main([out, "--enc-weights", weights, *CLI]) == 0
    return out


def _bytes(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def _sources(data):
    lines = open(os.path.join(data, "sources.txt")).read().splitlines()
    return [(p, f == "1") for p, f in (line.split("\t") for line in lines)]


def _crops(image_folder, data, rows):  # noqa: F811
    """uint8 (n, RES, RES, 3): the ADM crops of samples `rows`, mirrored where sources.txt says so."""
    sources, out = _sources(data), []
    for i in rows:
        crop = center_crop_adm(load_rgb(os.path.join(image_folder, sources[i][0]))[0], RES)
        out.append(np.ascontiguousarray(crop[:, ::-1]) if sources[i][1] else crop)
    return np.stack(out)


def _all_features(data):
    folder = os.path.join(data, NAME)
    info = json.load(open(os.path.join(folder, "features.json")))
    return np.concatenate([np.load(os.path.join(folder, f)) for f in info["files"]])


# ------------------------------------------------------------------------------------------------ the files
def test_files_counts_and_shapes(featurized):
    info = json.load(open(os.path.join(featurized, "dataset.json")))
    feats = json.load(open(os.path.join(featurized, NAME, "features.json")))
    counts = [s["count"] for s in info["shards"]]
    assert counts == [8, 8, 2, 4] and feats["counts"] == counts and feats["num_samples"] == 22
    for k, (name, count) in enumerate(zip(feats["files"], counts)):
        assert name == f"features-{k:05d}.npy"
        arr = np.load(os.path.join(featurized, NAME, name), mmap_mode="r")
        assert arr.dtype == np.float16 and arr.shape == (count, TOKENS, DIM)
    keys = ("format", "encoder", "patch", "tokens", "tokens_side", "dim", "dtype", "input_resolution")
    assert tuple(feats[k] for k in keys) == ("sit-repa-features", ENC, 2, 16, 4, DIM, "float16", 56)
    assert not [f for f in os.listdir(os.path.join(featurized, NAME)) if ".tmp" in f]


def test_rows_are_dinov2_on_the_crop_and_its_mirror(featurized, encoder, image_folder):  # noqa: F811
    rows = [0, 1, 5, 16, 17, 21]                                   # odd rows are mirrored images
    assert [_sources(featurized)[i][1] for i in rows] == [False, True, True, False, True, True]
    x = torch.from_numpy(_crops(image_folder, featurized, rows)).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = dinov2_patch_tokens(encoder, preprocess_for_dinov2(x, 56))
    got = torch.from_numpy(_all_features(featurized)[rows].astype(np.float32))
    torch.testing.assert_close(got, ref.half().float(), rtol=2e-3, atol=2e-3)
    assert (got[0] - got[1]).abs().mean() > 0.05                   # the mirror is a different image to DINOv2


# ----------------------------------------------------------------------------------------- resume and ranks
def test_resumed_interrupted_and_split_runs_write_the_same_bytes(featurized, weights, tmp_path, monkeypatch):
    straight = _bytes(os.path.join(featurized, NAME))
    copy = str(tmp_path / "copy")
    shutil.copytree(featurized, copy)
    os.remove(os.path.join(copy, NAME, "features-00001.npy"))        # one shard lost: rerun redoes only it
    calls, real = [], rf.encode_features
    monkeypatch.setattr(rf, "encode_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert rf.main([copy, "--enc-weights", weights, *CLI]) == 0
    assert len(calls) == 2 and _bytes(os.path.join(copy, NAME)) == straight      # 8 samples in batches of 5

    def dies_on_its_second_batch(*a, **k):                                 # killed in the middle of shard 0
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    shutil.rmtree(os.path.join(copy, NAME))
    monkeypatch.setattr(rf, "encode_features", dies_on_its_second_batch)
    with pytest.raises(KeyboardInterrupt):
        rf.main([copy, "--enc-weights", weights, *CLI])
    left = os.listdir(os.path.join(copy, NAME))
    assert left == ["features-00000.json"]                            # no half-written features file
    monkeypatch.setattr(rf, "encode_features", real)
    assert rf.main([copy, "--enc-weights", weights, *CLI]) == 0
    assert _bytes(os.path.join(copy, NAME)) == straight

    shutil.rmtree(os.path.join(copy, NAME))                            # 2 "ranks", one after the other
    kw = dict(enc_type=ENC, enc_weights=weights, batch_size=5, workers=0, device="cpu", world_size=2,
              progress=False)
    assert rf.repa_features(copy, rank=1, **kw) is None
    assert sorted(os.listdir(os.path.join(copy, NAME))) == [f"features-0000{k}.{e}" for k in (1, 3)
                                                              for e in ("json", "npy")]
    assert rf.repa_features(copy, rank=0, **kw)["counts"] == [8, 8, 2, 4]
    assert _bytes(os.path.join(copy, NAME)) == straight

    with pytest.raises(RuntimeError, match="other settings"):        # resuming with other settings
        rf.repa_features(copy, **dict(kw, world_size=1, precision="bf16"))


def test_a_full_disk_during_feature_writes_is_one_line_naming_the_file_and_bytes(featurized, weights,
                                                                                   tmp_path, monkeypatch,
                                                                                   capsys):
    from infra import fileio
    copy = str(tmp_path / "copy")
    shutil.copytree(featurized, copy)
    shutil.rmtree(os.path.join(copy, NAME))
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 1000)
    assert rf.main([copy, "--enc-weights", weights, *CLI]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "features-00000.npy: no space left on the device" in err and "needed, 1000 B free" in err, err
    assert not [f for f in os.listdir(os.path.join(copy, NAME)) if f.endswith(".npy")]


def test_cli_errors(featurized, tmp_path, capsys):
    rc = rf.main([featurized, "--enc-weights", str(tmp_path / "none.pth"), *CLI])
    assert rc == 2 and "DINOv2 weights for dinov2_vits14 not found" in capsys.readouterr().err
    fake = tmp_path / "imported"
    fake.mkdir()
    (fake / "dataset.json").write_text(json.dumps({"format": "sit-latent-shards", "vae": "imported"}))
    assert rf.main([str(fake), *CLI]) == 2
    assert "imported from a REPA/SRA latent folder" in capsys.readouterr().err
    assert rf.main([str(tmp_path / "nothing"), *CLI]) == 2
    assert "dataset.json not found" in capsys.readouterr().err


def test_images_root_is_checked_and_can_be_moved(featurized, weights,
                                                 image_folder,  # noqa: F811
                                                 tmp_path, capsys):
    copy = str(tmp_path / "copy")
    shutil.copytree(featurized, copy, ignore=shutil.ignore_patterns(NAME))
    assert rf.main([copy, "--enc-weights", weights, "--images-root", str(tmp_path / "gone"), *CLI]) == 2
    assert "--images-root" in capsys.readouterr().err
    moved = str(tmp_path / "moved")
    shutil.copytree(image_folder, moved)
    assert rf.main([copy, "--enc-weights", weights, "--images-root", moved, *CLI]) == 0
    assert _bytes(os.path.join(copy, NAME)) == _bytes(os.path.join(featurized, NAME))


# ----------------------------------------------------------------------------------------------- the dataset
def test_dataset_yields_aligned_triples(featurized, tmp_path):
    ds, plain = LatentShardDataset(featurized, features=NAME), LatentShardDataset(featurized)
    table = _all_features(featurized)
    assert ds.features_info["tokens"] == TOKENS and len(ds) == 22
    for i in (0, 9, 17, 21):                                          # every shard
        x, y, f = ds[i]
        assert f.dtype == torch.float32 and f.shape == (TOKENS, DIM)
        assert torch.equal(f, torch.from_numpy(table[i].astype(np.float32)))
        assert torch.equal(x, plain[i][0]) and torch.equal(y, plain[i][1])
    idx = [21, 3, 16, 8]
    xb, yb, fb = stack_items(ds, idx)
    assert torch.equal(fb, torch.from_numpy(table[idx].astype(np.float32)))
    assert torch.equal(xb, stack_items(plain, idx)[0]) and torch.equal(yb, stack_items(plain, idx)[1])
    assert len(plain[0]) == 2 and build_dataset(featurized, features=NAME).features == NAME

    with pytest.raises(FileNotFoundError, match="repa-dinov2_vitb14-p2 not found"):
        LatentShardDataset(featurized, features="repa-dinov2_vitb14-p2")
    copy = str(tmp_path / "copy")
    shutil.copytree(featurized, copy)
    meta = json.load(open(os.path.join(copy, NAME, "features.json")))
    json.dump(dict(meta, counts=[8, 8, 4, 2]), open(os.path.join(copy, NAME, "features.json"), "w"))
    with pytest.raises(ValueError, match=f"{NAME} do not match the moments shards"):
        LatentShardDataset(copy, features=NAME)
    with pytest.raises(ValueError, match="need a dataset written by `python -m preprocessing`"):
        build_dataset("digits", features=NAME)


# --------------------------------------------------------------------------------------------------- the loss
def test_repa_loss_with_precomputed_features_equals_the_encoder_on_the_same_images(
        featurized, encoder, image_folder):  # noqa: F811
    torch.manual_seed(0)
    model = SiT_models["SiT-T/2"](input_size=RES // 8, in_channels=4, num_classes=3, align_head="projector",
                                  z_dim=DIM)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    idx = [0, 3, 16, 21]
    moments, y, feats = stack_items(LatentShardDataset(featurized, features=NAME), idx)
    x0 = sample_posterior(moments, generator=torch.Generator().manual_seed(0))
    images = torch.from_numpy(_crops(image_folder, featurized, idx)).permute(0, 3, 1, 2).float() / 127.5 - 1
    kw = dict(num_tokens=model.num_tokens, grid=model.grid, patch=model.patch_size, num_classes=3)
    cfg = LossConfig(align_target="repa", block_out_s=2, loss_type="cos-token", align_weight=0.5)
    on_the_fly = TrainingLoss(cfg, target=REPATarget(encoder, to_images=lambda x: images), **kw)
    precomputed = TrainingLoss(cfg, target=REPATarget(dim=DIM), **kw)
    torch.manual_seed(1)
    a, logs_a = on_the_fly(model, x0, y)
    torch.manual_seed(1)
    b, logs_b = precomputed(model, x0, y, features=feats)
    assert torch.equal(logs_a["loss_gen"], logs_b["loss_gen"])       # the same draws
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)           # float16 storage only
    assert logs_a["loss_align"] > 0.5                                  # a real, untrained alignment loss

    target = REPATarget(dim=DIM)
    assert torch.equal(target(Draw(x0=x0, grid=4, features=feats)), feats)
    with pytest.raises(ValueError, match=r"expected \(4, 16, 384\)"):
        target(Draw(x0=x0, grid=4, features=feats[:, :9]))
    with pytest.raises(ValueError, match="no encoder"):
        target(Draw(x0=x0, grid=4, features=None))


# ------------------------------------------------------------------------------------------------- train.py
def test_train_with_precomputed_features_needs_no_encoder_or_vae(featurized, tmp_path, monkeypatch):
    def unavailable(*a, **k):
        raise AssertionError("not needed with --repa-features")

    monkeypatch.setattr(train, "load_vae_for", unavailable)
    monkeypatch.setattr("models.dinov2.load_dinov2", unavailable)
    seen, real = [], REPATarget.__call__
    monkeypatch.setattr(REPATarget, "__call__",
                        lambda self, d: seen.append(tuple(d.features.shape)) or real(self, d))
    args = ["--data-dir", featurized, "--model", "SiT-T/2", "--use-alignment-loss", "--align-target", "repa",
            "--mask-ratio", "0", "--no-dual-time-scheduling", "--no-attention-separation",
            "--enc-type", ENC, "--repa-features", NAME, "--loss-type", "cos-token", "--block-out-s", "2",
            "--block-out-t", "2", "--batch-size", "4", "--max-train-steps", "2", "--checkpoint-steps", "2",
            "--log-every", "1", "--sample-steps", "0", "--num-workers", "0", "--mixed-precision", "no",
            "--output-dir", str(tmp_path)]
    train.main(args + ["--exp-name", "pre"])
    assert seen == [(4, TOKENS, DIM)] * 2
    rows = [json.loads(line) for line in open(tmp_path / "pre" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss_align"] > 0 for r in rows)

    for extra, message in ((["--align-target", "ema"], "needs --use-alignment-loss --align-target repa"),
                           (["--enc-type", "dinov2_vitb14"], "written for dinov2_vits14"),
                           (["--repa-features", "repa-x"], "--repa-features: .*repa-x not found")):
        with pytest.raises(SystemExit, match=message):
            train.main(args + ["--exp-name", "bad"] + extra)


def test_repa_on_latents_never_uses_reconstructions(featurized, tmp_path):
    """On latents REPA's targets come from the real images: without precomputed ones the run stops at start
    (it never decodes the latents for DINOv2); --repa-features auto names the folder repa-features writes."""
    args = ["--data-dir", featurized, "--model", "SiT-T/2", "--use-alignment-loss", "--align-target", "repa",
            "--mask-ratio", "0", "--no-dual-time-scheduling", "--no-attention-separation",
            "--enc-type", ENC, "--block-out-s", "2", "--batch-size", "4", "--max-train-steps", "1",
            "--num-workers", "0", "--mixed-precision", "no", "--output-dir", str(tmp_path),
            "--exp-name", "recon"]
    with pytest.raises(SystemExit, match="reads DINOv2 targets precomputed from the real images"):
        train.main(args)
    assert train.parse_args(args + ["--repa-features", "auto"]).repa_features == NAME
    # REPA's spelling
    assert train.parse_args(args + ["--enc-type", "dinov2-vit-s"]).repa_features == NAME


def test_imported_repa_folder_gets_its_targets_from_its_images(featurized, weights,
                                                               image_folder,  # noqa: F811
                                                               tmp_path):
    """A REPA folder (images/ + vae-sd/) through import-repa: repa-features reads images/ (the real images the
    latents came from), giving the features of the dataset encoded from the same crops."""
    from PIL import Image

    from preprocessing.import_repa import import_repa

    ds = LatentShardDataset(featurized)
    crops = _crops(image_folder, featurized, range(len(ds)))
    root, entries = tmp_path / "repa", []
    for i in range(len(ds)):
        img = root / "images" / f"{i // 8:05d}" / f"img{i:08d}.png"
        lat = f"{i // 8:05d}/img-mean-std-{i:08d}.npy"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crops[i]).save(img)
        (root / "vae-sd" / lat).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / "vae-sd" / lat, ds[i][0].numpy())
        entries.append([lat, int(ds.labels[i])])
    (root / "vae-sd" / "dataset.json").write_text(json.dumps({"labels": entries}))
    out = str(tmp_path / "imported")
    info = import_repa(str(root), out, shard_size=4, workers=0, progress=False)
    assert info["sources_are"] == "images"
    assert rf.main([out, "--enc-weights", weights, *CLI]) == 0
    np.testing.assert_allclose(_all_features(out).astype(np.float32),
                               _all_features(featurized).astype(np.float32), rtol=2e-3, atol=2e-3)
    # without its images/ an imported folder has nothing to run DINOv2 on; a count mismatch is refused
    shutil.rmtree(root / "images" / "00002")
    with pytest.raises(ValueError, match="images for 22 latents"):
        import_repa(str(root), str(tmp_path / "bad"), shard_size=4, workers=0, progress=False)
    shutil.rmtree(root / "images")
    bare = str(tmp_path / "bare")
    import_repa(str(root), bare, shard_size=4, workers=0, progress=False)
    with pytest.raises(ValueError, match="without its images/"):
        rf.repa_features(bare, enc_type=ENC, enc_weights=weights, device="cpu", progress=False)
