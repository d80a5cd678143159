"""One process of a torchrun launch: its rank, the number of processes, its device and the process group.

The one setup used by sample_ddp.py and the preprocessing commands (preprocessing/launch.py); train.py gets
the same from accelerate's Accelerator, which also wraps the model. torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK; plain `python` is rank 0 of 1 and makes no process group.
"""
import datetime
import os

import torch
import torch.distributed as dist


def setup_distributed(device: str | torch.device | None = None, local_rank: int | None = None,
                      backend: str | None = None, timeout: datetime.timedelta = datetime.timedelta(hours=48)
                      ) -> tuple[int, int, torch.device]:
    """-> (rank, world, device); with world > 1 the default process group exists.

    device: default cuda:LOCAL_RANK when a GPU is visible, else cpu; a CUDA device becomes the current one.
    local_rank: torch.distributed.launch's --local-rank, used when LOCAL_RANK is not set (default: RANK).
    backend: of the process group; default nccl on CUDA, gloo on the CPU. timeout: how long a collective
    waits for the slowest rank (ranks that resume or split unevenly only meet at the end)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", rank if local_rank is None else local_rank))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=timeout)
    return rank, world, device


def barrier(device: torch.device):
    """Waits for every rank (nothing without a process group)."""
    if not dist.is_initialized():
        return
    if device.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def teardown():
    """Ends the process group, if there is one."""
    if dist.is_initialized():
        dist.destroy_process_group()
