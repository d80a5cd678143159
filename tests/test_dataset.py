"""dataset.py: the shard and REPA readers, build_dataset, sample_posterior, DigitsDataset, EpochOrder resume.

The shard folders here are written with preprocessing.shards directly (random moments, no VAE), so this file
is fast.
"""
import json
import os

import numpy as np
import pytest
import torch

from dataset import (
    LATENT_SCALE,
    DigitsDataset,
    EpochOrder,
    LatentShardDataset,
    RepaLatentDataset,
    build_dataset,
    digits_images,
    digits_split_indices,
    sample_posterior,
)
from preprocessing.shards import ShardWriter, atomic_write_json, finalize, shard_files


def stack_items(ds, indices):
    """ds[i] for each index, stacked: (x (B, ...), labels (B,)[, features (B, T, D)])."""
    return torch.utils.data.default_collate([ds[int(i)] for i in indices])


def write_shards(out, counts, h=4, dtype="float32", num_classes=5, seed=0):
    """A shard-format folder with random moments (std > 0); returns (all moments float32, labels)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    allm, alll = [], []
    for k, c in enumerate(counts):
        m = rng.normal(size=(c, 8, h, h)).astype(np.float32)
        m[:, 4:] = np.exp(m[:, 4:] - 2)
        y = rng.integers(0, num_classes, c)
        # capacity > count: trimmed
        w = ShardWriter(shard_files(out, k)["moments"], c + 2, (8, h, h), dtype)
        w.write(m)
        atomic_write_json(shard_files(out, k)["meta"], {"count": c, "labels": y.tolist(),
                                                         "sources": [[f"c/{k}_{i}.png", 0] for i in range(c)],
                                                         "skipped": [], "stats": w.stats})
        w.close()
        allm.append(m)
        alll.append(y)
    header = {"resolution": 8 * h, "latent_size": h, "latent_channels": 4, "moments_shape": [8, h, h],
              "dtype": dtype, "vae": "test", "flip": False, "num_classes": num_classes,
              "class_names": [f"c{i}" for i in range(num_classes)]}
    finalize(out, len(counts), header)
    return np.concatenate(allm), np.concatenate(alll)


def test_latent_shard_dataset(tmp_path):
    out = str(tmp_path / "d")
    m, y = write_shards(out, [3, 0, 5, 2])
    ds = build_dataset(out)
    assert isinstance(ds, LatentShardDataset) and len(ds) == 10
    assert ds.is_latent and ds.latent_channels == 4 and ds.latent_size == 4 and ds.resolution == 32
    assert ds.num_classes == 5 and not ds.has_flips
    for i in range(10):
        x, label = ds[i]
        assert x.dtype == torch.float32 and x.shape == (8, 4, 4) and label.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), m[i])
        assert int(label) == y[i]
    idx = [9, 0, 4, 3, 4]
    xb, yb = stack_items(ds, idx)
    np.testing.assert_array_equal(xb.numpy(), m[idx])
    np.testing.assert_array_equal(yb.numpy(), y[idx])
    with pytest.raises(IndexError):
        ds[10]
    # works through DataLoader worker processes (memmaps are reopened there, not pickled)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    got = torch.cat([b[0] for b in loader])
    np.testing.assert_array_equal(got.numpy(), m)


def test_shard_writer_trims_when_the_header_size_changes(tmp_path, monkeypatch):
    """close() patches the shape in place when the header keeps its length, else copies the prefix: same
    result."""
    import preprocessing.shards as shards
    m = np.random.default_rng(0).normal(size=(3, 8, 2, 2)).astype(np.float32)
    real = shards.npy_header

    def longer(dtype, shape):
        # the same header with 64 more spaces of padding (a valid .npy header, 64 bytes longer)
        h = real(dtype, shape)
        body = h[10:-1] + b" " * 64 + b"\n"
        return h[:8] + len(body).to_bytes(2, "little") + body

    for name, header in [("inplace", real), ("copy", longer)]:
        monkeypatch.setattr(shards, "npy_header", real)
        w = ShardWriter(str(tmp_path / f"{name}.npy"), 10, (8, 2, 2), "float32")
        # the trimmed shape's header is longer than the one written at the start
        monkeypatch.setattr(shards, "npy_header", header)
        w.write(m)
        w.close()
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), m)
        assert not os.path.exists(tmp_path / f"{name}.tmp")


def test_float16_shards_read_as_float32(tmp_path):
    m, _ = write_shards(str(tmp_path / "d"), [4, 3], dtype="float16")
    x, _ = stack_items(LatentShardDataset(str(tmp_path / "d")), range(7))
    assert x.dtype == torch.float32
    np.testing.assert_array_equal(x.numpy(), m.astype(np.float16).astype(np.float32))


def test_repa_layout_and_errors(tmp_path):
    vae = tmp_path / "repa" / "vae-sd"
    rng = np.random.default_rng(1)
    entries, arrays = [], {}
    for i in [3, 1, 0, 2]:
        rel = f"0000{i // 2}/img-mean-std-{i:08d}.npy"
        (vae / rel).parent.mkdir(parents=True, exist_ok=True)
        arrays[rel] = rng.normal(size=(8, 2, 2)).astype(np.float32)
        np.save(vae / rel, arrays[rel])
        entries.append([rel, i % 3])
    (vae / "dataset.json").write_text(json.dumps({"labels": entries}))
    # the root or vae-sd itself
    for d in (tmp_path / "repa", vae):
        ds = build_dataset(str(d))
        assert isinstance(ds, RepaLatentDataset) and len(ds) == 4
        assert ds.resolution == 16 and ds.num_classes == 3
        # sorted relative paths
        assert ds.files == sorted(arrays)
        for i, rel in enumerate(ds.files):
            np.testing.assert_array_equal(ds[i][0].numpy(), arrays[rel])
            assert int(ds[i][1]) == dict(entries)[rel]
    assert RepaLatentDataset(str(tmp_path / "repa"), num_classes=1000).num_classes == 1000
    # a file without a label
    np.save(vae / "00000" / "extra.npy", np.zeros((8, 2, 2), np.float32))
    with pytest.raises(ValueError, match="without a label"):
        RepaLatentDataset(str(tmp_path / "repa"))


def test_build_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_dataset(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "shards/moments-*.npy" in msg and "vae-sd/dataset.json" in msg
    (tmp_path / "shards").mkdir()
    with pytest.raises(FileNotFoundError, match="preprocessing has not finished"):
        build_dataset(str(tmp_path))
    d = build_dataset("digits:32")
    assert isinstance(d, DigitsDataset) and d.resolution == 32


def test_sample_posterior_math():
    mean = torch.randn(3, 4, 5, 5)
    std = torch.rand(3, 4, 5, 5) + 0.1
    moments = torch.cat([mean, std], 1)
    z = sample_posterior(moments, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(7))
    assert z.shape == (3, 4, 5, 5) and z.dtype == torch.float32
    torch.testing.assert_close(z, (mean + std * noise) * LATENT_SCALE)
    z2 = sample_posterior(moments, generator=torch.Generator().manual_seed(7))
    assert torch.equal(z, z2)
    # statistics: a constant posterior N(2, 0.5^2) becomes N(2 s, (0.5 s)^2)
    big = torch.cat([torch.full((4000, 4, 4, 4), 2.0), torch.full((4000, 4, 4, 4), 0.5)], 1)
    zb = sample_posterior(big, generator=torch.Generator().manual_seed(0))
    assert abs(zb.mean().item() - 2 * LATENT_SCALE) < 0.002
    assert abs(zb.std().item() - 0.5 * LATENT_SCALE) < 0.002
    assert torch.equal(sample_posterior(torch.cat([mean, torch.zeros_like(std)], 1)), mean * LATENT_SCALE)
    with pytest.raises(ValueError, match="mean, std"):
        sample_posterior(torch.zeros(2, 3, 4, 4))


def test_digits_dataset():
    ds = DigitsDataset(16)
    x, y = digits_images(16)
    assert len(ds) == 1797 and not ds.is_latent and ds.latent_channels == 1 and ds.latent_size == 16
    assert ds.num_classes == 10
    xi, yi = ds[5]
    assert xi.shape == (1, 16, 16) and xi.dtype == torch.float32 and torch.equal(xi, x[5]) and int(yi) == y[5]
    assert xi.min() >= -1 and xi.max() <= 1
    xb, yb = stack_items(ds, [3, 1])
    assert torch.equal(xb, x[[3, 1]]) and torch.equal(yb, y[[3, 1]])


def test_digits_heldout_split_is_stratified_disjoint_and_fixed():
    x, y = digits_images(16)
    train, heldout = digits_split_indices(y, "train"), digits_split_indices(y, "heldout")
    assert len(heldout) == 445 and len(train) == 1352 and not set(train) & set(heldout)
    assert sorted(np.concatenate([train, heldout]).tolist()) == list(range(1797))
    counts = np.bincount(y.numpy(), minlength=10)
    assert np.bincount(y.numpy()[heldout], minlength=10).tolist() == [int(0.25 * c) for c in counts]
    # pinned: the split never moves
    assert heldout[:10].tolist() == [3, 7, 13, 16, 19, 22, 26, 36, 38, 43]
    np.testing.assert_array_equal(digits_split_indices(y, "all"), np.arange(1797))
    for split, idx in (("train", train), ("heldout", heldout)):
        xs, ys = digits_images(16, split)
        assert torch.equal(xs, x[idx]) and torch.equal(ys, y[idx])
        ds = build_dataset(f"digits:16:{split}")
        assert isinstance(ds, DigitsDataset) and ds.split == split and len(ds) == len(idx)
    assert len(build_dataset("digits")) == 1797 and build_dataset("digits:8").split == "all"


@pytest.mark.parametrize("spec", ["digits:16:val", "digits:x", "digits:16:train:1:2", "digits:16:train:1,1"])
def test_digits_spec_errors(spec):
    with pytest.raises(ValueError, match="digits"):
        build_dataset(spec)


def _take(order, n):
    out = []
    while len(out) < n:
        for b in order:
            out.append((order.epoch, b.clone()))
            if len(out) == n:
                break
    return out


def test_epoch_order_resume_and_ranks():
    n = 53
    bs = 4
    world = 2
    orders = [EpochOrder(n, bs, seed=3, rank=r, world_size=world) for r in range(world)]
    # 53 // 8, the rest dropped
    assert orders[0].batches_per_epoch == 6
    epoch0 = torch.cat([o.epoch_batches(0) for o in orders], 1)                # (6, 8)
    # ranks disjoint, no repeats
    assert epoch0.unique().numel() == 48
    assert not torch.equal(orders[0].epoch_batches(0), orders[0].epoch_batches(1))
    other_seed = EpochOrder(n, bs, seed=4, world_size=2)
    assert not torch.equal(orders[0].epoch_batches(0), other_seed.epoch_batches(0))

    # 2.5 epochs
    straight = [b for _, b in _take(EpochOrder(n, bs, seed=3, rank=1, world_size=world), 15)]
    first = EpochOrder(n, bs, seed=3, rank=1, world_size=world)
    # stop mid-epoch 1
    head = [b for _, b in _take(first, 9)]
    # survives a JSON/ckpt round trip
    state = json.loads(json.dumps(first.state_dict()))
    assert (state["epoch"], state["position"]) == (1, 3)
    again = EpochOrder(n, bs, seed=3, rank=1, world_size=world)
    again.load_state_dict(state)
    assert len(again) == 3
    tail = [b for _, b in _take(again, 6)]
    assert all(torch.equal(a, b) for a, b in zip(head + tail, straight))
    sought = EpochOrder(n, bs, seed=3, rank=1, world_size=world)
    sought.seek(9)
    assert all(torch.equal(a, b) for a, b in zip([b for _, b in _take(sought, 6)], straight[9:]))
    with pytest.raises(ValueError, match="batch_size"):
        EpochOrder(n, 5, seed=3, rank=1, world_size=world).load_state_dict(state)
    with pytest.raises(ValueError, match="cannot fill"):
        EpochOrder(7, 4, world_size=2)


def test_epoch_order_as_batch_sampler():
    ds = DigitsDataset(8)
    order = EpochOrder(len(ds), 16, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=order)
    assert len(loader) == len(ds) // 16
    first = [y for _, y in loader]
    assert len(first) == len(ds) // 16 and order.epoch == 1 and order.position == 0
    assert torch.equal(first[0], ds.labels[order.epoch_batches(0)[0]])


def test_missing_repa_features_name_the_whole_command(tmp_path):
    out = str(tmp_path / "d")
    write_shards(out, [3])
    with pytest.raises(FileNotFoundError) as e:
        build_dataset(out, features="repa-dinov2_vitb14-p2")
    command = f"python -m preprocessing repa-features {out} --enc-type dinov2_vitb14 --patch-size 2"
    assert command in str(e.value)
    assert "..." not in str(e.value)


def test_int16_shards_under_a_float32_dataset_json_are_refused_naming_both(tmp_path):
    out = str(tmp_path / "d")
    write_shards(out, [4, 3])
    shard = os.path.join(out, "shards", "moments-00001.npy")
    np.save(shard, np.ones((3, 8, 4, 4), dtype=np.int16))
    with pytest.raises(ValueError, match="int16") as e:
        build_dataset(out)
    assert shard in str(e.value) and "float32" in str(e.value)


def test_a_repa_label_that_is_not_an_integer_is_refused_naming_the_file(tmp_path):
    vae = tmp_path / "repa" / "vae-sd"
    (vae / "00000").mkdir(parents=True)
    entries = []
    for i, label in enumerate([1, 2.7]):
        np.save(vae / "00000" / f"img-{i}.npy", np.zeros((8, 2, 2), np.float32))
        entries.append([f"00000/img-{i}.npy", label])
    (vae / "dataset.json").write_text(json.dumps({"labels": entries}))
    with pytest.raises(ValueError, match="must be integers") as e:
        build_dataset(str(tmp_path / "repa"))
    assert str(vae / "dataset.json") in str(e.value) and "2.7" in str(e.value)
