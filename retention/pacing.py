"""When the next batch may start: not after a stop request, not past job.max_duration, not while replicas lag.

Ops run this against production. Between two batches (never inside one) the run checks its time budget, measured
on the run's own clock, and, where a store can tell (the ReplicaLag capability), waits while its slowest replica
is further behind than job.max_replica_lag. A stop request or the end of the budget ends a wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from retention.connector import ReplicaLag

log = structlog.get_logger("retention")

POLL_SECONDS = 1.0  # how often a paused run asks the replicas again


class Pace:
    """The run's stop request, time budget and replica-lag bound, consulted between batches."""

    def __init__(self, stop: Callable[[], bool], *, clock: Callable[[], datetime], budget: timedelta | None,
                 max_lag: timedelta | None, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._stop, self._clock, self._sleep, self._monotonic = stop, clock, sleep, monotonic
        self._budget = budget
        self._deadline = clock() + budget if budget else None
        self._max_lag = max_lag.total_seconds() if max_lag else None
        self.out_of_time = False  # the budget ended the run
        self._aborted = threading.Event()  # the coordinator stopped the run: every lane stops
        self.paused_seconds = 0.0  # waited for replicas, over the whole run (lanes may wait side by side)
        self._paused_lock = threading.Lock()

    def stop(self) -> None:
        """Stop every lane between batches: Ctrl-C reached the coordinator, or its recording failed."""
        self._aborted.set()

    def should_stop(self) -> bool:
        """A stop was asked for, or the run's time is up (said once, in the log)."""
        if self._stop() or self._aborted.is_set():
            return True
        if self._deadline is not None and not self.out_of_time and self._clock() >= self._deadline:
            self.out_of_time = True
            log.warning("max_duration_reached", max_duration=str(self._budget),
                        detail="stopping after the batch in flight; the next run goes on")
        return self.out_of_time

    @property
    def reason(self) -> str:
        """Why the run stopped early, for the interrupted rule's error."""
        if self.out_of_time:
            return f"max_duration ({self._budget}) reached: the rest waits for the next run"
        return "interrupted; the batch in flight was committed or rolled back whole"

    def must_wait(self, store: object) -> bool:
        """Whether the next batch would have to wait for the store's replicas now (one look; no waiting)."""
        if self._max_lag is None or not isinstance(store, ReplicaLag):
            return False
        lag = _lag(store)
        return lag is not None and lag > self._max_lag

    def before_next_batch(self, store: object) -> None:
        """Wait while the store's slowest replica lags more than allowed; a stop or the deadline ends the wait."""
        if self._max_lag is None or not isinstance(store, ReplicaLag):
            return
        lag = _lag(store)
        if lag is None or lag <= self._max_lag:
            return
        log.warning("replica_lag_pause", lag_seconds=round(lag, 3), max_lag_seconds=self._max_lag)
        started = self._monotonic()
        while lag is not None and lag > self._max_lag and not self.should_stop():
            self._sleep(POLL_SECONDS)
            lag = _lag(store)
        paused = self._monotonic() - started
        with self._paused_lock:
            self.paused_seconds += paused
        log.info("replica_lag_resume", paused_seconds=round(paused, 3),
                 lag_seconds=round(lag, 3) if lag is not None else None)


def _lag(store: ReplicaLag) -> float | None:
    """The store's replica lag; a probe that fails (in any way) is an unknown lag, never the run's failure."""
    try:
        return store.replica_lag()
    except Exception as exc:  # a third-party connector's probe is not trusted to raise only ConnectorError
        log.warning("replica_lag_unknown", error_class=type(exc).__name__)
        return None
