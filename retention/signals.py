"""Stop requests from SIGTERM and SIGINT: the handler only sets a flag; everything else happens on a thread.

A signal handler runs between two bytecodes of the main thread, possibly while that thread is inside the
logger's write and holds its lock: logging (or anything else that takes a lock) from the handler can wait on
itself forever. So the handler records the signal and returns; the run notices at its next check.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog


class StopRequest:
    """Set from a signal handler; read between batches, where the first reader logs it."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._told = False

    def ask(self, signum: int, _frame: object = None) -> None:
        self.signal = signal.Signals(signum).name  # a plain assignment: safe inside a handler

    def set(self) -> None:
        self.signal = self.signal or "request"

    def is_set(self) -> bool:
        if self.signal is not None and not self._told:
            self._told = True
            structlog.get_logger("retention").warning("stop_requested", signal=self.signal)
        return self.signal is not None


@contextmanager
def stop_on_signals(then: Callable[[], None] | None = None) -> Iterator[StopRequest]:
    """SIGTERM and SIGINT ask the run to stop after the batch in flight; the log is still finished and signed.

    `then`, if given, is called on a new thread after a signal (the scheduler's shutdown), never in the handler.
    """
    stop = StopRequest()

    def ask(signum: int, frame: object) -> None:
        stop.ask(signum, frame)
        if then is not None:
            threading.Thread(target=then, name="retention-stop", daemon=True).start()

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        if stop.signal is None:  # once asked to stop, further signals until exit only repeat the request
            for sig, handler in previous.items():
                signal.signal(sig, handler)
