"""Stopping a run on a signal without losing a step, and the rolling checkpoint's clock.

SLURM sends SIGUSR1 (`--signal=USR1@120`) or SIGTERM before it kills or requeues a job; launchers forward
SIGTERM. `StopSignals` turns those signals into a flag (the step in flight is never interrupted, and a second
signal while a checkpoint is being written only sets the flag again). `RunControl.poll()`, called once per
optimizer step, returns what every rank does after this step: stop (write a checkpoint and exit) and/or write
the rolling `latest` checkpoint (--checkpoint-minutes, measured on rank 0's clock). Ranks must agree on the
step, as one rank may see a signal a step before another:

- one process: the host flags are read directly, nothing is communicated;
- several processes: every step, each rank all-reduces (max) a 2-int tensor with its flags and reads the
  result one step later. On CUDA the result is copied into pinned memory behind an event, and the next poll
  waits only for that event, i.e. for the previous step to finish on the GPU, while this step's kernels are
  already queued: the GPU never idles, and the cost is one 8-byte all-reduce per step (microseconds, against a
  gradient all-reduce of the whole model). All ranks read the same reduced value at the same step, so they
  stop together, at most one step after the first signal.

`follow_launcher()` asks Linux to send SIGTERM to this process when its launcher (accelerate launch, torchrun)
dies, so that killing the launcher never leaves a training process running on its own;
`survive_closed_output()` makes sure that the dead launcher's pipe (or a closed terminal) cannot end the run
before that checkpoint.
"""
import ctypes
import io
import os
import signal
import sys
import time

import torch
import torch.distributed as dist


# The signals a scheduler, a launcher or a closed terminal sends to ask a process to end; faults (SIGSEGV,
# SIGBUS, SIGFPE, ...) are not among them: caught, the faulting instruction would run again forever.
STOP_SIGNALS = tuple(name for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2",
                                       "SIGXCPU", "SIGALRM", "SIGPWR") if name in signal.Signals.__members__)


def parse_signals(text: str) -> list[signal.Signals]:
    """'SIGTERM,SIGUSR1' (or 'TERM,USR1', or 'none') -> the signals."""
    if text.strip().lower() in ("", "none"):
        return []
    out = []
    for name in text.split(","):
        name = name.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name not in STOP_SIGNALS:
            raise ValueError(f"--stop-signals: {name} is not a stop signal; choose among "
                             f"{','.join(STOP_SIGNALS)} (SIGKILL and SIGSTOP cannot be caught, and a fault "
                             f"such as SIGSEGV must end the process)")
        out.append(signal.Signals[name])
    return out


class StopSignals:
    """While installed, the given signals set `received` (the first one's name) instead of killing the
    process."""

    def __init__(self, signals: list[signal.Signals]):
        # the signals caught (DataLoader workers ignore them: dataset.train_batches)
        self.signals = tuple(signals)
        self.received = None
        self.count = 0
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
            # system calls resume after the handler
            signal.siginterrupt(sig, False)

    def stop_requested(self) -> bool:
        """A stop signal came (long work between steps polls this: previews, the FID proxy)."""
        return self.received is not None

    def _handle(self, signum, frame):
        self.count += 1
        if self.received is None:
            self.received = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class RunControl:
    """poll() after each step -> (stop, write_latest), identical on every rank (see the module docstring)."""

    def __init__(self, signals: StopSignals, device: torch.device, world: int, is_main: bool,
                 checkpoint_minutes: float):
        self.signals = signals
        self.world = world
        self.is_main = is_main
        self.interval = checkpoint_minutes * 60
        self.last_latest = time.monotonic()
        self.cuda = device.type == "cuda"
        if world > 1:
            self.flags = torch.zeros(2, dtype=torch.int32, device=device)
            self.host = torch.zeros(2, dtype=torch.int32, pin_memory=self.cuda)
            self.event, self.pending = None, False

    def latest_written(self) -> None:
        """Restart the rolling checkpoint's clock (a checkpoint of any kind was just written)."""
        self.last_latest = time.monotonic()

    def _local(self) -> tuple[int, int]:
        due = self.is_main and self.interval > 0 and time.monotonic() - self.last_latest >= self.interval
        if due and self.world > 1:
            # raised once; it fires at the next step
            self.last_latest = time.monotonic()
        return int(self.signals.received is not None), int(due)

    def poll(self) -> tuple[bool, bool]:
        stop, latest = self._local()
        if self.world == 1:
            return bool(stop), bool(latest)
        agreed = (0, 0)
        # the previous step's reduction
        if self.pending:
            if self.cuda:
                self.event.synchronize()
            agreed = tuple(self.host.tolist())
        # fill_ with a host number: no copy, no sync
        self.flags[0].fill_(stop)
        self.flags[1].fill_(latest)
        dist.all_reduce(self.flags, op=dist.ReduceOp.MAX)
        # gloo: the all-reduce already finished
        self.host.copy_(self.flags, non_blocking=self.cuda)
        if self.cuda:
            self.event = torch.cuda.Event()
            self.event.record()
        self.pending = True
        return bool(agreed[0]), bool(agreed[1])


def follow_launcher(sig: signal.Signals = signal.SIGTERM) -> bool:
    """Linux, under a launcher: the kernel sends `sig` to this process when its parent dies (prctl
    PR_SET_PDEATHSIG). -> whether it was set. Not set for a process started by a shell, which may exit
    first."""
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            parent = f.read().replace(b"\0", b" ").decode(errors="replace")
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    launchers = ("accelerate", "torchrun", "torch.distributed.run", "torch/distributed/run")
    if not any(name in parent for name in launchers):
        return False
    # 1 = PR_SET_PDEATHSIG
    if libc.prctl(1, int(sig), 0, 0, 0) != 0:
        return False
    # the launcher died before prctl
    if os.getppid() != ppid:
        os.kill(os.getpid(), sig)
    return True


class SurvivingStream(io.TextIOBase):
    """sys.stdout / sys.stderr whose reader may die (a killed launcher's pipe, a closed terminal or ssh
    session): the first failed write points the file descriptor at /dev/null, for C code and child processes
    too, and everything after it is dropped, instead of a BrokenPipeError that ends the run unsaved."""

    def __init__(self, stream):
        self.stream = stream
        self.dropped = False

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self._to_devnull()

    def _to_devnull(self) -> None:
        self.dropped = True
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, self.stream.fileno())
        except (OSError, ValueError):
            pass
        finally:
            os.close(null)
        self.stream = open(os.devnull, "w")

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self) -> str:
        return self.stream.encoding

    def __getattr__(self, name: str):
        # buffer, errors, ...: the wrapped stream's
        return getattr(self.stream, name)


def survive_closed_output() -> None:
    """Wrap sys.stdout and sys.stderr in SurvivingStream (once); the log and the progress bar write through
    them."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, SurvivingStream):
            setattr(sys, name, SurvivingStream(stream))
