"""How a run ends early: the stop flag that preemption and time-limit signals set, and the
two exceptions a run leaves by when it does not finish (``Requeue``, ``Diverged``)."""

from __future__ import annotations

import contextlib
import signal
from typing import Any


class Diverged(Exception):
    """The loss became NaN or infinite."""


class Requeue(Exception):
    """Stopped by a signal after writing a checkpoint; the launcher should requeue."""

    def __init__(self, message: str, signal: int | None = None) -> None:
        super().__init__(message)
        self.signal = signal


class StopFlag:
    """Set by SIGTERM, SIGUSR1 or SIGUSR2 (preemption, time limits, ``scontrol requeue``);
    read at safe points. SIGUSR2 is the signal submitit asks SLURM to send before a time
    limit; handling it here checkpoints at a step boundary rather than mid-step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. some Ray workers)
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
