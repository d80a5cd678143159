"""Trackers (tensorboard, wandb through accelerate) and the images a person reads during a run.

    RUN/wandb_id.txt   the wandb run id, made once: a restarted or requeued run continues the same wandb run
    RUN/<exp-name>/    tensorboard event files (accelerate's TensorBoardTracker under the run folder)

Both trackers get the logged scalars (train.py's metrics rows), the EMA preview grids (tag `samples/ema`) and,
at each start, a grid of decoded training latents (tag `samples/ground_truth`, also samples/ground_truth.png):
the cheap check that the latent scaling and the VAE are right. Grids of small images are enlarged (nearest
neighbour) to at least PREVIEW_WIDTH pixels.
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
    if args.report_to == "wandb" and accelerator.is_main_process:
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
