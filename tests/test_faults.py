"""Faults during training that must lose nothing: a killed launcher whose pipe closes, SIGHUP, a stop signal
during a preview or the FID proxy, two trainings in one run folder, a damaged checkpoint, a damaged
metrics.jsonl, a checkpoint write on a full disk."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from test_train import TINY, load, run

import samplers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(cmd, run_dir, steps=2):
    """Popen with stdout/stderr as pipes, once metrics.jsonl shows `steps` steps."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    path = os.path.join(run_dir, "metrics.jsonl")
    while time.time() - t0 < 300:
        lines = [x for x in open(path) if x.endswith("\n")] if os.path.exists(path) else []
        if len(lines) >= steps:
            return proc
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("no progress")


def train_cmd(tmp_path, name, *extra):
    return ["train.py", *TINY, "--log-every", "1", "--max-train-steps", "100000", "--checkpoint-steps",
            "100000", "--output-dir", str(tmp_path), "--exp-name", name, *extra]


def assert_stopped_with_a_checkpoint(run_dir, signal_name):
    """latest.pt holds the last logged step, and the log says which signal stopped the run."""
    latest = load(os.path.join(run_dir, "checkpoints", "latest.pt"))
    steps = [json.loads(x)["step"] for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert latest["steps"] >= 2 and latest["steps"] == max(steps)
    log = open(os.path.join(run_dir, "log.txt")).read()
    assert f"stopping on {signal_name} after step {latest['steps']}" in log


def test_sigkill_to_accelerate_launch_whose_pipe_closes_still_checkpoints(tmp_path):
    """The launcher's death is a SIGTERM to its child, whose stdout and stderr are now pipes nobody reads:
    the writes that fail are dropped, the child checkpoints at the step in flight and exits 0."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           *train_cmd(tmp_path, "acc")]
    proc = start(cmd, tmp_path / "acc")
    (child,) = psutil.Process(proc.pid).children()
    proc.kill()
    proc.wait()
    # the reader goes too: the child's next write meets a closed pipe
    proc.stdout.close()
    proc.stderr.close()
    # not our child: its exit status is unknown, the checkpoint and the log say how it ended
    child.wait(timeout=120)
    assert_stopped_with_a_checkpoint(tmp_path / "acc", "SIGTERM")


def test_sighup_with_the_terminal_gone_stops_with_a_checkpoint(tmp_path):
    proc = start([sys.executable, *train_cmd(tmp_path, "hup")], tmp_path / "hup")
    proc.stdout.close()
    proc.stderr.close()
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=120) == 0
    assert_stopped_with_a_checkpoint(tmp_path / "hup", "SIGHUP")


def sigterm_at_sampler_step(monkeypatch, n: int) -> list:
    """Send SIGTERM to this process during the n-th sampler step (samplers.guided_velocity call). -> the list
    that grows by one per step taken."""
    real, calls = samplers.guided_velocity, []

    def velocity(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(samplers, "guided_velocity", velocity)
    return calls


def test_a_stop_signal_during_a_preview_abandons_it_within_a_sampler_step(tmp_path, monkeypatch):
    """SIGTERM at the 3rd of 500 sampler steps of the preview at step 2: the preview ends there, and the
    checkpoint comes after the next step."""
    calls = sigterm_at_sampler_step(monkeypatch, 3)
    d = run(tmp_path, "preview", "--sample-steps", "2", "--preview-num-steps", "500",
            "--max-train-steps", "8")
    assert len(calls) == 3
    assert load(f"{d}/checkpoints/latest.pt")["steps"] == 3
    assert not os.path.exists(f"{d}/samples/0000002.png")
    assert "preview at step 2 abandoned: a stop signal came during it" in open(f"{d}/log.txt").read()


# ---- one training per run folder ---------------------------------------------------------------------------

def test_a_second_training_into_a_running_run_folder_is_refused(tmp_path):
    """Two identical starts, then a second --resume auto job: refused in one line naming the holder; the
    first run's metrics.jsonl has one row per step, in order."""
    first = start([sys.executable, *train_cmd(tmp_path, "busy")], tmp_path / "busy")
    for extra in ([], ["--resume", "auto"]):
        second = subprocess.run([sys.executable, *train_cmd(tmp_path, "busy", *extra)], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        message = second.stderr.strip().splitlines()[-1]
        assert "is in use by another training" in message and f'"pid": {first.pid}' in message
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 0
    steps = [json.loads(x)["step"] for x in open(tmp_path / "busy" / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))
    # released at the end: the next start goes on
    run(tmp_path, "busy", "--resume", "auto", "--max-train-steps", str(steps[-1] + 1))


def test_a_lock_left_by_a_killed_training_does_not_block_the_next_start(tmp_path):
    proc = start([sys.executable, *train_cmd(tmp_path, "killed")], tmp_path / "killed")
    proc.kill()
    proc.wait()
    assert json.loads(open(tmp_path / "killed" / ".lock").read())["pid"] == proc.pid
    run(tmp_path, "killed", "--max-train-steps", "2")


@pytest.mark.parametrize("holder,refused", [("alive", True), ("pid reused", False), ("rebooted", False),
                                            ("dead", False), ("other host", True)])
def test_without_file_locks_the_recorded_holder_is_checked(tmp_path, monkeypatch, holder, refused):
    """A file system that cannot lock (errno ENOLCK): the holder recorded in RUN/.lock counts only while
    the same process (host, boot id, PID, start time) runs."""
    import errno
    import fcntl

    from infra import runlog

    def no_locks(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"host": runlog.socket.gethostname(), "boot_id": runlog._boot_id(), "pid": sleeper.pid,
                "start_time": runlog._start_time(sleeper.pid)}
        info.update({"alive": {}, "pid reused": {"start_time": "1"}, "rebooted": {"boot_id": "x"},
                     "dead": {"pid": 2 ** 22 + 1}, "other host": {"host": "elsewhere"}}[holder])
        os.makedirs(tmp_path / "r")
        (tmp_path / "r" / ".lock").write_text(json.dumps(info))
        message = runlog.lock_run_folder(str(tmp_path / "r"))
        assert bool(message) == refused, message
        if not refused:
            assert json.loads((tmp_path / "r" / ".lock").read_text())["pid"] == os.getpid()
    finally:
        runlog.release_run_folders()
        sleeper.kill()


# ---- damaged checkpoints ------------------------------------------------------------------------------

def test_one_flipped_bit_in_a_checkpoint_is_refused_and_resume_falls_back(tmp_path):
    """A bit flipped inside a tensor record of latest.pt: reading it names the file and the record, and
    --resume auto takes the older step checkpoint instead, ending equal to the run that never stopped."""
    from models.checkpoint import CheckpointError, read_training_state
    from test_train import assert_same_state

    straight = run(tmp_path, "straight", "--max-train-steps", "6", "--checkpoint-steps", "3")
    d = run(tmp_path, "flip", "--max-train-steps", "6", "--checkpoint-steps", "3")
    # the 6-step file plays the damaged newest one
    path = f"{d}/checkpoints/0000006.pt"
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(data)
    with pytest.raises(CheckpointError, match=r"0000006.pt: cannot read this checkpoint: damaged: the "
                                              r"checksum of its record .* does not match"):
        read_training_state(path)
    run(tmp_path, "flip", "--max-train-steps", "6", "--checkpoint-steps", "3", "--resume", "auto")
    assert "skipped 1 unreadable newer checkpoint(s)" in open(f"{d}/log.txt").read()
    assert_same_state(load(f"{straight}/checkpoints/0000006.pt"), load(f"{d}/checkpoints/0000006.pt"))


def test_a_pickle_that_would_run_code_is_refused_naming_its_type(tmp_path):
    from models.checkpoint import CheckpointError, read_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    import torch
    torch.save({"model": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: refused to unpickle an object of type posix.system"):
        read_checkpoint(str(tmp_path / "evil.pt"))


@pytest.mark.parametrize("bad", [b"\xff\xfe not utf-8\n", b"5\n", b'"a string"\n', b'{"step": "x"}\n',
                                 b'{"step": 3, "loss": 1.0\n'])
def test_a_bad_line_inside_metrics_jsonl_is_skipped_and_reported_on_resume(tmp_path, bad):
    d = run(tmp_path, "m", "--max-train-steps", "4", "--checkpoint-steps", "2")
    lines = open(f"{d}/metrics.jsonl", "rb").readlines()
    open(f"{d}/metrics.jsonl", "wb").write(b"".join(lines[:1] + [bad] + lines[1:2]))
    run(tmp_path, "m", "--max-train-steps", "6", "--checkpoint-steps", "2", "--resume", "auto")
    steps = [json.loads(x)["step"] for x in open(f"{d}/metrics.jsonl")]
    assert steps == [2, 4, 6]
    assert "line(s) [2] are not rows of this log" in open(f"{d}/log.txt").read()


# ---- a full disk -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["checked before", "torch.save fails"])
def test_a_checkpoint_on_a_full_disk_is_one_line_and_keeps_the_last_good_one(tmp_path, monkeypatch, how):
    """The free space is checked against the checkpoint's size before writing; a write that fails anyway
    (torch's '[enforce fail ...] file write failed') is said the same way; no temporary is left."""
    import torch

    from infra import fileio
    d = run(tmp_path, "full", "--max-train-steps", "2", "--checkpoint-steps", "2")
    if how == "checked before":
        monkeypatch.setattr(fileio, "free_bytes", lambda path: 4096)
    else:
        monkeypatch.setattr(fileio, "free_bytes", lambda path: 4096 if "checkpoints" in path else 2 ** 40)
        monkeypatch.setattr(fileio, "ensure_free_space", lambda path, nbytes: None)

        def failing_save(obj, f, *a, **kw):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                               "writing file data/3: file write failed")

        monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(SystemExit) as e:
        run(tmp_path, "full", "--max-train-steps", "4", "--checkpoint-steps", "2", "--resume", "auto")
    message = str(e.value.code)
    assert "\n" not in message and "0000004.pt: no space left on the device" in message
    assert "needed" in message and "free" in message and "0000002.pt" in message
    assert sorted(os.listdir(f"{d}/checkpoints")) == ["0000002.pt"]
