"""The self-describing run folder: args.json, log.txt, metrics.jsonl, checkpoints/NNNNNNN.pt, loss curves.

    RUN/args.json            every flag, resolved (preset applied)
    RUN/log.txt              human-readable log
    RUN/metrics.jsonl        one JSON line per logged step (appended; a resumed run continues the file)
    RUN/samples/NNNNNNN.png  EMA preview grids
    RUN/checkpoints/NNNNNNN.pt  dict of plain types, written atomically, torch.load(weights_only=True) works
    RUN/loss.png             loss curves from metrics.jsonl
"""
import json
import logging
import os
import random
import re

import numpy as np
import torch

from fileio import atomic_path, atomic_write_text


def list_checkpoints(run_dir: str) -> list[str]:
    """checkpoints/NNNNNNN.pt sorted by step."""
    folder = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if re.fullmatch(r"\d{7,}\.pt", n))
    return [os.path.join(folder, n) for n in names]


def prune_checkpoints(run_dir: str, keep_last: int, keep_every: int = 0):
    """Keep the newest `keep_last` checkpoints (0 = keep all), and every multiple of `keep_every` steps."""
    if keep_last <= 0:
        return
    for path in list_checkpoints(run_dir)[:-keep_last]:
        step = int(os.path.basename(path)[:-3])
        if not (keep_every and step % keep_every == 0):
            os.remove(path)


def rng_state() -> dict:
    """Every RNG the training step touches, as plain types (weights_only-loadable)."""
    np_state = np.random.get_state()
    return {"python": list(random.getstate()[1]), "python_pos": random.getstate()[0],
            "numpy": [np_state[0], np_state[1].tolist(), np_state[2], np_state[3], np_state[4]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict):
    random.setstate((state["python_pos"], tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


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


class MetricsWriter:
    """metrics.jsonl appender; on resume, lines beyond the checkpoint's step are dropped so the file continues."""

    def __init__(self, run_dir: str, resume_step: int = 0):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(self.path):
            with open(self.path) as f:
                rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(rows))

    def write(self, row: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def plot_loss_curves(run_dir: str):
    """RUN/loss.png: every loss column of metrics.jsonl against the step."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    rows = [json.loads(line) for line in open(path) if line.strip()]
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
