"""Work units on a Dask cluster (job.executor = "tcp://scheduler:8786"): workers change records, one coordinator
records them and signs.

A unit travels to a worker as its frozen RuleWork with no key in it (the hmac transform's key is taken out) and
the config without the signing key's path. The worker opens its own connectors, resolving `${NAME}` options and the
pseudonym secret from its own environment (set where the workers are deployed, or shipped with Dask's Environ
plugin; literal secrets in the config are refused, since task arguments pass through the scheduler), derives the
keys it needs (never the signing key: only the coordinator has it), checks they are the coordinator's by
fingerprint, runs the unit with the one Executor, and sends each outcome through the run's Dask queue, waiting
until the coordinator has recorded it: as in a local run, no batch starts before the one before it is in the log.

A stop (SIGTERM, max_duration on the coordinator) is the run's Dask event, which workers check between batches. A
worker whose outcome is not recorded within ACK_TIMEOUT stops: its coordinator is gone, and nothing it changed now
could reach an audit log. When a worker dies in the middle of a unit, Dask runs the unit again on another worker;
its batches re-check their predicate, so nothing is changed twice, and the log says so: the lost attempt ends in
`rule_failed` (WorkerLost) and the unit starts again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from retention.config import Config
from retention.dispatch import Record, Unit
from retention.errors import ConfigError, ConnectorError, KeyProblem
from retention.execute import (
    Applied,
    Executor,
    Failed,
    Finished,
    HeldIds,
    Interrupted,
    Outcome,
    Skipped,
    Started,
    report_for,
    starting,
)
from retention.logs import batch_unrecorded
from retention.pacing import Pace
from retention.progress import Silent
from retention.redact import error_summary
from retention.report import ERROR, RuleReport
from retention.secrets import pseudonym_keys
from retention.settings import Environment, EnvRef
from retention.stores import open_connectors
from retention.timeutil import parse_instant, rfc3339
from retention.units import RuleWork

log = structlog.get_logger("retention")

ACK_TIMEOUT = 300.0  # seconds a worker waits for its outcome to be recorded before it takes the coordinator for gone
POLL = 0.5  # seconds between the coordinator's looks at its stop request and at the units that ended
CONNECT_TIMEOUT = "10s"
OUTCOMES: dict[str, type[Outcome]] = {kind.__name__: kind for kind in (Started, Skipped, Applied, HeldIds, Finished,
                                                                         Failed)}
REPORTED = ("total", "matched", "held", "unknown_age", "changed", "blocked", "status", "error", "statement",
            "duration_ms", "remaining", "oldest_expired", "held_by")  # what a worker's report tells the coordinator's
UNREACHABLE = 10.0  # seconds without the scheduler before the run takes it for lost
GATHER = 5.0  # seconds to fetch a finished unit's result before taking it for lost with its worker
DONE, INTERRUPTED, ORPHANED = "done", "interrupted", "orphaned"
ENDED = -1  # the acknowledgement that tells a new attempt its unit is already recorded as ended


@dataclass(frozen=True)
class RemoteUnit:
    """What a worker is sent: the unit and the config, no key and no secret; where to send outcomes; what to check."""

    index: int
    work: RuleWork  # its action without the hmac transform's key
    config: Config  # without the signing key's path or the WORM copy
    dry_run: bool
    outcomes: str  # the run's Dask queue
    stop: str  # the run's Dask event
    fingerprint: str  # of the keys the coordinator derived
    run_id: str  # for the worker's log lines


# -- the wire: outcomes and report counts as plain data ------------------------------------------------------------


def encode(outcome: Outcome) -> dict[str, Any]:
    values = {field.name: getattr(outcome, field.name) for field in fields(outcome)}
    return {"kind": type(outcome).__name__,
            **{name: list(value) if isinstance(value, tuple) else value for name, value in values.items()}}


def decode(data: dict[str, Any]) -> Outcome:
    kind = OUTCOMES[data["kind"]]
    values: dict[str, Any] = {field.name: tuple(value) if isinstance(value := data[field.name], list) else value
                              for field in fields(kind)}
    return kind(**values)


def snapshot(report: RuleReport) -> dict[str, Any]:
    """The report's counts as plain values (a tuple as a list, an instant as RFC 3339), for the outcome queue."""
    return {name: list(value) if isinstance(value := getattr(report, name), tuple)
            else rfc3339(value) if isinstance(value, datetime) else value for name in REPORTED}


def restore(report: RuleReport, counts: dict[str, Any], carried: tuple[int, int]) -> None:
    """The worker's counts into the coordinator's report; records changed (or refused) by lost attempts added."""
    for name in REPORTED:
        value = counts[name]
        setattr(report, name, tuple(value) if isinstance(value, list)
                else parse_instant(value) if name == "oldest_expired" and value else value)
    report.changed += carried[0]  # what attempts lost with their workers changed: matched then, so matched now
    report.matched += carried[0]
    report.blocked += carried[1]


# -- the worker's side ---------------------------------------------------------------------------------------------


def run_unit(task: RemoteUnit) -> str:
    """On a Dask worker: run one unit, sending each outcome to the coordinator and waiting until it is recorded."""
    from distributed import Event, Queue, get_client, get_worker

    client: Any = get_client()
    worker: str = get_worker().address
    attempt = uuid.uuid4().hex[:12]
    outcomes: Any = Queue(task.outcomes, client=client)
    acks: Any = Queue(f"{task.outcomes}-ack-{attempt}", client=client)
    stop: Any = Event(task.stop, client=client)
    if stop.is_set():  # the run was stopped before this unit's turn came: it never starts
        return INTERRUPTED
    structlog.contextvars.bind_contextvars(run_id=task.run_id)
    report = report_for(task.work)
    try:
        for seq, outcome in enumerate(_execute_here(task, worker, report, stop.is_set)):
            outcomes.put({"unit": task.index, "attempt": attempt, "worker": worker, "seq": seq,
                          "outcome": encode(outcome), "report": snapshot(report)})
            if acks.get(timeout=ACK_TIMEOUT) == ENDED:
                break  # the unit ended already (its last worker died after): nothing changed, nothing to do
    except Interrupted:
        return INTERRUPTED
    except TimeoutError:
        log.error("coordinator_lost", rule=task.work.rule.name, detail="no outcome recorded within "
                  f"{ACK_TIMEOUT:.0f} s: this worker stops, its last batch unrecorded")
        return ORPHANED
    finally:
        structlog.contextvars.unbind_contextvars("run_id")
    return DONE


def _execute_here(task: RemoteUnit, worker: str, report: RuleReport, stopped: Callable[[], bool]
                  ) -> Iterator[Outcome]:
    """The unit, executed with this worker's own connectors and keys; a failure to get them is the unit's own."""
    env = Environment()
    started = False
    try:
        keys = pseudonym_keys(task.config, env)
        if keys.fingerprint() != task.fingerprint:
            raise KeyProblem("this worker's pseudonym secret is not the coordinator's: its record ids and "
                             "pseudonyms would not match; give the workers the same secret",
                             key="secrets.pseudonym_key")
        work = replace(task.work, action=replace(task.work.action, hmac_key=keys.transform))
        with open_connectors(task.config, env, [work.rule]) as connectors:
            pace = Pace(stopped, clock=lambda: datetime.now(UTC), budget=None,
                        max_lag=task.config.job.max_replica_lag)
            executor = Executor(connectors, keys.record_ids, task.config, task.dry_run, pace, Silent(), worker)
            for outcome in executor.execute(work, report):
                started = True
                yield outcome
    except Exception as exc:
        error_class, message = error_summary(exc)
        if started:  # closing a connector failed after the unit ended: nothing left to record
            log.warning("connector_close_failed", error_class=error_class)
            return
        report.status, report.error = ERROR, message
        yield starting(task.work, report)
        yield Failed(error_class, message)


# -- the coordinator's side ----------------------------------------------------------------------------------------


class DaskLanes:
    """Runs each unit as a task on the Dask cluster at `address`; records what the workers send, in arrival order."""

    def __init__(self, address: str, config: Config, run_id: str, key_fingerprint: str) -> None:
        _refuse_literal_secrets(config)
        from distributed import Client, Event, Queue

        try:
            self.client: Any = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConnectorError(f"cannot reach the Dask scheduler at {address} ({type(exc).__name__})") from None
        self._queue_type = Queue
        # the workers need to know whether record ids are hashed, never where the signing key is
        self.config = replace(config, audit=replace(config.audit, signing_key=None, worm=None)) if config.audit \
            else config
        self.run_id, self.fingerprint, self.address = run_id, key_fingerprint, address
        self.outcomes_name, self.stop_name = f"retention-{run_id}", f"retention-{run_id}-stop"
        self.outcomes: Any = Queue(self.outcomes_name, client=self.client)
        self.stop: Any = Event(self.stop_name, client=self.client)
        self._calls = 0

    def close(self) -> None:
        self.client.close()

    def parallelism(self) -> int:
        """The cluster's worker threads, as the scheduler counts them now."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        return max(1, sum(int(worker.get("nthreads", 1)) for worker in workers))

    def run(self, units: Sequence[Unit], executor: Executor, record: Record) -> None:
        """Submit every unit; record what comes back until each task has ended (or, after a stop, never started)."""
        self._calls += 1
        pending: dict[Any, int] = {self.client.submit(
            run_unit, RemoteUnit(index, _keyless(unit.work), self.config, executor.dry_run, self.outcomes_name,
                                 self.stop_name, self.fingerprint, self.run_id),
            key=f"retention-{self.run_id}-{self._calls}-{index}", pure=False): index
            for index, unit in enumerate(units)}
        session = _Session(units, record, self._queue_type, self.client, self.outcomes_name)
        ended: dict[int, str | BaseException] = {}  # unit -> its task's result, or what failed it
        stopping, interrupted, unreachable_since = False, False, None
        while pending:
            try:
                if not stopping and (executor.should_stop() or session.failure is not None):
                    stopping = True
                    executor.pace.stop()
                    self.stop.set()  # every worker stops between batches; queued units never start
                try:
                    message = self.outcomes.get(timeout=POLL)
                except TimeoutError:
                    message = None
                if message is not None:
                    session.receive(message)
                unreachable_since = self._reachable(unreachable_since)
                for future in [future for future in pending if future.done()]:
                    try:
                        result = INTERRUPTED if future.status == "cancelled" else \
                            future.exception(timeout=GATHER) or future.result(timeout=GATHER)
                    except TimeoutError:  # its worker died before the result came: Dask runs it again, and its
                        continue          # new attempt waits for our acknowledgement, so keep reading outcomes
                    ended[pending.pop(future)] = result
                    future.release()  # a result kept is one Dask would compute again if its worker died
                if stopping:
                    self._cancel_queued(pending, ended)
            except KeyboardInterrupt:  # Ctrl-C here: a stop request, as SIGTERM is; recording goes on
                interrupted = stopping = True
                executor.pace.stop()
                self.stop.set()
            except Exception as exc:  # recording never raises here (session keeps its failure): Dask does
                lost = ConnectorError(f"lost the Dask scheduler at {self.address} ({type(exc).__name__})")
                for index in pending.values():  # the units under way end here, in the log
                    session.unit_failed(index, lost)
                raise lost from None
        if session.failure is not None:
            raise session.failure
        for index, result in ended.items():
            if isinstance(result, BaseException):
                session.unit_failed(index, result)
            interrupted |= result == INTERRUPTED
        if interrupted:
            raise Interrupted

    def _reachable(self, since: float | None) -> float | None:
        """None while the client is connected; after UNREACHABLE seconds without the scheduler, TimeoutError."""
        if self.client.status == "running":
            return None
        since = since or time.monotonic()
        if time.monotonic() - since > UNREACHABLE:
            raise TimeoutError(f"no answer for {UNREACHABLE:.0f} s")
        return since

    def _cancel_queued(self, pending: dict[Any, int], ended: dict[int, str | BaseException]) -> None:
        """After a stop: units no worker has taken up yet are cancelled (a worker that has one starts nothing)."""
        taken = {key for keys in self.client.processing().values() for key in keys}
        for future in [future for future in pending if future.key not in taken]:
            future.cancel()
            ended[pending.pop(future)] = INTERRUPTED


@dataclass
class _Lost:
    """An attempt whose worker died mid-unit, kept until the next attempt has counted what is left."""

    worker: str
    matched: int  # what it counted
    own_changed: int  # what it changed in recorded batches
    carried: tuple[int, int]  # changed and blocked by the attempts before it and by it
    started: Started | None = None  # the next attempt's Started, recorded after the loss


class _Session:
    """One dispatch's bookkeeping: each unit's current attempt, what lost attempts changed, recording failures."""

    def __init__(self, units: Sequence[Unit], record: Record, queue_type: Any, client: Any, outcomes: str) -> None:
        self.units, self.record = units, record
        self._queue_type, self._client, self._outcomes = queue_type, client, outcomes
        self.attempts: dict[int, tuple[str, str]] = {}  # unit -> (attempt, worker)
        self.ended: set[int] = set()  # units whose Finished or Failed is recorded
        self.carried: dict[int, tuple[int, int]] = {}  # unit -> (changed, blocked) by lost attempts
        self.lost: dict[int, _Lost] = {}
        self.failure: BaseException | None = None  # recording failed: the rest is acknowledged, not recorded
        self.unrecorded = 0
        self._acks: dict[str, Any] = {}  # per attempt, the queue its worker waits on

    def receive(self, message: dict[str, Any]) -> None:
        index, attempt, worker = message["unit"], message["attempt"], message["worker"]
        unit, outcome = self.units[index], decode(message["outcome"])
        recorded, answer = False, message["seq"]
        try:
            if index in self.ended and self.attempts.get(index, (attempt,))[0] != attempt \
                    and isinstance(outcome, Started):
                answer = ENDED  # Dask ran it again after its worker died, though its end is recorded: stop it
            elif self.failure is None:
                self._record(index, unit, attempt, worker, outcome, message["report"])
                recorded = True
        except BaseException as exc:  # Ctrl-C half way through a line included: the log is no longer whole
            self.failure = exc
        finally:  # the worker goes on (and, after a recording failure, stops at its next batch)
            if not recorded and isinstance(outcome, Applied):
                self.unrecorded += outcome.count
            if attempt not in self._acks:
                self._acks[attempt] = self._queue_type(f"{self._outcomes}-ack-{attempt}", client=self._client)
            self._acks[attempt].put(answer)
        if self.failure is not None and self.unrecorded:
            batch_unrecorded(self.unrecorded)
            self.unrecorded = 0

    def _record(self, index: int, unit: Unit, attempt: str, worker: str, outcome: Outcome,
                counts: dict[str, Any]) -> None:
        previous = self.attempts.get(index)
        self.attempts[index] = (attempt, worker)
        # Dask runs the unit again: the last worker was lost (one lost before it counted adds nothing to know)
        if previous is not None and previous[0] != attempt and index not in self.lost:
            before, report = self.carried.get(index, (0, 0)), unit.report
            self.lost[index] = _Lost(previous[1], report.matched, report.changed - before[0],
                                     (report.changed, report.blocked))
        if index in self.lost:
            if isinstance(outcome, Started):
                self.lost[index].started = outcome  # recorded once this attempt has counted
                return
            self._record_loss(index, unit, counts["matched"] if isinstance(outcome, Applied | Skipped | HeldIds |
                                                                           Finished) else None)
        restore(unit.report, counts, self.carried.get(index, (0, 0)))
        unit.started = True
        self.record(unit, outcome)
        if isinstance(outcome, Finished | Failed):
            self.ended.add(index)

    def _record_loss(self, index: int, unit: Unit, left: int | None) -> None:
        """The lost attempt's end (rule_failed WorkerLost), then the next attempt's start.

        What the lost attempt changed after its last recorded batch is what its count leaves unexplained: it had
        counted `matched`, recorded `own_changed`, and the next attempt finds `left`.
        """
        lost = self.lost.pop(index)
        unseen = max(0, lost.matched - lost.own_changed - left) if left is not None else 0
        changed, blocked = lost.carried[0] + unseen, lost.carried[1]
        message = (f"the worker running this unit ({lost.worker}) was lost; the unit runs again on another "
                   "worker, which checks every record again")
        if unseen:
            message += (f"; {unseen} records it changed after its last recorded batch are not named in this log "
                        f"(it counted {lost.matched} and recorded {lost.own_changed}; {left} were left)")
        unit.report.changed, unit.report.blocked = changed, blocked
        self.record(unit, Failed("WorkerLost", message))
        self.carried[index] = (changed, blocked)
        if lost.started is not None:
            self.record(unit, lost.started)

    def unit_failed(self, index: int, error: BaseException | None) -> None:
        """A unit's task failed for good (KilledWorker after Dask's retries, say): record it as the unit's failure."""
        if index in self.lost:
            self._record_loss(index, self.units[index], None)
        if index in self.ended:
            return
        unit = self.units[index]
        error_class, message = error_summary(error) if error else ("Unknown", "the task failed")
        if not unit.started:
            unit.started = True
            self.record(unit, starting(unit.work, unit.report))
        unit.report.status, unit.report.error = ERROR, message
        self.record(unit, Failed(error_class, message))
        self.ended.add(index)


def _keyless(work: RuleWork) -> RuleWork:
    return replace(work, action=replace(work.action, hmac_key=None))


def _refuse_literal_secrets(config: Config) -> None:
    """Task arguments pass through the scheduler (and its logs): a secret written into the config may not go."""
    if config.pseudonym_key is not None and not isinstance(config.pseudonym_key, EnvRef):
        raise ConfigError("is written into the config; with a Dask executor the config travels to the workers: "
                          "write ${NAME} and set NAME where the coordinator and the workers run",
                          source=str(config.path), key="secrets.pseudonym_key")
    for name, connector in config.connectors.items():
        for option, value in connector.options.items():
            if isinstance(value, str) and "://" in value and _holds_secret(value):
                raise ConfigError("holds a password; with a Dask executor the config travels to the workers: "
                                  "write the URL as ${NAME} and set NAME where the workers run",
                                  source=str(config.path), key=f"connectors.{name}.{option}")


SECRET_PARAMETERS = ("pass", "secret", "token", "key", "credential")  # parts of query parameter names


def _holds_secret(url: str) -> bool:
    """A password in the user part, or a query parameter that may carry one (`password`, `sslpassword`, a token)."""
    parts = urlsplit(url)
    return bool(parts.password) or any(part in name.lower() for name in parse_qs(parts.query, keep_blank_values=True)
                                       for part in SECRET_PARAMETERS)
