"""When a training run writes a mid-epoch checkpoint and when it stops: signals and periodic saves.

SIGTERM (Slurm at the time limit, Kubernetes eviction, torchrun shutting down), SIGINT (Ctrl-C) and SIGUSR1 (Slurm's
``--signal=USR1@T`` warning) only set a flag. At the next optimizer-step boundary every rank learns of it (one tiny
host-side all-reduce per step under DDP), finishes that step, the run writes last.pth with the position in the
epoch, and every process exits with ``PREEMPTED_EXIT``. ``--save_every_minutes`` / ``--save_every_steps`` write the
same mid-epoch checkpoint without stopping; rank 0's clock decides for all ranks, so all save at the same step.
Neither changes the numerics: resuming from such a checkpoint gives the weights of a run that never stopped.
"""
from __future__ import annotations

import signal
import time

from utils.distributed import any_rank

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


class StepControl:
    """``poll()`` at each optimizer-step boundary → (write a checkpoint now, stop after writing it)."""

    def __init__(self, *, save_every_minutes: float | None, save_every_steps: int | None, is_main: bool) -> None:
        self.every_seconds = save_every_minutes * 60 if save_every_minutes else None
        self.every_steps = save_every_steps
        self.is_main = is_main
        self.received: int | None = None
        self.last_save = time.monotonic()
        self.steps = 0
        self._previous: dict = {}

    def install(self) -> "StepControl":
        """Catch the stop signals (the main thread only can; elsewhere, e.g. under some launchers, they keep their
        handlers and the run still saves periodically)."""
        try:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread
            self._previous.clear()
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.received = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"

    def poll(self) -> tuple[bool, bool]:
        """Called by every rank at every optimizer-step boundary; the same answer on every rank."""
        self.steps += 1
        due = bool(self.every_steps and self.steps % self.every_steps == 0)
        if self.every_seconds and self.is_main and time.monotonic() - self.last_save >= self.every_seconds:
            due = True
        due, stop = any_rank([due, self.received is not None])
        if due or stop:
            self.last_save = time.monotonic()
        return due or stop, stop

    def stop_requested(self) -> bool:
        """Outside the step loop (after an epoch): whether any rank received a stop signal."""
        return any_rank([self.received is not None])[0]
