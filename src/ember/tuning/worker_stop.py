"""SIGTERM or SIGINT in the training worker: a pause, not a crash. The server sends SIGTERM when it shuts down
(and so may a service manager or an operator). While the worker is still loading or preparing, nothing is
worth saving and it stops at once; once training runs, it finishes the step in progress, saves a checkpoint of
it, and the job goes back to `queued` to resume from there at the next start."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Generator
from types import FrameType

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class WorkerStopRequested(BaseException):
    """Raised by the signal handler inside `StopSignals.interruptible()`. A BaseException, so the worker's
    `except Exception` (which records a failure on the job) does not take a requested stop for one."""


class StopSignals:
    """Install once in the worker's main thread; `requested` is polled between training steps."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal's number
        self._interruptible = False

    def install(self) -> None:
        for sig in _SIGNALS:
            signal.signal(sig, self._handle)

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "no signal"

    @contextlib.contextmanager
    def interruptible(self) -> Generator[None, None, None]:
        """Work that a stop may cut short (loading the model, tokenizing the data): the signal raises
        WorkerStopRequested into it instead of waiting for a step boundary."""
        if self.requested:
            raise WorkerStopRequested(self.name)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if first and self._interruptible:
            self._interruptible = False  # raised once; the unwinding code must not be interrupted again
            raise WorkerStopRequested(self.name)
