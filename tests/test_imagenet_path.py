"""The ImageNet path end to end on the CPU, as a new user runs it: JPEG class folders -> preprocessing with a
stand-in SD-VAE -> training on latent shards with 2 data-loader workers per process, under accelerate launch
and torchrun, with 1 and 2 processes -> SIGTERM to the whole process group (as SLURM and the launchers send
it, so the workers get it too) -> --resume auto, bitwise the run that never stopped -> sample_ddp under
torchrun -> a reference batch from the image folder -> the evaluator."""
import json
import os
import random
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from fixtures import tiny
from fixtures.standin_graph import build_standin_graph
from preprocessing.encode import main as encode_main
from test_preemption import assert_same_rows, rows, wait_for_row
from test_train import assert_same_state, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 4 classes x 8 images at 64 px: 8 x 8 latents, 16 tokens of SiT-T/2; 32 items: 4 steps per epoch at batch 8
STEPS = 16
TRAIN = ["--preset", "digits", "--model", "SiT-T/2", "--batch-size", "8", "--num-workers", "2",
         "--log-every", "1", "--max-train-steps", str(STEPS), "--checkpoint-steps", str(STEPS),
         "--sample-steps", "0", "--checkpoint-minutes", "0"]
# several processes on the CPU: --multi_gpu (with --cpu, accelerate refuses; without either, one process)
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision",
              "no", "--dynamo_backend", "no"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """The image folder (with one truncated JPEG), the stand-in SD-VAE and the latent shards encoded from
    them."""
    d = tmp_path_factory.mktemp("imagenet")
    tiny.image_folder(str(d / "train"), classes=4, per_class=8)
    good = open(d / "train" / "n00000001" / "img_0.JPEG", "rb").read()
    with open(d / "train" / "n00000001" / "img_9.JPEG", "wb") as f:
        f.write(good[: len(good) // 2])
    tiny.tiny_vae(str(d / "vae"))
    rc = encode_main([str(d / "train"), str(d / "latents"), "--resolution", "64", "--vae", str(d / "vae"),
                      "--batch-size", "8", "--workers", "1", "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert json.load(open(d / "latents" / "dataset.json"))["num_samples"] == 32
    assert open(d / "latents" / "skipped.txt").read().startswith("n00000001/img_9.JPEG\ttruncated")
    return d


def launch(cmd, run_dir):
    """A launcher in a session of its own: os.killpg reaches it, its training processes and their workers."""
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def train_cmd(launcher, processes, imagenet, out, name, *extra):
    if launcher == "accelerate":
        head = [*ACCELERATE, "--num_processes", str(processes), "--main_process_port", free_port(),
                "--multi_gpu" if processes > 1 else "--cpu"]
    else:
        head = [*TORCHRUN, "--nproc_per_node", str(processes)]
    return [*head, "train.py", *TRAIN, "--data-dir", str(imagenet / "latents"), "--output-dir", str(out),
            "--exp-name", name, *extra]


def finish(proc, check=True):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 or not check, err[-3000:]
    return out + err


@pytest.fixture(scope="module")
def straight(imagenet, tmp_path_factory):
    """The runs that never stopped, one per number of processes (torchrun)."""
    out = tmp_path_factory.mktemp("straight")
    for n in (1, 2):
        finish(launch(train_cmd("torchrun", n, imagenet, out, f"p{n}"), out / f"p{n}"))
    return out


@pytest.mark.parametrize("launcher,processes", [("accelerate", 1), ("torchrun", 1), ("accelerate", 2),
                                                ("torchrun", 2)])
def test_sigterm_to_the_process_group_with_workers_then_resume_is_bitwise(imagenet, straight, tmp_path,
                                                                          launcher, processes):
    run_dir = tmp_path / "stopped"
    proc = launch(train_cmd(launcher, processes, imagenet, tmp_path, "stopped"), run_dir)
    wait_for_row(run_dir, random.randint(2, STEPS // 2), proc)
    # SLURM / the launchers signal every process of the job: the trainers and their DataLoader workers
    os.killpg(proc.pid, signal.SIGTERM)
    # the launcher itself dies of the signal; its training processes stop cleanly
    log = finish(proc, check=False)
    assert log.count("stopping on SIGTERM after step") == 1 and "DataLoader worker" not in log, log[-3000:]
    latest = load(run_dir / "checkpoints" / "latest.pt")
    assert latest["steps"] < STEPS and len(latest["rng"]) == processes, log[-3000:]
    assert max(r["step"] for r in rows(run_dir)) == latest["steps"]
    finish(launch(train_cmd(launcher, processes, imagenet, tmp_path, "stopped", "--resume", "auto"), run_dir))
    want = straight / f"p{processes}"
    assert_same_state(load(want / "checkpoints" / f"{STEPS:07d}.pt"),
                      load(run_dir / "checkpoints" / f"{STEPS:07d}.pt"))
    assert_same_rows(rows(want), rows(run_dir))


def test_sample_reference_and_evaluate_the_trained_model(imagenet, straight, tmp_path):
    """sample_ddp under torchrun (2 processes, the stand-in VAE) -> make_reference from the image folder (the
    truncated JPEG skipped and listed) -> evaluator.py with a stand-in Inception graph."""
    ckpt = straight / "p2" / "checkpoints" / f"{STEPS:07d}.pt"
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "sample_ddp.py", "--ckpt", str(ckpt), "--vae",
           str(imagenet / "vae"), "--num-fid-samples", "12", "--num-steps", "4", "--per-proc-batch-size", "4",
           "--sample-dir", str(tmp_path / "samples")]
    finish(launch(cmd, tmp_path))
    (folder,) = os.listdir(tmp_path / "samples")
    samples = tmp_path / "samples" / folder / "samples_12.npz"
    with np.load(samples) as z:
        assert z["arr_0"].shape == (12, 64, 64, 3) and z["arr_0"].dtype == np.uint8
    graph = build_standin_graph(str(tmp_path / "standin.pb"))
    ref = tmp_path / "ref.npz"
    res = subprocess.run([sys.executable, "-m", "evaluations.make_reference", str(ref), "--images",
                          str(imagenet / "train"), "--resolution", "64", "--inception", graph,
                          "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipped" in res.stderr and "img_9.JPEG" in res.stderr
    with np.load(ref) as z:
        assert z["arr_0"].shape == (32, 64, 64, 3) and z["labels"].shape == (32,)
    res = subprocess.run([sys.executable, "evaluations/evaluator.py", str(ref), str(samples), "--inception",
                          graph, "--device", "cpu", "--out", str(tmp_path / "adm.json"), "--no-ref-cache",
                          "--no-progress"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.load(open(tmp_path / "adm.json"))
    assert all(np.isfinite(record[k]) for k in ("fid", "sfid", "inception_score", "precision", "recall"))
