"""train.py: exact resume, checkpoint format, non-finite stop, flag validation."""
import json
import os

import pytest
import torch

import loss as loss_module
import train

TINY = ["--preset", "digits", "--data-dir", "digits:8", "--batch-size", "16", "--log-every", "2",
        "--sample-steps", "0", "--eval-samples", "0", "--num-workers", "0", "--mixed-precision", "no",
        "--block-out-s", "1", "--block-out-t", "2"]


def run(tmp_path, name, *extra):
    train.main(TINY + ["--output-dir", str(tmp_path), "--exp-name", name, *extra])
    return os.path.join(tmp_path, name)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)      # plain types only


def assert_same_state(a, b):
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs"
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"opt state {i}.{k} differs"


def test_resume_is_exact(tmp_path):
    straight = run(tmp_path, "straight", "--max-train-steps", "6", "--checkpoint-steps", "3")
    # the same run, stopped at step 3 and resumed from its checkpoint
    run(tmp_path, "resumed", "--max-train-steps", "3", "--checkpoint-steps", "3")
    resumed = run(tmp_path, "resumed", "--max-train-steps", "6", "--checkpoint-steps", "3", "--resume", "auto")
    a, b = load(f"{straight}/checkpoints/0000006.pt"), load(f"{resumed}/checkpoints/0000006.pt")
    assert a["steps"] == b["steps"] == 6 and a["data"] == b["data"]
    assert_same_state(a, b)                                               # bitwise on CPU
    rows = [json.loads(line) for line in open(f"{resumed}/metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]                     # the log continues, nothing duplicated
    straight_rows = {r["step"]: r for r in map(json.loads, open(f"{straight}/metrics.jsonl"))}
    assert rows[-1]["loss"] == pytest.approx(straight_rows[6]["loss"], abs=0)
    args = json.load(open(f"{resumed}/args.json"))
    assert args["model"] == "SiT-T/4" and args["attention_separation"] and args["dual_time_scheduling"]
    assert a["time_convention"] == "ours" and isinstance(a["args"], dict)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = loss_module.TrainingLoss.__call__
    calls = {"n": 0}

    def poisoned(self, *a, **kw):
        calls["n"] += 1
        out, logs = real(self, *a, **kw)
        return (out * float("nan"), logs) if calls["n"] > 2 else (out, logs)

    monkeypatch.setattr(loss_module.TrainingLoss, "__call__", poisoned)
    with pytest.raises(SystemExit, match="non-finite loss at step 4"):
        run(tmp_path, "nan", "--max-train-steps", "6", "--checkpoint-steps", "2")
    ckpts = sorted(os.listdir(tmp_path / "nan" / "checkpoints"))
    assert ckpts == ["0000002.pt"]
    assert all(torch.isfinite(v).all() for v in load(tmp_path / "nan" / "checkpoints" / "0000002.pt")["model"].values())


@pytest.mark.parametrize("extra,message", [
    (["--block-out-t", "9"], "--block-out-t 9 is outside SiT-T/4's blocks 1..6"),
    (["--batch-size", "10", "--gradient-accumulation-steps", "4"], "must be divisible"),
    (["--mask-ratio", "0", "--teacher-mask"], "invalid flags: .*--teacher-mask"),
    (["--data-dir", "/nonexistent/latents"], "--data-dir"),
])
def test_bad_flags_fail_at_start_with_a_clear_message(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        run(tmp_path, "bad", "--max-train-steps", "1", *extra)


def test_presets_cover_the_paper_and_explicit_flags_win():
    a = train.parse_args(["--preset", "ours-xl2"])
    assert (a.model, a.block_out_s, a.block_out_t, a.mask_ratio, a.max_train_steps) == ("SiT-XL/2", 8, 20, [0.25], 4_000_000)
    assert a.attention_separation and a.dual_time_scheduling and train.teacher_mask_of(a) and a.teacher_t == "sra"
    b = train.parse_args(["--preset", "self-flow-b2", "--mask-ratio", "0.35"])
    assert b.mask_ratio == [0.35] and not b.attention_separation and b.teacher_t == "self_flow"
    assert train.parse_args(["--preset", "sit-b2"]).align_target == "none"


def test_bad_resume_files(tmp_path):
    with pytest.raises(SystemExit, match="no such checkpoint"):
        run(tmp_path, "r", "--max-train-steps", "1", "--resume", str(tmp_path / "missing.pt"))
    (tmp_path / "half.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit, match="cannot read this checkpoint"):
        run(tmp_path, "r", "--max-train-steps", "1", "--resume", str(tmp_path / "half.pt"))
    other = run(tmp_path, "other", "--max-train-steps", "1", "--model", "SiT-S/4")
    with pytest.raises(SystemExit, match=r"--resume: .*does not match the model"):
        run(tmp_path, "r", "--max-train-steps", "2", "--resume", f"{other}/checkpoints/0000001.pt")


def test_two_processes_on_cpu(tmp_path):
    """torchrun with 2 CPU processes (gloo): one run folder, written by rank 0, data split between the ranks."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py", *TINY,
           "--max-train-steps", "4", "--checkpoint-steps", "4", "--output-dir", str(tmp_path), "--exp-name", "ddp"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout + res.stderr
    ckpt = load(tmp_path / "ddp" / "checkpoints" / "0000004.pt")
    assert len(ckpt["rng"]) == 2 and ckpt["data"]["world_size"] == 2
    assert [json.loads(line)["step"] for line in open(tmp_path / "ddp" / "metrics.jsonl")] == [2, 4]


def test_keep_last_and_keep_every(tmp_path):
    import runlog
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (100, 200, 300, 400, 500):
        (folder / f"{step:07d}.pt").write_bytes(b"x")
    (folder / ".0000600.tmp-1.pt").write_bytes(b"half")               # a temporary file is never a checkpoint
    runlog.prune_checkpoints(str(tmp_path), keep_last=2, keep_every=200)
    assert [os.path.basename(p) for p in runlog.list_checkpoints(str(tmp_path))] == \
        ["0000200.pt", "0000400.pt", "0000500.pt"]


def test_previews_and_digits_metric_sample_with_the_run_path(tmp_path, monkeypatch):
    """The SDE score depends on --path-type: previews and the embedded metric pass the run's path to the sampler."""
    import sampling

    seen, real = [], sampling.sample_images
    monkeypatch.setattr(sampling, "sample_images", lambda *a, **k: (seen.append(k["path_type"]), real(*a, **k))[1])
    run(tmp_path, "cos", "--max-train-steps", "1", "--path-type", "cosine", "--sample-steps", "1",
        "--eval-samples", "4", "--preview-num-steps", "2")
    assert seen == ["cosine", "cosine"]                                  # one preview grid, one metric batch


def test_loss_sees_the_epoch_and_sra_orig_preset(tmp_path, monkeypatch):
    """--align-weight-schedule reads the 0-based epoch: digits:8 (1797 items) at batch 512 has 3 steps per epoch."""
    real, epochs = loss_module.TrainingLoss.__call__, []
    monkeypatch.setattr(loss_module.TrainingLoss, "__call__",
                        lambda self, *a, **kw: (epochs.append(kw["epoch"]), real(self, *a, **kw))[1])
    run(tmp_path, "ep", "--max-train-steps", "7", "--batch-size", "512", "--align-weight-schedule", "sra-256")
    assert epochs == [0, 0, 0, 1, 1, 1, 2]
    from presets import resolve
    p = resolve("sra-orig-xl2")
    assert (p["loss_type"], p["align_weight"], p["align_weight_schedule"], p["teacher_labels"], p["t_max"],
            p["mask_ratio"], p["block_out_s"], p["block_out_t"]) == ("sml1", 0.2, "sra-256", "dropped", 0.2, [0.0], 8, 20)
    assert resolve("sra-orig-xl2-512")["align_weight_schedule"] == "sra-512"
    assert resolve("sra-xl2")["loss_type"] == "cos-channel" and resolve("sra-xl2")["teacher_labels"] == "clean"
