"""Where work units run: in lanes side by side, each lane one unit after another; one recorder of what they yield.

`job.executor` chooses the lanes. "serial": one lane. "threads": every unit its own lane, `job.workers` of them at
a time. Unset: a lane per store, so rules on different stores run side by side and one store never sees two of
them at once. Every lane runs on a thread of its own and sends what its units yield to the coordinator's thread,
which alone writes the audit log, in the order the outcomes arrive (each line names its rule, and a batch is
recorded as soon as it is committed, never held back in memory for the sake of an order). A lane waits until its
outcome is recorded before it goes on, so, as in a serial run, no batch starts before the one before it is in the
log.

A stop request stops every lane between batches. If recording fails, the lanes are told to stop, and what they
still commit is counted in the log (`batch_unrecorded`), since it can reach no audit.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

from retention.config.model import SERIAL, THREADS
from retention.execute import Applied, Executor, Interrupted, Outcome
from retention.logs import batch_unrecorded
from retention.progress import Silent
from retention.report import RuleReport
from retention.units import RuleWork

DEFAULT_WORKERS = 4  # executor = "threads" without job.workers: the work is mostly waiting on stores


@dataclass(eq=False)
class Unit:
    """One unit to run, the report it fills, and whether it started (only started units are reported)."""

    work: RuleWork
    report: RuleReport
    started: bool = False
    part_of: Unit | None = None  # the rule this unit is a shard of (retention.sharding)


class LaneDone:
    """A lane has run all its units (or stopped)."""


@dataclass(frozen=True)
class LaneFailed:
    """A lane ended by an exception that is not a unit's own failure: an interruption, or a defect."""

    error: BaseException


class Lanes(Protocol):
    """Runs units and hands every outcome to `record`, in the coordinator's thread; raises Interrupted after a stop."""

    def run(self, units: Sequence[Unit], executor: Executor, record: Record) -> None: ...

    def parallelism(self) -> int:
        """How many units can run at once (shards beyond that would only wait)."""
        ...


Record = Callable[[Unit, Outcome], None]
Message = tuple[Unit | None, "Outcome | LaneDone | LaneFailed", threading.Event | None]


@dataclass(frozen=True)
class LocalLanes:
    """Lanes on threads of this process (job.executor "serial", "threads", or unset)."""

    executor: str | None = None
    workers: int | None = None

    def parallelism(self) -> int:
        """Only "threads" runs several units of one store at once: the default keeps a store to one unit."""
        return (self.workers or DEFAULT_WORKERS) if self.executor == THREADS else 1

    def lanes(self, units: Sequence[Unit]) -> tuple[list[list[int]], int]:
        """The lanes (unit indices, in order) and how many run at once."""
        if self.executor == SERIAL or len(units) < 2:
            return [list(range(len(units)))], 1
        if self.executor == THREADS:
            return [[index] for index in range(len(units))], self.workers or DEFAULT_WORKERS
        by_store: dict[str, list[int]] = {}
        for index, unit in enumerate(units):
            by_store.setdefault(unit.work.rule.connector, []).append(index)
        return list(by_store.values()), len(by_store)

    def run(self, units: Sequence[Unit], executor: Executor, record: Record) -> None:
        lanes, workers = self.lanes(units)
        if workers > 1:
            executor = replace(executor, progress=Silent())  # one bar cannot follow several rules at once
        outcomes: queue.Queue[Message] = queue.Queue()

        def lane(indices: list[int]) -> None:
            try:
                for index in indices:
                    unit = units[index]
                    if executor.should_stop():
                        raise Interrupted
                    for outcome in executor.execute(unit.work, unit.report):
                        recorded = threading.Event()
                        outcomes.put((unit, outcome, recorded))
                        recorded.wait()  # (or the recorder failed, and this lane will stop at its next batch)
            except BaseException as exc:  # passed on to the coordinator's thread, raised there
                outcomes.put((None, LaneFailed(exc), None))
            finally:
                outcomes.put((None, LaneDone(), None))

        pool = ThreadPoolExecutor(workers, thread_name_prefix="retention-lane")
        for indices in lanes:  # each lane in a copy of this context: the run's log fields go with it
            pool.submit(contextvars.copy_context().run, lane, indices)
        try:
            _record_lanes(outcomes, len(lanes), executor, record)
        finally:
            pool.shutdown(wait=True)


def _record_lanes(outcomes: queue.Queue[Message], running: int, executor: Executor, record: Record) -> None:
    """Record what the lanes send until all have ended; then raise what ended one (a defect before a stop)."""
    failure: BaseException | None = None
    item: Outcome | LaneDone | LaneFailed | None = None
    recorded: threading.Event | None = None
    interrupted = False
    try:
        while running:
            try:
                unit, item, recorded = outcomes.get()
            except KeyboardInterrupt:  # Ctrl-C in this thread: a stop request, as SIGTERM is; recording goes on
                executor.pace.stop()
                interrupted, recorded = True, None
                continue
            if isinstance(item, LaneDone):
                running -= 1
            elif isinstance(item, LaneFailed):
                if failure is None or isinstance(failure, Interrupted):
                    failure = item.error
            elif unit is not None and recorded is not None:
                unit.started = True
                record(unit, item)
                recorded.set()
    except BaseException:
        executor.pace.stop()
        if recorded is not None and not recorded.is_set():  # the outcome being recorded: its lane goes on, to stop
            recorded.set()
            _drain(outcomes, running, item.count if isinstance(item, Applied) else 0)
        else:
            _drain(outcomes, running, 0)
        raise
    if failure is not None:
        raise failure
    if interrupted:
        raise KeyboardInterrupt


def _drain(outcomes: queue.Queue[Message], running: int, unrecorded: int) -> None:
    """After recording failed: let the lanes stop, and count the batches they committed that no log will hold
    (`unrecorded` starts with the batch whose recording failed)."""
    while running:
        _, item, recorded = outcomes.get()
        if recorded is not None:
            recorded.set()
        if isinstance(item, LaneDone):
            running -= 1
        elif isinstance(item, Applied):
            unrecorded += item.count
    if unrecorded:
        batch_unrecorded(unrecorded)
