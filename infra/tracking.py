"""Trackers (every one accelerate supports: tensorboard, wandb, trackio, aim, comet_ml, mlflow, clearml,
dvclive, swanlab) and the images a person reads during a run.

--report-to NAME picks one of them, `all` every one that is installed, `none` (default) none; a tracker that
is not installed stops the run at the start with the package to install (report_to_trackers).

    RUN/wandb_id.txt   the wandb run id, made once: a restarted or requeued run continues the same wandb run
    RUN/<exp-name>/    tensorboard event files (accelerate's TensorBoardTracker under the run folder)

Every tracker gets the logged scalars (train.py's metrics rows); tensorboard and wandb also get the EMA
preview grids (tag `samples/ema`) and, at each start, a grid of decoded training latents (tag
`samples/ground_truth`, also samples/ground_truth.png): the cheap check that the latent scaling and the VAE
are right. Grids of small images are enlarged (nearest neighbour) to at least PREVIEW_WIDTH pixels.
"""
import argparse
import os
import uuid
from typing import TYPE_CHECKING

import numpy as np

from infra.fileio import atomic_write_text

if TYPE_CHECKING:
    from accelerate import Accelerator

PREVIEW_WIDTH = 512
# the package that provides each tracker where its pip name differs
PIP_NAMES = {"comet_ml": "comet-ml"}


def supported_trackers() -> list[str]:
    """Every tracker accelerate supports (its LoggerType values but 'all')."""
    from accelerate.utils import LoggerType
    return [t.value for t in LoggerType if t.value != "all"]


def report_to_trackers(report_to: str) -> list[str]:
    """--report-to -> the tracker names for Accelerator(log_with=...): [] for none, the installed ones for all
    (none installed: [], and one line says so). A named tracker that is not installed is a SystemExit naming
    the package."""
    from accelerate.tracking import get_available_trackers

    installed = [str(t.value if hasattr(t, "value") else t) for t in get_available_trackers()]
    if report_to == "none":
        return []
    if report_to == "all":
        if not installed:
            every = ", ".join(supported_trackers())
            print(f"--report-to all: none of accelerate's trackers is installed ({every}): the run logs to "
                  "metrics.jsonl only", flush=True)
        return installed
    if report_to not in installed:
        have = ", ".join(installed) or "none"
        raise SystemExit(f"--report-to {report_to}: the package is not installed (pip install "
                         f"{PIP_NAMES.get(report_to, report_to)}); installed trackers: {have}")
    return [report_to]


def wandb_run_id(run_dir: str) -> str:
    """The run folder's wandb id (RUN/wandb_id.txt), created on first use."""
    path = os.path.join(run_dir, "wandb_id.txt")
    if os.path.exists(path):
        with open(path) as f:
            run_id = f.read().strip()
        if run_id:
            return run_id
    run_id = uuid.uuid4().hex[:16]
    atomic_write_text(path, run_id + "\n")
    return run_id


def init_trackers(accelerator: "Accelerator", args: argparse.Namespace, run_dir: str,
                  config: dict | None = None) -> None:
    """accelerate's trackers for --report-to; wandb resumes the run folder's run (same id, resume='allow').
    config: the run's settings to record (default: args)."""
    if args.report_to == "none":
        return
    init_kwargs = {}
    chosen = [str(getattr(t, "value", t)) for t in getattr(accelerator, "log_with", [])]
    wandb = args.report_to == "wandb" or (args.report_to == "all" and "wandb" in chosen)
    if wandb and accelerator.is_main_process:
        init_kwargs["wandb"] = {"id": wandb_run_id(run_dir), "resume": "allow", "name": args.exp_name,
                                "dir": run_dir}
    config = vars(args) if config is None else config
    accelerator.init_trackers(args.exp_name, config={k: str(v) for k, v in config.items()},
                              init_kwargs=init_kwargs)


def log_image(accelerator: "Accelerator", tag: str, image: np.ndarray, step: int, caption: str = "") -> None:
    """One (H, W, 3) uint8 image to every tracker of the run (main process; nothing without trackers)."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, image, global_step=step, dataformats="HWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb
            tracker.run.log({tag: wandb.Image(image, caption=caption or None)}, step=step)


def ground_truth_indices(num_items: int, n: int) -> list[int]:
    """n dataset items spread evenly over the data (fixed: the same grid at every start)."""
    return [int(i) for i in np.linspace(0, num_items - 1, n).round()]
