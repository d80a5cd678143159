"""train.py: exact resume, checkpoint format, non-finite stop, flag validation."""
import argparse
import json
import os

import pytest
import torch

import loss as loss_module
import samplers
import train

TINY = ["--preset", "digits", "--data-dir", "digits:8", "--batch-size", "16", "--log-every", "2",
        "--sample-steps", "0", "--eval-samples", "0", "--num-workers", "0", "--mixed-precision", "no",
        "--block-out-s", "1", "--block-out-t", "2"]


def teacher_mask_of(args) -> bool:
    """Whether the EMA teacher runs on the student's groups, as the loss derives it."""
    return loss_module.teacher_on_groups(args.align_target, args.teacher_t, args.mask_ratio)


def run(tmp_path, name, *extra):
    train.main(TINY + ["--output-dir", str(tmp_path), "--exp-name", name, *extra])
    return os.path.join(tmp_path, name)


def load(path):
    # plain types only
    return torch.load(path, map_location="cpu", weights_only=True)


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
    resumed = run(tmp_path, "resumed", "--max-train-steps", "6", "--checkpoint-steps", "3",
                  "--resume", "auto")
    a, b = load(f"{straight}/checkpoints/0000006.pt"), load(f"{resumed}/checkpoints/0000006.pt")
    assert a["steps"] == b["steps"] == 6
    # bitwise on CPU
    assert_same_state(a, b)
    rows = [json.loads(line) for line in open(f"{resumed}/metrics.jsonl")]
    # the log continues, nothing duplicated
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
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
    kept = load(tmp_path / "nan" / "checkpoints" / "0000002.pt")["model"]
    assert all(torch.isfinite(v).all() for v in kept.values())


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
    assert (a.model, a.block_out_s, a.block_out_t, a.mask_ratio, a.max_train_steps) == \
        ("SiT-XL/2", 8, 20, [0.25], 4_000_000)
    assert a.attention_separation and a.dual_time_scheduling and teacher_mask_of(a)
    assert a.teacher_t == "sra"
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
    """torchrun with 2 CPU processes (gloo): one run folder, written by rank 0, data split between the
    ranks."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py", *TINY,
           "--max-train-steps", "4", "--checkpoint-steps", "4", "--output-dir", str(tmp_path),
           "--exp-name", "ddp"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout + res.stderr
    ckpt = load(tmp_path / "ddp" / "checkpoints" / "0000004.pt")
    assert len(ckpt["rng"]) == 2
    assert [json.loads(line)["step"] for line in open(tmp_path / "ddp" / "metrics.jsonl")] == [2, 4]


def test_keep_last_and_keep_every(tmp_path):
    from infra import runlog
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (100, 200, 300, 400, 500):
        (folder / f"{step:07d}.pt").write_bytes(b"x")
    # a temporary file is never a checkpoint
    (folder / ".0000600.tmp-1.pt").write_bytes(b"half")
    runlog.prune_checkpoints(str(tmp_path), keep_last=2, keep_every=200)
    assert [os.path.basename(p) for p in runlog.list_checkpoints(str(tmp_path))] == \
        ["0000200.pt", "0000400.pt", "0000500.pt"]


def test_previews_and_digits_metric_sample_with_the_run_path(tmp_path, monkeypatch):
    """The SDE score depends on --path-type: previews and the embedded metric pass the run's path to the
    sampler."""
    seen, real = [], samplers.sample_images
    monkeypatch.setattr(samplers, "sample_images",
                        lambda *a, **k: (seen.append(k["path_type"]), real(*a, **k))[1])
    run(tmp_path, "cos", "--max-train-steps", "1", "--path-type", "cosine", "--sample-steps", "1",
        "--eval-samples", "4", "--preview-num-steps", "2")
    # one preview grid, one metric batch
    assert seen == ["cosine", "cosine"]


def test_preview_cfg_scale_keep_every_and_compile_reach_the_run(tmp_path, monkeypatch):
    """--preview-cfg-scale goes to the preview sampler; --keep-every keeps multiples next to --keep-last;
    --compile compiles each block of the student and of the EMA teacher."""
    seen, real = [], samplers.sample_images
    monkeypatch.setattr(samplers, "sample_images",
                        lambda *a, **k: (seen.append(k["cfg_scale"]), real(*a, **k))[1])
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **k: compiled.append(type(self).__name__))
    path = run(tmp_path, "k", "--max-train-steps", "5", "--checkpoint-steps", "1", "--keep-last", "1",
               "--keep-every", "2", "--sample-steps", "5", "--preview-num-steps", "2",
               "--preview-cfg-scale", "1.5", "--compile")
    assert seen == [1.5]
    assert sorted(os.listdir(f"{path}/checkpoints")) == ["0000002.pt", "0000004.pt", "0000005.pt"]
    # SiT-T/4: 6 blocks of the student, 6 of the EMA teacher
    assert compiled == ["SiTBlock"] * 12


@pytest.mark.parametrize("name", ["SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGCHLD", "NOPE"])
def test_stop_signals_flag_takes_stop_signals_only(name):
    shown = "SIGNOPE" if name == "NOPE" else name
    with pytest.raises(SystemExit, match=f"--stop-signals: {shown} is not a stop signal; choose among"):
        train.main(["--stop-signals", name])


def test_loss_sees_the_epoch_and_sra_orig_preset(tmp_path, monkeypatch):
    """--align-weight-schedule reads the 0-based epoch: digits:8 (1797 items) at batch 512 has 3 steps per
    epoch."""
    real, epochs = loss_module.TrainingLoss.__call__, []
    monkeypatch.setattr(loss_module.TrainingLoss, "__call__",
                        lambda self, *a, **kw: (epochs.append(kw["epoch"]), real(self, *a, **kw))[1])
    run(tmp_path, "ep", "--max-train-steps", "7", "--batch-size", "512", "--align-weight-schedule", "sra-256")
    assert epochs == [0, 0, 0, 1, 1, 1, 2]
    from presets import resolve
    p = resolve("sra-orig-xl2")
    assert (p["loss_type"], p["align_weight"], p["align_weight_schedule"], p["teacher_labels"], p["t_max"],
            p["mask_ratio"], p["block_out_s"], p["block_out_t"]) == \
        ("sml1", 0.2, "sra-256", "dropped", 0.2, [0.0], 8, 20)
    assert resolve("sra-orig-xl2-512")["align_weight_schedule"] == "sra-512"
    sra = resolve("sra-xl2")
    assert sra["loss_type"] == "cos-channel" and sra["teacher_labels"] == "clean"


# ---- the flag surface: loss flags from loss.LossConfig, presets as rows over the release's defaults --------

def test_loss_flags_are_exactly_loss_config_fields():
    import dataclasses

    import presets

    fields = {f.name for f in dataclasses.fields(loss_module.LossConfig)}
    parser = train.build_parser()
    group = next(g for g in parser._action_groups if g.title.startswith("loss"))
    assert {a.dest for a in group._group_actions} == fields
    for a in group._group_actions:
        assert a.option_strings[0] == "--" + a.dest.replace("_", "-") and a.help
    # the release's spelling of the label dropout (infra/flags.py)
    assert train.parse_args(["--cfg-prob", "0.2"]).class_dropout_prob == 0.2
    # each loss flag sets its field
    defaults = train.parse_args([])
    for a in group._group_actions:
        now = getattr(defaults, a.dest)
        if isinstance(a, argparse.BooleanOptionalAction):
            argv, want = [f"--{'no-' if now else ''}{a.dest.replace('_', '-')}"], not now
        elif a.choices:
            want = next(c for c in a.choices if c != now and c != "cos")
            argv = [a.option_strings[0], want]
        elif a.nargs == "+":
            argv, want = [a.option_strings[0], "0.3"], [0.3]
        elif now is None:
            # --align-until: a step, off by default
            argv, want = [a.option_strings[0], "7"], 7
        else:
            want = now + 1 if isinstance(now, int) else now / 2
            argv = [a.option_strings[0], str(want)]
        assert getattr(train.parse_args(argv), a.dest) == want, argv
    # every preset key is a flag; the loss settings of a preset are LossConfig fields
    dests = {a.dest for a in parser._actions}
    for name, row in presets.PRESETS.items():
        assert set(row) <= dests, name
    assert set(presets.RELEASE) <= dests
    assert {k for k in presets.RELEASE if k in fields} | {"align_target"} <= fields


def test_every_preset_resolves_as_before(capsys):
    """--print-config of every preset, key for key, and whether its teacher runs on the token groups, as
    recorded in tests/data/presets.json (written from the code before the presets became rows over the
    release recipe, and checked against it since)."""
    import presets

    with open(os.path.join(os.path.dirname(__file__), "data", "presets.json")) as f:
        recorded = json.load(f)
    assert sorted(presets.PRESETS) == sorted(recorded["print_config"])
    for name, want in recorded["print_config"].items():
        train.main(["--preset", name, "--print-config"])
        assert json.loads(capsys.readouterr().out) == want, name
        assert teacher_mask_of(train.parse_args(["--preset", name])) == recorded["teacher_on_groups"][name]


def test_defaults_are_the_release_recipe():
    """train.py alone is the release's train.sh (SRA + DTS + AS on SiT-B/2), bf16 instead of its fp16."""
    from test_aliases import RELEASE_TRAIN

    plain, release = train.parse_args([]), train.parse_args(RELEASE_TRAIN)
    differ = {k for k in vars(plain)
              if getattr(plain, k) != getattr(release, k) and not k.startswith("alias__")}
    assert differ == {"mixed_precision", "epochs", "checkpoint_epochs", "resolution", "output_dir",
                      "exp_name", "data_dir"}
    assert teacher_mask_of(plain) and plain.align_target == "ema" and plain.mixed_precision == "bf16"


@pytest.mark.parametrize("argv,want", [
    (["--use-alignment-loss"], "ema"),
    (["--preset", "sit-b2", "--use-alignment-loss"], "ema"),
    (["--preset", "sit-b2", "--use-alignment-loss", "--align-target", "sra2"], "sra2"),
    (["--preset", "repa-b2", "--use-alignment-loss"], "repa"),
    (["--no-use-alignment-loss"], "none"),
    (["--align-target", "none"], "none"),
])
def test_use_alignment_loss_is_an_alias_of_align_target(argv, want):
    notes = []
    assert train.parse_args(argv, notes).align_target == want
    assert any("use-alignment-loss ->" in n for n in notes) == any("use-alignment-loss" in a for a in argv)


@pytest.mark.parametrize("argv,message", [
    (["--teacher-mask", "--teacher-t", "self_flow"], "--teacher-mask: --teacher-t self_flow"),
    (["--no-teacher-mask"], "--no-teacher-mask: --teacher-t sra with token groups"),
    (["--preset", "sra-b2", "--teacher-mask"], "--teacher-mask: it needs token groups"),
    (["--teacher-mask", "--align-target", "sra2"], "--align-target sra2 has no EMA teacher"),
    (["--no-use-alignment-loss", "--align-target", "ema"], "disagree"),
])
def test_teacher_mask_and_alignment_contradictions_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--print-config"])
    said = str(e.value.code) if e.value.code != 2 else capsys.readouterr().err
    assert message in said and len(said.strip().splitlines()) == 1, said


def test_teacher_mask_agreeing_is_accepted_with_a_note():
    notes = []
    a = train.parse_args(["--teacher-mask"], notes)
    assert teacher_mask_of(a) and any(n.startswith("--teacher-mask: agrees") for n in notes)
    notes = []
    a = train.parse_args(["--preset", "self-flow-b2", "--no-teacher-mask"], notes)
    assert not teacher_mask_of(a) and any(n.startswith("--no-teacher-mask: agrees") for n in notes)
    assert not hasattr(a, "teacher_mask") and not hasattr(a, "use_alignment_loss")


def test_old_saved_args_are_read_in_todays_names():
    """Run folders written before --align-target none saved use_alignment_loss and teacher_mask."""
    from infra import flags

    old_sit = dict(use_alignment_loss=False, align_target="ema", teacher_mask=False, mask_ratio=[0.0])
    assert flags.saved_train_args(old_sit) == dict(align_target="none", mask_ratio=[0.0])
    old_ours = dict(use_alignment_loss=True, align_target="ema", teacher_mask=True, mask_ratio=[0.25])
    assert flags.saved_train_args(old_ours) == dict(align_target="ema", mask_ratio=[0.25])
    now = vars(train.parse_args(["--preset", "sit-b2"]))
    from infra import runlog
    assert runlog.flag_changes(flags.saved_train_args(dict(old_sit, mask_ratio=[0.0])), now) == ""


def test_resume_from_a_run_saved_with_the_old_flags(tmp_path):
    """A checkpoint whose args hold use_alignment_loss / teacher_mask resumes, and the log does not report
    them as changed flags."""
    path = run(tmp_path, "old", "--max-train-steps", "2", "--checkpoint-steps", "2")
    ckpt = load(f"{path}/checkpoints/0000002.pt")
    ckpt["args"] = dict(ckpt["args"], use_alignment_loss=True, teacher_mask=True)
    torch.save(ckpt, f"{path}/checkpoints/0000002.pt")
    run(tmp_path, "old", "--max-train-steps", "3", "--checkpoint-steps", "3", "--resume", "auto")
    log = open(f"{path}/log.txt").read()
    assert "resumed from" in log and "flags that differ" in log and "align_target" not in log
