"""The self-describing run folder: args.json, log.txt, metrics.jsonl, checkpoints/NNNNNNN.pt, loss curves.

    RUN/args.json            every flag, resolved (preset applied)
    RUN/log.txt              human-readable log
    RUN/metrics.jsonl        one JSON line per logged step (appended; a resumed run continues the file)
    RUN/samples/NNNNNNN.png  EMA preview grids
    RUN/checkpoints/NNNNNNN.pt  dict of plain types, written atomically, torch.load(weights_only=True) works
    RUN/checkpoints/latest.pt   the rolling checkpoint (--checkpoint-minutes, and where a signal stops the
                             run): one file, replaced atomically
    RUN/abandoned/STAMP-after-NNNNNNN/  what a resume from step NNNNNNN set aside: the later checkpoints,
                             metrics rows and previews of the branch it abandoned (never deleted)
    RUN/loss.png             loss curves from metrics.jsonl
    RUN/.lock                held by the run's rank 0 while it runs (lock_run_folder): a second training
                             into the same folder is refused

A checkpoint is written only when every tensor of the model, the EMA and the optimizer is finite (checked on
the device at the checkpoint, not per step): a non-finite checkpoint never displaces a good one.
"""
import errno
import fcntl
import json
import logging
import os
import random
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from infra.fileio import atomic_path, atomic_torch_save, atomic_write_text
from models.checkpoint import CheckpointError, read_checkpoint

ROLLING = "latest.pt"


def list_checkpoints(run_dir: str) -> list[str]:
    """checkpoints/NNNNNNN.pt sorted by step."""
    folder = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if re.fullmatch(r"\d{7,}\.pt", n))
    return [os.path.join(folder, n) for n in names]


def prune_checkpoints(run_dir: str, keep_last: int, keep_every: int = 0) -> None:
    """Keep the newest `keep_last` checkpoints (0 = keep all), and every multiple of `keep_every` steps.
    Called right after a checkpoint was written: the newest one (the one --resume auto takes) is always kept.
    """
    if keep_last <= 0:
        return
    for path in list_checkpoints(run_dir)[:-keep_last]:
        step = int(os.path.basename(path)[:-3])
        if not (keep_every and step % keep_every == 0):
            os.remove(path)


# ------------------------------------------------------------------------------------------------------------
# One training per run folder: an exclusive flock on RUN/.lock, which the kernel releases when the holder
# exits in any way (no stale lock after a kill, a reboot or a requeue). Where the file system cannot lock
# (some network mounts), the holder recorded in the file is checked instead: the same machine (host and boot
# id), the same PID and the same process start time, so a reused PID or a reboot is not mistaken for it.
# ------------------------------------------------------------------------------------------------------------

LOCK = ".lock"
_held: dict[str, object] = {}


def _boot_id() -> str:
    try:
        return open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), "" when unknown."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _holder_record() -> dict:
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "start_time": _start_time(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)}


def _recorded_holder_alive(info: dict) -> bool:
    """Without file locks: is the process recorded in the lock file still running (here, since then)?"""
    if info.get("host") != socket.gethostname() or info.get("boot_id") != _boot_id():
        # another machine: unknowable here, so it counts as alive; this machine before a reboot: dead
        return info.get("host") != socket.gethostname()
    pid = info.get("pid")
    return isinstance(pid, int) and _start_time(pid) != "" and _start_time(pid) == info.get("start_time")


def lock_run_folder(run_dir: str) -> str:
    """Take RUN/.lock for this process (released by release_run_folders() or the process's end). -> "" when
    taken, else one line saying who holds it."""
    path = os.path.join(run_dir, LOCK)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        return (f"{run_dir} is in use by another training ({holder or 'holder unknown'}; lock {path}): stop "
                f"it, or train into another --exp-name")
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        f.seek(0)
        try:
            info = json.loads(f.read() or "{}")
        except json.JSONDecodeError:
            info = {}
        if info and _recorded_holder_alive(info):
            f.close()
            return (f"{run_dir} is in use by another training ({json.dumps(info)}; lock {path}, this file "
                    f"system cannot lock files): stop it, or delete {path} if that run is gone")
    f.seek(0)
    f.truncate()
    f.write(json.dumps(_holder_record()) + "\n")
    f.flush()
    _held[run_dir] = f
    return ""


def release_run_folders() -> None:
    """Release the run-folder locks this process holds (the end of train.main)."""
    for f in _held.values():
        f.close()
    _held.clear()


def rolling_path(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints", ROLLING)


def file_step(path: str) -> int | None:
    """The step of a checkpoint: from the name NNNNNNN.pt, else read from the file (memory-mapped); None when
    it cannot be read."""
    name = os.path.basename(path)
    if re.fullmatch(r"\d{7,}\.pt", name):
        return int(name[:-3])
    try:
        return read_checkpoint(path).steps
    except CheckpointError:
        return None


def newest_resumable(run_dir: str, read: Callable[[str], dict],
                     logger: logging.Logger) -> tuple[str | None, dict | None]:
    """--resume auto: the newest of the step checkpoints and the rolling one (by step; a step file wins a tie)
    that `read(path) -> state` accepts. Unreadable newer files are skipped, and the log says which and why."""
    candidates = [(int(os.path.basename(p)[:-3]), 1, p) for p in list_checkpoints(run_dir)]
    rolling = rolling_path(run_dir)
    rolling_state = None
    skipped = []
    if os.path.exists(rolling):
        try:
            rolling_state = read(rolling)
            candidates.append((int(rolling_state["steps"]), 0, rolling))
        except (Exception, SystemExit) as e:
            skipped.append(f"{rolling} ({_reason(e)})")
    for _, _, path in sorted(candidates, reverse=True):
        try:
            state = rolling_state if path == rolling else read(path)
        except (Exception, SystemExit) as e:
            skipped.append(f"{path} ({_reason(e)})")
            continue
        if skipped:
            logger.warning(f"--resume auto: skipped {len(skipped)} unreadable newer checkpoint(s): "
                           f"{'; '.join(skipped)}. Resuming from the newest readable one, {path}")
        return path, state
    if skipped:
        raise SystemExit(f"--resume auto: no readable checkpoint in {os.path.join(run_dir, 'checkpoints')}: "
                         f"{'; '.join(skipped)}")
    return None, None


def _reason(e: BaseException) -> str:
    text = str(e.code if isinstance(e, SystemExit) else e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def last_good_checkpoint(run_dir: str) -> str:
    """The file --resume auto would take, for messages (by step, without reading the step files)."""
    files = [(s, p) for p in list_checkpoints(run_dir) + [rolling_path(run_dir)]
             if os.path.exists(p) and (s := file_step(p)) is not None]
    return max(files)[1] if files else "none (no checkpoint was written yet)"


def set_aside(run_dir: str, step: int, logger: logging.Logger) -> str | None:
    """A run (re)starting at `step` moves what its folder holds beyond that step (checkpoints, the rolling
    file, metrics rows, previews: an abandoned branch) into RUN/abandoned/STAMP-after-NNNNNNN/, and drops a
    torn last line of metrics.jsonl. -> the folder, or None when nothing was beyond."""
    aside = os.path.join(run_dir, "abandoned", f"{time.strftime('%Y%m%d-%H%M%S')}-after-{step:07d}")
    later = [(os.path.join(run_dir, "checkpoints", os.path.basename(p)), os.path.join(aside, "checkpoints"))
             for p in list_checkpoints(run_dir) if int(os.path.basename(p)[:-3]) > step]
    rolling = rolling_path(run_dir)
    if os.path.exists(rolling) and (file_step(rolling) is None or file_step(rolling) > step):
        later.append((rolling, os.path.join(aside, "checkpoints")))
    samples = os.path.join(run_dir, "samples")
    if os.path.isdir(samples):
        previews = [n for n in sorted(os.listdir(samples)) if re.fullmatch(r"\d{7,}\.png", n)]
        later += [(os.path.join(samples, n), os.path.join(aside, "samples")) for n in previews
                  if int(n[:-4]) > step]
    kept, dropped = read_metrics(os.path.join(run_dir, "metrics.jsonl"), logger)
    later_rows = [r for r in kept if r.get("step", 0) > step]
    if not later and not later_rows:
        if dropped:
            write_rows(os.path.join(run_dir, "metrics.jsonl"), kept)
        return None
    os.makedirs(aside, exist_ok=True)
    for src, folder in later:
        os.makedirs(folder, exist_ok=True)
        shutil.move(src, os.path.join(folder, os.path.basename(src)))
    if later_rows:
        write_rows(os.path.join(aside, "metrics.jsonl"), later_rows)
    write_rows(os.path.join(run_dir, "metrics.jsonl"), [r for r in kept if r.get("step", 0) <= step])
    logger.warning(f"starting at step {step}: the run folder went further ({len(later)} file(s), "
                   f"{len(later_rows)} metrics row(s) beyond it); they are set aside in {aside}")
    return aside


def write_rows(path: str, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_metrics(path: str, logger: logging.Logger | None = None) -> tuple[list[dict], int]:
    """The rows of metrics.jsonl, skipping lines that are not a JSON object (a torn last line after a kill,
    bytes that are not UTF-8, a stray number), said in the log. -> (rows, the number of lines skipped)."""
    if not os.path.exists(path):
        return [], 0
    rows, bad = [], []
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                row = None
            if isinstance(row, dict) and isinstance(row.get("step", 0), int):
                rows.append(row)
            else:
                bad.append(n)
    if bad and logger is not None:
        logger.warning(f"{path}: line(s) {bad} are not rows of this log (a write cut short by a kill, or "
                       f"an edit): dropped")
    return rows, len(bad)


def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """One boolean tensor on the tensors' device: every floating tensor in `tensors` is finite (no host sync).
    """
    flags = [t.isfinite().all() for t in tensors if torch.is_floating_point(t)]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]


def write_checkpoint(run_dir: str, state: dict, rolling: bool, keep_last: int = 0,
                     keep_every: int = 0) -> str:
    """checkpoints/NNNNNNN.pt (then --keep-last / --keep-every) or the rolling checkpoints/latest.pt,
    atomically."""
    numbered = os.path.join(run_dir, "checkpoints", f"{state['steps']:07d}.pt")
    path = rolling_path(run_dir) if rolling else numbered
    atomic_torch_save(state, path)
    if not rolling:
        prune_checkpoints(run_dir, keep_last, keep_every)
    return path


def rng_state() -> dict:
    """Every RNG the training step touches, as plain types (weights_only-loadable)."""
    np_state = np.random.get_state()
    return {"python": list(random.getstate()[1]), "python_pos": random.getstate()[0],
            "numpy": [np_state[0], np_state[1].tolist(), np_state[2], np_state[3], np_state[4]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> str:
    """Restore rng_state()'s RNGs. The CUDA states are one per device the saving process saw: on a machine
    with fewer devices the states of the missing ones are dropped (this process draws on its own device,
    which a resumable launch keeps) -> a note saying so, or ""."""
    random.setstate((state["python_pos"], tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    saved = list(state.get("cuda") or [])
    here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device, cuda_state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(cuda_state, device)
    if len(saved) > here:
        return (f"the checkpoint holds CUDA RNG states of {len(saved)} devices, this machine has {here}: the "
                f"states of devices {here}..{len(saved) - 1} are dropped")
    return ""


def make_logger(run_dir: str | None, main: bool = True) -> logging.Logger:
    """Main process: INFO to the console and RUN/log.txt; other ranks: warnings only."""
    logger = logging.getLogger("train")
    logger.handlers.clear()
    logger.setLevel(logging.INFO if main else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler()]
    if run_dir is not None and main:
        handlers.append(logging.FileHandler(os.path.join(run_dir, "log.txt")))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


def flag_changes(saved: dict, now: dict) -> str:
    """'learning_rate 0.0001 -> 5e-05, log_every 100 -> 50': the flags (present in both) that differ."""
    keys = sorted(k for k in now if k in saved and k != "resume" and saved[k] != now[k])
    return ", ".join(f"{k} {saved[k]} -> {now[k]}" for k in keys)


def log_sums_from(ckpt: dict, rank: int, device: torch.device | str) -> tuple[dict, dict]:
    """This rank's running log sums and counts since the last log step, as saved at the checkpoint (so that
    the first row after a resume averages the same steps as the run that never stopped)."""
    saved = ckpt.get("log_sums")
    if not saved or rank >= len(saved):
        return {}, {}
    sums = {k: v[0].to(device) for k, v in saved[rank].items()}
    return sums, {k: int(v[1]) for k, v in saved[rank].items()}


class MetricsWriter:
    """metrics.jsonl appender (set_aside() has already moved the rows beyond the starting step)."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "metrics.jsonl")

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def plot_loss_curves(run_dir: str) -> None:
    """RUN/loss.png: every loss column of metrics.jsonl against the step."""
    rows, _ = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    keys = [k for k in ("loss", "loss_gen", "loss_align") if any(k in r for r in rows)]
    if not rows or not keys:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot(*zip(*pts))
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(os.path.join(run_dir, "loss.png")) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
