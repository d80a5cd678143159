"""The launch environment of the preprocessing commands: torchrun ranks, decoding workers, the device."""
import contextlib
import ctypes
import datetime
import multiprocessing
import os
import signal

import torch

from infra.distributed import setup_distributed, teardown


@contextlib.contextmanager
def rank_environment(workers: int | None = None, device: str | None = None):
    """-> (rank, world_size, workers, device) of this torchrun process (distributed.setup_distributed; plain
    python: rank 0 of 1), the process group ended on exit.

    workers: decoding processes per rank (default: CPU cores / ranks on this node, at most 8); device:
    cuda:LOCAL_RANK when a GPU is there, else cpu. With several ranks a gloo group exists for the final
    barrier only."""
    rank, world_size, device = setup_distributed(device, backend="gloo", timeout=datetime.timedelta(days=7))
    if workers is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        workers = min(8, max(1, (os.cpu_count() or 1) // local_world))
    try:
        yield rank, world_size, workers, device
    finally:
        teardown()


def check_launch_flags(workers=None, device=None):
    """--workers and --device checked before any process group, device or file is touched (ValueError)."""
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: decode in the main process), got {workers}")
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is visible here (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible")


def die_with_parent(worker_id: int | None = None) -> None:
    """A decoding worker's init (DataLoader worker_init_fn): SIGKILL when its parent dies (Linux
    PR_SET_PDEATHSIG), so that a worker stuck in a read never outlives a killed run; elsewhere a no-op."""
    try:
        # 1 = PR_SET_PDEATHSIG
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    # the parent died before the call: nobody would send the signal
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)
