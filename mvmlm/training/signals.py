"""A graceful stop on SIGTERM: cluster schedulers (Slurm, Kubernetes) send it some time before SIGKILL.

While :class:`StopSignals` is active, SIGTERM only sets a flag; the engine reads it at the next optimizer-step boundary,
saves the training state there and raises :class:`TrainingStopped` (a ``SystemExit`` with code 128 + the signal, as
a shell reports a process ended by it). A second SIGTERM ends the process at once, as without the handler.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["StopSignals", "TrainingStopped"]


class TrainingStopped(SystemExit):
    """A run stopped on a signal after saving its training state; ``code`` is 128 + the signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(128 + signum)
        self.message = message

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """Turns ``signals`` (default SIGTERM) into a request read by :attr:`received`, between :meth:`install` and
    :meth:`restore`.

    Outside the main thread (where Python cannot install handlers) it does nothing and the signals act as usual.
    Data-loader workers forked inside it inherit the handler, so a SIGTERM sent to the whole process group does not
    kill them under the loop.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # asked twice: stop now, the way the signal would without this handler
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum

    def install(self) -> StopSignals:
        """Handle the signals from now on (returns itself)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.signals}
        return self

    def restore(self) -> None:
        """Give the signals back to the handlers they had before :meth:`install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
