"""train.py --fid-every N --fid-ref REF.npz (evaluations/fid_proxy.py): fid_proxy rows in metrics.jsonl equal
to a separate computation from the saved EMA, training unchanged by the hook, one-line flag errors. Digits,
CPU, the small stand-in graph (no TensorFlow needed)."""
import json
import os

import numpy as np
import pytest
import torch

import train
from evaluations import metrics
from evaluations.fid_proxy import SEED_OFFSET
from evaluations.inception import TorchInceptionNet
from fixtures.standin_graph import build_standin_graph
from infra.fileio import atomic_savez

# one BLAS thread for the 2048-d eigendecompositions (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_blas_thread")

TINY = ["--preset", "digits", "--data-dir", "digits:8", "--batch-size", "16", "--log-every", "2",
        "--sample-steps", "0", "--eval-samples", "0", "--num-workers", "0", "--mixed-precision", "no",
        "--block-out-s", "1", "--block-out-t", "2", "--max-train-steps", "4", "--checkpoint-steps", "4",
        "--preview-num-steps", "2"]


@pytest.fixture(scope="module")
def fid_files(tmp_path_factory):
    from samplers import to_uint8

    from dataset import digits_images
    d = tmp_path_factory.mktemp("fid")
    images, _ = digits_images(8)
    ref = str(d / "digits_ref.npz")
    # arr_0 only: stats computed from it
    atomic_savez(ref, arr_0=to_uint8(images[:64]))
    return {"graph": build_standin_graph(str(d / "small.pb")), "ref": ref, "dir": d}


def run(tmp_path, name, *extra):
    train.main(TINY + ["--output-dir", str(tmp_path), "--exp-name", name, *extra])
    return os.path.join(tmp_path, name)


def test_fid_proxy_is_logged_and_leaves_training_unchanged(tmp_path, fid_files, monkeypatch):
    monkeypatch.setenv("SIT_SRA_CACHE", str(tmp_path / "cache"))
    flags = ["--fid-every", "2", "--fid-ref", fid_files["ref"], "--fid-samples", "12",
             "--fid-inception", fid_files["graph"]]
    with_fid = run(tmp_path, "fid", *flags)
    plain = run(tmp_path, "plain")
    rows = [json.loads(line) for line in open(f"{with_fid}/metrics.jsonl")]
    fid_rows = [r for r in rows if "fid_proxy" in r]
    assert [r["step"] for r in fid_rows] == [2, 4] and all(r["fid_proxy_n"] == 12 for r in fid_rows)
    log = open(f"{with_fid}/log.txt").read()
    assert "fid_proxy" in log and "not ADM FID" in log
    a = torch.load(f"{with_fid}/checkpoints/0000004.pt", map_location="cpu", weights_only=True)
    b = torch.load(f"{plain}/checkpoints/0000004.pt", map_location="cpu", weights_only=True)
    for key in ("model", "ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k}: the hook changed training"

    # the step-4 value from the saved EMA, computed here: same seeds and labels, the torch backend, metrics.py
    from samplers import sample_images
    args = train.parse_args(TINY)
    from dataset import build_dataset
    ema = train.build_model(args, build_dataset("digits:8")).eval()
    ema.load_state_dict(a["ema"])
    seeds = range(SEED_OFFSET + args.seed, SEED_OFFSET + args.seed + 12)
    images = sample_images(ema, seeds, [i % 10 for i in range(12)], torch.device("cpu"), mode="sde",
                           num_steps=2, cfg_scale=1.0)
    net = TorchInceptionNet(fid_files["graph"], "cpu")
    ref = np.load(fid_files["ref"])["arr_0"]
    want = metrics.frechet_distance(*metrics.feature_stats(net.features(images)[0]),
                                    *metrics.feature_stats(net.features(ref)[0]))
    assert fid_rows[-1]["fid_proxy"] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--fid-every", "2"], "--fid-every needs --fid-ref"),
    (["--fid-ref", "ref.npz"], "needs --fid-every"),
    (["--fid-every", "2", "--fid-ref", "nope.npz"], "nope.npz"),
    (["--fid-every", "-1", "--fid-ref", "x.npz"], "--fid-every must lie in [0, inf)"),
])
def test_bad_fid_flags_fail_at_start(tmp_path, extra, message):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "bad", *extra)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_fid_proxy_split_across_ranks_equals_one_process(tmp_path, fid_files, monkeypatch):
    """Image i on rank i % world, the features gathered to the main process: the same value as one process
    (a seed per image); the other ranks hold no reference and return None."""
    from evaluations.fid_proxy import FidProxy
    from models import SiT_models

    monkeypatch.setenv("SIT_SRA_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    ema = SiT_models["SiT-T/4"](input_size=8, in_channels=1, num_classes=10).eval()
    kw = dict(seed=0, batch_size=4, sampler_kwargs=dict(mode="sde", num_steps=2))
    one = FidProxy(fid_files["ref"], 11, fid_files["graph"], "cpu", **kw)(ema, 10)
    main = FidProxy(fid_files["ref"], 11, fid_files["graph"], "cpu", **kw)
    other = FidProxy(fid_files["ref"], 11, fid_files["graph"], "cpu", reference=False, **kw)
    assert other.mu is None
    # the collective's view: every share handed over so far (rank 1's call comes first here)
    shares = []

    def gather(mine):
        # the agreement on abandoning the pass (no rank did)
        if isinstance(mine[0], bool):
            return [mine[0], False]
        shares.append(mine[0])
        return list(shares)

    assert other(ema, 10, rank=1, world=2, gather=gather) is None
    split = main(ema, 10, rank=0, world=2, gather=gather)
    assert [len(x) for x in shares] == [5, 6] and split == pytest.approx(one, rel=1e-6)


def test_a_stop_signal_during_the_fid_proxy_abandons_it_within_a_sampler_step(tmp_path, fid_files,
                                                                             monkeypatch):
    """SIGTERM at the 3rd of 400 sampler steps of the pass at step 2: no further sampler step, no fid_proxy
    row, and the checkpoint at the next step (3): seconds, not the pass's minutes."""
    from test_faults import sigterm_at_sampler_step

    monkeypatch.setenv("SIT_SRA_CACHE", str(tmp_path / "cache"))
    calls = sigterm_at_sampler_step(monkeypatch, 3)
    d = run(tmp_path, "fid", "--fid-every", "2", "--fid-ref", fid_files["ref"], "--fid-samples", "12",
            "--fid-inception", fid_files["graph"], "--preview-num-steps", "400")
    assert len(calls) == 3
    assert torch.load(f"{d}/checkpoints/latest.pt", weights_only=True)["steps"] == 3
    assert not any("fid_proxy" in json.loads(line) for line in open(f"{d}/metrics.jsonl"))
    assert "step 2: fid_proxy abandoned: a stop signal came during it" in open(f"{d}/log.txt").read()


def test_a_rank_that_saw_no_signal_abandons_the_pass_with_the_others(tmp_path, fid_files, monkeypatch):
    """The ranks agree (one gather of flags) before the features are gathered: no rank is left waiting in a
    collective the others skipped."""
    import samplers
    from evaluations.fid_proxy import FidProxy
    from models import SiT_models

    monkeypatch.setenv("SIT_SRA_CACHE", str(tmp_path / "cache"))
    ema = SiT_models["SiT-T/4"](input_size=8, in_channels=1, num_classes=10).eval()
    proxy = FidProxy(fid_files["ref"], 6, fid_files["graph"], "cpu", seed=0, batch_size=4,
                     sampler_kwargs=dict(mode="sde", num_steps=2))
    gathered = []

    def gather(mine):
        gathered.append(mine[0])
        # rank 1 abandoned its share
        return [mine[0], True]

    with pytest.raises(samplers.Stopped):
        proxy(ema, 10, rank=0, world=2, gather=gather)
    assert gathered == [False]
