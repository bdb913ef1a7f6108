"""Executing one work unit against its store: assess, change batch by batch, record what happened.

Rules and erasure requests take this one path: one stop signal, one exception handler, one isolation of
refused records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import structlog

from retention.config import Config
from retention.connector import Backlog, Connector
from retention.errors import RetentionError
from retention.model import Counts, Selection
from retention.pacing import Pace
from retention.progress import Progress
from retention.redact import error_summary
from retention.report import ERROR, INTERRUPTED, OVER_THRESHOLD, RuleReport
from retention.stores import Stores
from retention.timeutil import rfc3339
from retention.units import RuleWork, threshold_reason, with_registry

log = structlog.get_logger("retention")
LOCAL = "local"  # the worker named in the evidence of batches applied in the coordinator's own process


class Interrupted(BaseException):
    """A stop was asked for (SIGTERM, SIGINT): raised between batches, so no batch is ever half-applied."""


def report_for(work: RuleWork) -> RuleReport:
    rule = work.rule
    cutoff = work.selection.age.cutoff if work.selection.age else None
    return RuleReport(rule.name, rule.policy, rule.connector, rule.target, work.action.kind, cutoff,
                      request=work.request)


def assess(connectors: Stores, work: RuleWork, report: RuleReport) -> tuple[RuleWork, Counts | None]:
    """Check the target and count; fill the report. No counts when the rule cannot go on."""
    connector = connectors[work.rule.connector]
    problems = connector.check(work.selection, work.action)
    if work.selection.held.problem:
        problems.append(work.selection.held.problem)
    if problems:
        report.status, report.error = ERROR, "; ".join(problems)
        return work, None
    work = with_registry(work, connectors)
    counts = connector.count(work.selection)
    report.total, report.matched, report.held, report.unknown_age = (counts.total, counts.matched, counts.held,
                                                                     counts.unknown_age)
    report.statement = connector.statement(work.selection, work.action)
    if counts.held:  # what keeps them: the holds in scope, else the store's own lock (S3 Object Lock)
        erasure = work.selection.erasure
        report.held_by = work.selection.held.holding(erasure.client_id if erasure else None) or (
            f"{work.rule.connector}'s own lock (Object Lock)",)
    # a shard's rule was judged whole before any shard ran (retention.sharding); a request's never is
    whole = work.request is None and work.selection.shard is None
    if whole and (reason := threshold_reason(work.rule, counts, work.ceiling)):
        report.status, report.error = OVER_THRESHOLD, reason
    return work, counts


# -- what executing a unit yields: outcomes, in order; the coordinator turns them into the audit log ------------


@dataclass(frozen=True)
class Started:
    """The unit began: its cutoff and the holds in its scope."""

    cutoff: str | None
    holds: tuple[str, ...]


def starting(work: RuleWork, report: RuleReport) -> Started:
    return Started(rfc3339(report.cutoff) if report.cutoff else None, work.selection.held.holds)


@dataclass(frozen=True)
class Skipped:
    """A safety threshold stopped the unit before it changed anything."""

    reason: str
    matched: int
    total: int


@dataclass(frozen=True)
class Applied:
    """One batch committed: how many records, named by keyed hash when record ids are hashed."""

    count: int
    ids: tuple[str, ...]
    partition: str | None = None  # the batch was this whole partition, dropped
    worker: str = LOCAL  # who applied it: "local" (this process), or a Dask worker's address


@dataclass(frozen=True)
class HeldIds:
    """Keyed hashes of records legal holds keep, one chunk."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class Finished:
    """The unit ended; its counts are in its report."""


@dataclass(frozen=True)
class Failed:
    """The unit failed or was interrupted; the run goes on (or, interrupted, stops after this)."""

    error_class: str
    message: str


Outcome = Started | Skipped | Applied | HeldIds | Finished | Failed


@dataclass
class Executor:
    """Runs units (a rule, or a rule serving one erasure request) the same way: one path, one stop signal.

    It changes the store and yields what happened; it never writes the audit log, never holds the signing key.
    """

    connectors: Stores
    id_key: bytes | None  # the record-id key (derived), to name records by keyed hash
    config: Config
    dry_run: bool
    pace: Pace  # the stop request, the run's time budget, the replicas' lag: consulted between batches
    progress: Progress
    worker: str = LOCAL  # where this executor runs, named in each batch's evidence

    def should_stop(self) -> bool:
        return self.pace.should_stop()

    def _between_batches(self, store: object) -> Callable[..., bool]:
        """What a store asks before each batch: stop now? Before all but the first, it waits while the store's
        replicas lag (no new batch starts meanwhile). With `wait=False` it never waits: true means "not now", and a
        store that asks so records the batch it has committed before it asks again, waiting."""
        first = True

        def should_stop(wait: bool = True) -> bool:
            nonlocal first
            if self.should_stop():
                return True
            if first:
                first = False
                return False
            if not wait:
                return self.pace.must_wait(store)
            self.pace.before_next_batch(store)
            return self.should_stop()

        return should_stop

    def execute(self, work: RuleWork, report: RuleReport) -> Iterator[Outcome]:
        """Assess, then change batch by batch; a failure is this unit's own, and the run goes on.

        A stop request ends the unit between batches: it yields its interruption, then raises Interrupted.
        """
        rule = work.rule
        structlog.contextvars.bind_contextvars(rule=rule.name, connector=rule.connector, request=work.request)
        yield starting(work, report)
        started = time.monotonic()
        try:
            yield from self._execute(work, report, started)
        except (Interrupted, KeyboardInterrupt):
            report.status = INTERRUPTED
            report.error = self.pace.reason
            report.duration_ms = int((time.monotonic() - started) * 1000)
            log.error("rule_failed", error_class="Interrupted", error=report.error, changed=report.changed)
            yield Failed("Interrupted", report.error)
            raise
        except Exception as exc:  # whatever it is, it is this unit's failure, never the run's crash
            error_class, message = error_summary(exc)
            if isinstance(exc, TargetProblem):
                error_class = "TargetProblem"
            report.status, report.error = ERROR, message
            report.duration_ms = int((time.monotonic() - started) * 1000)
            log.error("rule_failed", error_class=error_class, error=message, changed=report.changed)
            yield Failed(error_class, message)
        finally:
            structlog.contextvars.unbind_contextvars("rule", "connector", "request")

    def _execute(self, work: RuleWork, report: RuleReport, started: float) -> Iterator[Outcome]:
        rule = work.rule
        connector = self.connectors[rule.connector]
        work, counts = assess(self.connectors, work, report)
        if counts is None:
            raise TargetProblem(report.error or "")
        if report.status == OVER_THRESHOLD or self.dry_run:  # nothing changes: the backlog is what was counted
            report.remaining, report.oldest_expired = counts.matched, counts.oldest
        if report.status == OVER_THRESHOLD:
            log.warning("rule_skipped", reason=report.error)
            yield Skipped(report.error or "", counts.matched, counts.total)
            return
        refusals: dict[str, int] = {}
        unsettled = 0

        def work_left() -> bool:  # records the count found that no batch has settled yet
            return report.changed + report.blocked + unsettled < counts.matched

        if not self.dry_run:
            self.progress.start(rule.name, counts.matched)
            for batch in connector.apply(work.selection, work.action, batch_size=self.config.batch_size(rule),
                                         limit=counts.matched, id_key=self.id_key,
                                         should_stop=self._between_batches(connector)):
                if batch.blocked or batch.unsettled:
                    report.blocked += batch.blocked
                    unsettled += batch.unsettled
                    if batch.refusal:
                        refusals[batch.refusal] = refusals.get(batch.refusal, 0) + batch.blocked
                    continue
                self.progress.advance(batch.count)
                report.changed += batch.count
                yield Applied(batch.count, batch.ids, batch.partition, self.worker)
                log.debug("batch_applied", count=batch.count, changed=report.changed)
            self.progress.finish()
            if work_left() and self.should_stop():
                raise Interrupted  # every batch the store finished is in the log; no new one was started
        stopping = self.should_stop()  # a stop leaves no time for reads over the whole target
        if not self.dry_run and not stopping:  # the backlog, counted afresh (a request is done only when nothing
            try:                                  # of it is left; not counted, it stays pending)
                report.remaining, report.oldest_expired = backlog(connector, work.selection)
            except RetentionError as exc:  # the changes stand and are recorded: only the measure is missing
                log.warning("backlog_not_counted", error=error_summary(exc)[1])
        if refusals or unsettled:
            raise RecordsRefused(_refused_message(rule.target, report.blocked, refusals, unsettled))
        if self.id_key and counts.held and not stopping:  # the held records, named by keyed hash in chunks
            for chunk in connector.held_ids(work.selection, self.config.batch_size(rule), self.id_key):
                yield HeldIds(chunk)
        report.duration_ms = int((time.monotonic() - started) * 1000)  # before Finished: it is recorded
        yield Finished()
        log.info("rule_finished", matched=report.matched, changed=report.changed, held=report.held,
                 unknown_age=report.unknown_age)


def backlog(connector: Connector, selection: Selection) -> tuple[int, datetime | None]:
    """What the rule left: the store's own cheaper count where it has one, else a whole count."""
    if isinstance(connector, Backlog):
        return connector.backlog(selection)
    counts = connector.count(selection)
    return counts.matched, counts.oldest


def _refused_message(target: str, blocked: int, refusals: dict[str, int], unsettled: int) -> str:
    """Why a rule ended in error although its other records were changed: what the store refused."""
    causes = "; ".join(f"{count} x {reason}" for reason, count in sorted(refusals.items()))
    message = f"the store refused to change {blocked} records of {target} ({causes})" if blocked else ""
    if unsettled:
        message += ("; " if message else "") + (f"{unsettled} records of {target} in refused batches were left for "
                                                "the next run (isolation budget spent)")
    return message + "; every other record was changed"


class RecordsRefused(RetentionError):
    """The store refused to change some records of the rule (isolated and counted as blocked)."""


class TargetProblem(RetentionError):
    """The rule's target failed its checks (the message names fields and tables)."""
