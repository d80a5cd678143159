"""Runs that survive the cluster: a signal stops the run with a checkpoint at the step in flight, the rolling
checkpoint, kills during writes, non-finite checkpoints, resumes from an older step, flags that change on
resume, the SLURM template, --grad-checkpointing, the trackers."""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from copy import deepcopy

import psutil
import pytest
import torch
from test_train import TINY, assert_same_state, load, run

import loss as loss_module
import samplers
from infra import runlog, tracking
from models import SiT_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_KEYS = ("loss", "loss_gen", "loss_align", "grad_norm")


def rows(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def assert_same_rows(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in LOSS_KEYS:
            assert (k in ra) == (k in rb) and ra.get(k) == rb.get(k), f"step {ra['step']}: {k} differs"


def signal_at_step(monkeypatch, step, sig=signal.SIGTERM):
    """Send `sig` to this process during the loss of optimizer step `step` (one loss call per step)."""
    real, calls = loss_module.TrainingLoss.__call__, {"n": 0}

    def call(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), sig)
        return real(self, *a, **kw)

    monkeypatch.setattr(loss_module.TrainingLoss, "__call__", call)


# 5 is not a multiple of 4
FLAGS = ["--max-train-steps", "10", "--checkpoint-steps", "5", "--log-every", "4"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run that was never stopped (10 steps)."""
    return run(tmp_path_factory.mktemp("straight"), "straight", *FLAGS)


def test_sigterm_at_a_random_step_then_resume_auto_is_bitwise_the_unstopped_run(tmp_path, monkeypatch,
                                                                                 straight):
    stop_at = random.randint(1, 9)
    signal_at_step(monkeypatch, stop_at)
    stopped = run(tmp_path, "stopped", *FLAGS)                          # returns: exit status 0
    latest = load(f"{stopped}/checkpoints/latest.pt")
    assert latest["steps"] == stop_at, f"signal during step {stop_at}, checkpoint at {latest['steps']}"
    assert not os.path.exists(f"{stopped}/checkpoints/0000010.pt")
    monkeypatch.undo()
    run(tmp_path, "stopped", *FLAGS, "--resume", "auto")
    assert_same_state(load(f"{straight}/checkpoints/0000010.pt"), load(f"{stopped}/checkpoints/0000010.pt"))
    assert_same_rows(rows(straight), rows(stopped))                     # incl. the first row after the resume
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL           # handlers restored after the run


def test_signal_during_a_checkpoint_write(tmp_path, monkeypatch):
    """A second (and third) signal while a checkpoint is written: the write completes, nothing is lost."""
    real, calls = torch.save, {"n": 0}

    def save(obj, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:                                             # writing 0000004.pt
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    d = run(tmp_path, "w", "--max-train-steps", "8", "--checkpoint-steps", "2")
    assert sorted(os.listdir(f"{d}/checkpoints")) == ["0000002.pt", "0000004.pt", "latest.pt"]
    assert load(f"{d}/checkpoints/0000004.pt")["steps"] == 4
    assert load(f"{d}/checkpoints/latest.pt")["steps"] == 5
    # an interrupt that is not a stop signal (Ctrl-C) in the middle of a write: the previous file stays
    calls["n"] = 0
    monkeypatch.setattr(torch, "save", lambda obj, path, *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "w", "--max-train-steps", "8", "--checkpoint-steps", "2", "--resume", "auto")
    assert sorted(os.listdir(f"{d}/checkpoints")) == ["0000002.pt", "0000004.pt", "latest.pt"]
    assert load(f"{d}/checkpoints/latest.pt")["steps"] == 5


KILL_DURING_WRITE = """
import os, signal, sys, torch
real, n = torch.save, [0]
def save(obj, path, *a, **kw):
    n[0] += 1
    if n[0] == 2:                                  # half of 0000004.pt, then SIGKILL
        with open(path, "wb") as f:
            f.write(b"PK" + b"x" * 1000)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, path, *a, **kw)
torch.save = save
import train
train.main(sys.argv[1:])
"""


def test_kill_during_a_write_keeps_the_previous_checkpoint_and_the_next_start_cleans_up(tmp_path):
    args = [*TINY, "--output-dir", str(tmp_path), "--exp-name", "k", "--max-train-steps", "6",
            "--checkpoint-steps", "2"]
    res = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    folder = tmp_path / "k" / "checkpoints"
    temps = [n for n in os.listdir(folder) if n.startswith(".0000004.tmp-")]
    assert len(temps) == 1 and load(folder / "0000002.pt")["steps"] == 2
    run(tmp_path, "k", "--max-train-steps", "6", "--checkpoint-steps", "2", "--resume", "auto")
    assert sorted(os.listdir(folder)) == ["0000002.pt", "0000004.pt", "0000006.pt"]   # the temporary is gone
    log = open(tmp_path / "k" / "log.txt").read()
    assert f"removed {folder / temps[0]}" in log and "resumed from" in log and "0000002.pt at step 2" in log


def test_rolling_checkpoint_is_replaced_never_duplicated(tmp_path, monkeypatch):
    real, seen = torch.save, []

    def save(obj, path, *a, **kw):
        seen.append((obj["steps"], os.path.basename(path)[:-3].split(".tmp-")[0].lstrip("."),
                     sorted(n for n in os.listdir(os.path.dirname(path)) if not n.startswith("."))))
        return real(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    d = run(tmp_path, "roll", "--max-train-steps", "7", "--checkpoint-steps", "3",
            "--checkpoint-minutes", "1e-9", "--keep-last", "1")
    assert [(s, name) for s, name, _ in seen] == [(1, "latest"), (2, "latest"), (3, "0000003"), (4, "latest"),
                                                  (5, "latest"), (6, "0000006"), (7, "0000007")]
    assert all(sum(n.startswith("latest") for n in listing) <= 1 for _, _, listing in seen)
    # --keep-last 1: step files only
    assert sorted(os.listdir(f"{d}/checkpoints")) == ["0000007.pt", "latest.pt"]
    assert load(f"{d}/checkpoints/latest.pt")["steps"] == 5
    # as if a hard kill had come after step 5: --resume auto takes the rolling file
    os.remove(f"{d}/checkpoints/0000007.pt")
    run(tmp_path, "roll", "--max-train-steps", "9", "--checkpoint-steps", "3", "--checkpoint-minutes", "0",
        "--resume", "auto")
    assert f"resumed from {d}/checkpoints/latest.pt at step 5" in open(f"{d}/log.txt").read()
    assert load(f"{d}/checkpoints/0000009.pt")["steps"] == 9


def poison_from(monkeypatch, first_bad_call):
    real, calls = loss_module.TrainingLoss.__call__, {"n": 0}

    def poisoned(self, *a, **kw):
        calls["n"] += 1
        out, logs = real(self, *a, **kw)
        return (out * float("nan"), logs) if calls["n"] >= first_bad_call else (out, logs)

    monkeypatch.setattr(loss_module.TrainingLoss, "__call__", poisoned)


def test_a_non_finite_state_is_never_checkpointed(tmp_path, monkeypatch):
    """The case measured in the issue: --log-every 4 --checkpoint-steps 2 --keep-last 1, weights non-finite
    after step 5: step 6 is refused, 0000004.pt stays the only checkpoint, and the message names it."""
    poison_from(monkeypatch, 5)
    with pytest.raises(SystemExit, match=r"non-finite values .* step 6: no checkpoint written.*0000004\.pt"):
        run(tmp_path, "nan", "--max-train-steps", "8", "--checkpoint-steps", "2", "--log-every", "4",
            "--keep-last", "1")
    assert sorted(os.listdir(tmp_path / "nan" / "checkpoints")) == ["0000004.pt"]
    # the rolling file: written at steps 1-2, refused at step 3, the message names it
    monkeypatch.undo()
    poison_from(monkeypatch, 3)
    with pytest.raises(SystemExit, match=r"step 3: no checkpoint written.*latest\.pt"):
        run(tmp_path, "nan2", "--max-train-steps", "8", "--checkpoint-steps", "4", "--log-every", "4",
            "--checkpoint-minutes", "1e-9")
    assert load(tmp_path / "nan2" / "checkpoints" / "latest.pt")["steps"] == 2
    # a non-finite loss at a log step keeps today's behaviour, and names the rolling file as the last good one
    monkeypatch.undo()
    poison_from(monkeypatch, 4)
    with pytest.raises(SystemExit, match=r"non-finite loss at step 4.*latest\.pt"):
        run(tmp_path, "nan3", "--max-train-steps", "8", "--checkpoint-steps", "8", "--log-every", "2",
            "--checkpoint-minutes", "1e-9")
    assert load(tmp_path / "nan3" / "checkpoints" / "latest.pt")["steps"] == 3


def test_resume_from_an_older_checkpoint_sets_the_abandoned_branch_aside(tmp_path):
    d = run(tmp_path, "b", "--max-train-steps", "6", "--checkpoint-steps", "2")
    with open(f"{d}/metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 0.1')                              # a torn last line (killed mid-write)
    run(tmp_path, "b", "--max-train-steps", "4", "--checkpoint-steps", "2",
        "--resume", f"{d}/checkpoints/0000002.pt")
    assert sorted(os.listdir(f"{d}/checkpoints")) == ["0000002.pt", "0000004.pt"]
    assert [r["step"] for r in rows(d)] == [2, 4]
    (aside,) = os.listdir(f"{d}/abandoned")
    assert aside.endswith("-after-0000002")
    assert sorted(os.listdir(f"{d}/abandoned/{aside}/checkpoints")) == ["0000004.pt", "0000006.pt"]
    assert [r["step"] for r in rows(f"{d}/abandoned/{aside}")] == [4, 6]
    assert load(f"{d}/abandoned/{aside}/checkpoints/0000006.pt")["steps"] == 6


def test_resume_auto_falls_back_to_the_newest_readable_checkpoint(tmp_path):
    d = run(tmp_path, "f", "--max-train-steps", "4", "--checkpoint-steps", "2")
    with open(f"{d}/checkpoints/0000004.pt", "r+b") as f:              # damaged on disk
        f.truncate(100)
    run(tmp_path, "f", "--max-train-steps", "6", "--checkpoint-steps", "2", "--resume", "auto")
    log = open(f"{d}/log.txt").read()
    assert "skipped 1 unreadable newer checkpoint(s)" in log and "0000004.pt" in log
    assert "resumed from" in log and f"{d}/checkpoints/0000002.pt at step 2" in log
    assert load(f"{d}/checkpoints/0000006.pt")["steps"] == 6
    # the damaged file is set aside, not deleted
    assert os.listdir(f"{d}/abandoned")


def test_changed_flags_apply_on_resume(tmp_path):
    d = run(tmp_path, "lr", "--max-train-steps", "2", "--checkpoint-steps", "2", "--learning-rate", "1e-3")
    run(tmp_path, "lr", "--max-train-steps", "4", "--checkpoint-steps", "2", "--learning-rate", "5e-4",
        "--max-grad-norm", "0.5", "--resume", "auto")
    ckpt = load(f"{d}/checkpoints/0000004.pt")
    assert [g["lr"] for g in ckpt["opt"]["param_groups"]] == [5e-4]
    assert [r["lr"] for r in rows(d)] == [1e-3, 5e-4]
    log = open(f"{d}/log.txt").read()
    assert "learning_rate 0.001 -> 0.0005" in log and "max_grad_norm 1.0 -> 0.5" in log


def wait_for_row(run_dir, step, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        path = os.path.join(run_dir, "metrics.jsonl")
        complete = [x for x in open(path) if x.endswith("\n")] if os.path.exists(path) else []
        if any(json.loads(x)["step"] >= step for x in complete):
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("no progress")


def launch(cmd, **kw):
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def test_sigterm_to_accelerate_launch_stops_the_training_process(tmp_path):
    """The issue's orphan: SIGTERM to the `accelerate launch` parent must stop its training child too."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py", *TINY,
           "--log-every", "1", "--max-train-steps", "100000", "--checkpoint-steps", "100000",
           "--output-dir", str(tmp_path), "--exp-name", "acc"]
    proc = launch(cmd)
    wait_for_row(tmp_path / "acc", 2, proc)
    (child,) = psutil.Process(proc.pid).children()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    child.wait(timeout=120)                                              # not an orphan: it ends
    latest = load(tmp_path / "acc" / "checkpoints" / "latest.pt")
    assert latest["steps"] >= 2 and latest["steps"] == max(r["step"] for r in rows(tmp_path / "acc"))


def test_two_processes_stop_together_and_resume_exactly(tmp_path):
    """torchrun, 2 CPU processes (gloo): SIGTERM to torchrun at a random step -> both ranks stop at the same
    step with one checkpoint -> --resume auto ends bitwise equal to the run that never stopped."""
    def cmd(name, *extra):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py", *TINY,
                "--log-every", "1", "--max-train-steps", "30", "--checkpoint-steps", "30",
                "--output-dir", str(tmp_path), "--exp-name", name, *extra]
    straight = launch(cmd("straight"))
    out = straight.communicate(timeout=600)
    assert straight.returncode == 0, out[1][-3000:]
    proc = launch(cmd("stopped"))
    wait_for_row(tmp_path / "stopped", random.randint(2, 12), proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)
    latest = load(tmp_path / "stopped" / "checkpoints" / "latest.pt")
    assert latest["steps"] < 30 and len(latest["rng"]) == 2, out[1][-3000:]
    assert max(r["step"] for r in rows(tmp_path / "stopped")) == latest["steps"]
    resumed = launch(cmd("stopped", "--resume", "auto"))
    out = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[1][-3000:]
    a, b = (load(tmp_path / n / "checkpoints" / "0000030.pt") for n in ("straight", "stopped"))
    assert_same_state(a, b)
    assert_same_rows(rows(tmp_path / "straight"), rows(tmp_path / "stopped"))


def test_grad_checkpointing_gives_the_plain_gradients_and_saves_less():
    """CPU fp32, the paper's step (SRA + DTS + AS, EMA teacher): the same loss and bitwise the same gradients
    with every block recomputed in backward; fewer tensors kept for backward; the no_grad teacher is
    unaffected."""
    torch.manual_seed(0)
    model = SiT_models["SiT-T/2"](input_size=8, in_channels=4, num_classes=10, align_head="ap_head")
    # a non-trivial network (adaLN-Zero is 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ema = deepcopy(model).requires_grad_(False)
    cfg = loss_module.LossConfig(align_target="ema", block_out_s=2, block_out_t=4, mask_ratio=[0.25],
                                 dual_time_scheduling=True, attention_separation=True)
    loss_fn = loss_module.TrainingLoss(cfg, num_tokens=model.num_tokens, grid=model.grid, patch=2,
                                       num_classes=10, ema=ema)
    x, y = torch.randn(4, 4, 8, 8), torch.randint(0, 10, (4,))

    def step(recompute):
        model.grad_checkpointing = ema.grad_checkpointing = recompute
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss, _ = loss_fn(model, x, y)
        loss.mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, saved

    (l0, g0, s0), (l1, g1, s1) = step(False), step(True)
    assert torch.equal(l0, l1) and g0.keys() == g1.keys() and len(g0) > 10
    for n in g0:
        assert torch.equal(g0[n], g1[n]), n
    assert sum(s1) < sum(s0) / 2


def test_tensorboard_gets_the_scalars_the_previews_and_the_ground_truth(tmp_path):
    # tensorboard is a dev requirement only, and its reader loads TensorFlow when that is installed
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -r "
                        "requirements-dev.txt): the event files cannot be read back")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    d = run(tmp_path, "tb", "--max-train-steps", "2", "--checkpoint-steps", "2", "--sample-steps", "2",
            "--preview-num-steps", "2", "--report-to", "tensorboard")
    ea = EventAccumulator(os.path.join(d, "tb"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    tags = ea.Tags()
    assert {"loss", "loss_gen", "loss_align", "grad_norm", "lr", "img_per_s"} <= set(tags["scalars"])
    assert [e.step for e in ea.Scalars("loss")] == [2]
    assert ea.Scalars("loss")[0].value == pytest.approx(rows(d)[0]["loss"], rel=1e-6)
    assert set(tags["images"]) == {"samples/ema", "samples/ground_truth"}
    for tag in tags["images"]:
        (image,) = ea.Images(tag)
        assert image.width >= 512                                        # 8 x 16 px digits, enlarged
    assert [e.step for e in ea.Images("samples/ema")] == [2]
    assert os.path.exists(f"{d}/samples/ground_truth.png")
    assert "preview " in open(f"{d}/log.txt").read() and "SDE 2 steps, CFG" in open(f"{d}/log.txt").read()


def test_wandb_resumes_the_run_folders_run(tmp_path):
    """wandb is not installed here: what accelerate is asked for, at a first start and at a restart."""
    class Accelerator:
        is_main_process = True

        def init_trackers(self, name, config, init_kwargs):
            self.calls = getattr(self, "calls", []) + [init_kwargs]

    acc, args = Accelerator(), argparse.Namespace(report_to="wandb", exp_name="w")
    tracking.init_trackers(acc, args, str(tmp_path))
    tracking.init_trackers(acc, args, str(tmp_path))                     # the requeued job
    first, again = (c["wandb"] for c in acc.calls)
    assert first == again and first["resume"] == "allow" and len(first["id"]) == 16
    assert open(tmp_path / "wandb_id.txt").read().strip() == first["id"]


FAKE_TRAIN = """
import os, signal, sys, time
got = []
for sig in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(sig, lambda *a: got.append(1))
open(os.path.join(sys.argv[1], "train.pid"), "w").write(str(os.getpid()))
while not got:
    time.sleep(0.02)
time.sleep(1)                                          # the checkpoint being written
open(os.path.join(sys.argv[1], "checkpoint"), "w").write("written")
"""


def slurm_job(tmp_path, signal_it):
    """scripts/slurm.sbatch with stand-ins for srun and scontrol; the 'launch script' records its environment,
    runs a training stand-in that catches the stop signals, then an 'evaluation' stage."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\nif [ "$1" = show ]; then printf "node-a\\nnode-b\\n"; '
                                      'else echo "$@" >> "$OUT/scontrol"; fi\n')
    (bin_dir / "srun").write_text('#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\n'
                                  'SLURM_NODEID=0 exec "$@"\n')
    (tmp_path / "train.py").write_text(FAKE_TRAIN)
    chain = tmp_path / "chain.sh"
    chain.write_text(f'#!/usr/bin/env bash\nset -e\necho "$MASTER_ADDR $MASTER_PORT $NNODES $SLURM_NODEID" > '
                     f'"$OUT/env"\n{sys.executable} {tmp_path}/train.py "$OUT"\necho done > "$OUT/eval"\n')
    for f in ("scontrol", "srun", "chain.sh"):
        os.chmod(tmp_path / ("bin/" + f if f != "chain.sh" else f), 0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path),
           "TMPDIR": str(tmp_path), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_NNODES": "2",
           "SLURM_SUBMIT_DIR": ROOT}
    env.pop("MASTER_ADDR", None)
    env.pop("MASTER_PORT", None)
    job = subprocess.Popen(["bash", "scripts/slurm.sbatch", str(chain)], cwd=ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while not (tmp_path / "train.pid").exists():
        assert job.poll() is None and time.time() - t0 < 60, job.communicate()
        time.sleep(0.05)
    # SLURM signals every process of the step
    if signal_it:
        for p in psutil.Process(job.pid).children(recursive=True):
            try:
                p.send_signal(signal.SIGUSR1)
            except psutil.NoSuchProcess:                                # a short-lived helper
                pass
    else:
        os.kill(int((tmp_path / "train.pid").read_text()), signal.SIGUSR1)   # only to end the stand-in
    out, err = job.communicate(timeout=60)
    return job.returncode, out + err


def test_slurm_template_requeues_after_a_clean_stop(tmp_path):
    rc, out = slurm_job(tmp_path, signal_it=True)
    assert rc == 0, out
    assert (tmp_path / "env").read_text().split() == ["node-a", str(20000 + 4242), "2", "0"]
    assert (tmp_path / "checkpoint").read_text() == "written"          # the launchers survived SIGUSR1
    assert (tmp_path / "scontrol").read_text().split() == ["requeue", "4242"]
    assert not (tmp_path / "eval").exists()                            # the script stopped with the training


def test_slurm_template_without_a_signal_runs_the_script_to_its_end(tmp_path):
    rc, out = slurm_job(tmp_path, signal_it=False)
    assert rc == 0, out
    assert (tmp_path / "eval").read_text() == "done\n" and not (tmp_path / "scontrol").exists()


def test_a_signal_before_the_first_step_or_during_the_evaluation_ends_cleanly(tmp_path, monkeypatch):
    real_aside = runlog.set_aside

    def aside_then_signal(*a, **kw):                                    # during the setup, before step 1
        os.kill(os.getpid(), signal.SIGUSR1)
        return real_aside(*a, **kw)

    monkeypatch.setattr(runlog, "set_aside", aside_then_signal)
    d = run(tmp_path, "early", "--max-train-steps", "4", "--checkpoint-steps", "4")
    assert os.listdir(f"{d}/checkpoints") == ["latest.pt"]
    assert load(f"{d}/checkpoints/latest.pt")["steps"] == 1
    monkeypatch.undo()
    real_sample = samplers.sample_images

    def sample_then_signal(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_sample(*a, **kw)

    monkeypatch.setattr(samplers, "sample_images", sample_then_signal)
    run(tmp_path, "early", "--max-train-steps", "4", "--checkpoint-steps", "4", "--resume", "auto",
        "--eval-samples", "20", "--preview-num-steps", "2")
    assert load(f"{d}/checkpoints/0000004.pt")["steps"] == 4 and not os.path.exists(f"{d}/eval_digits.json")
    assert "evaluation stopped on SIGTERM" in open(f"{d}/log.txt").read()
