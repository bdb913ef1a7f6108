"""The coordinator of a run: keys, locks, holds read under the lock, the audit log, the WORM copy, metrics."""

from __future__ import annotations

import getpass
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from retention import __version__
from retention.approval import DEFAULT_TOLERANCE, Approval, stores_identity
from retention.audit import AuditWriter, fingerprint, load_private_key
from retention.audit.events import (
    BatchApplied,
    RuleFailed,
    RuleFinished,
    RuleSkipped,
    RuleStarted,
    RunFiles,
    RunFinished,
    RunStarted,
)
from retention.audit.timestamp import Authority, check_url, load_ca, stamp_runs
from retention.audit.writer import ChainHead, run_files
from retention.config import Config
from retention.config.model import SERIAL, THREADS
from retention.dispatch import Lanes, LocalLanes, Unit
from retention.errors import AuditError, ConfigError, RetentionError, UsageError
from retention.execute import (
    Applied,
    Executor,
    Finished,
    HeldIds,
    Interrupted,
    Outcome,
    Skipped,
    Started,
    assess,
    report_for,
)
from retention.holds import load_holds
from retention.lock import host_lock, run_lock
from retention.metrics import write_metrics
from retention.pacing import Pace
from retention.progress import Progress, Silent
from retention.redact import error_summary
from retention.report import ERROR, INTERRUPTED, OVER_THRESHOLD, Report, RuleReport
from retention.requests import (
    RequestOutcome,
    applies,
    mark,
    no_rule_problem,
    read_requests,
)
from retention.secrets import PseudonymKeys, pseudonym_keys
from retention.settings import Environment
from retention.sharding import reports_of, split
from retention.stores import Stores, open_connectors
from retention.timeutil import rfc3339
from retention.units import RuleWork, compile_rule, request_work, select_rules

if TYPE_CHECKING:  # botocore only when a WORM copy is configured: a PostgreSQL job never loads it
    from retention.audit.worm import WormCopy

log = structlog.get_logger("retention")
REQUESTS = "[requests]"  # the `rule` of a failure that belongs to the requests table or one request, not a rule


Clock = Callable[[], datetime]



def run(config: Config, env: Environment, now: datetime, clock: Clock, *, rule_names: Sequence[str] = (),
        dry_run: bool = False, clock_override: bool = False, should_stop: Callable[[], bool] = lambda: False,
        progress: Progress | None = None, approval: Approval | None = None,
        tolerance: float = DEFAULT_TOLERANCE) -> Report:
    """Enforce the rules at `now`, batch by batch, writing and signing the audit log as it goes.

    With an `approval`, the whole run is first held to it (`_refused`): when it may not go ahead, every rule is
    skipped, unchanged, and the run exits 3.
    """
    if now > clock():
        raise UsageError(f"--now {rfc3339(now)} is later than the current time; a run may not expire records early")
    rules = select_rules(config, rule_names)
    keys = _run_keys(config, env)
    id_key = keys.record_ids
    authority = _timestamp_authority(config, env)

    assert config.audit is not None  # _run_keys has checked
    worm_config = config.audit.worm
    extra = [name for name in (worm_config.connector if worm_config else None, config.job.lock_connector) if name]
    with open_connectors(config, env, rules, also=extra) as connectors, run_lock(config.job.state_dir), \
            host_lock(connectors.host_lock(config.job.lock_connector)), ExitStack() as stack:
        holds = load_holds(config, connectors)  # read under the lock, just before anything changes
        works = [compile_rule(config, rule, now, keys.transform, holds) for rule in rules]
        run_id = uuid.uuid4().hex[:16]
        lanes = stack.enter_context(_lanes(config, run_id, keys))
        worm, remote_head, worm_error = _open_worm(config, connectors)
        try:
            audit = AuditWriter(config.audit.dir, run_id, clock(), clock, keys.signing, hashed_ids=id_key is not None,
                                remote_head=remote_head)
        except AuditError as exc:
            raise ConfigError(str(exc), source=str(config.path), key="audit.dir") from None
        structlog.contextvars.bind_contextvars(run_id=run_id)
        report = Report(now, is_run=True, dry_run=dry_run, run_id=run_id, audit_file=audit.path,
                        audit_copy_error=worm_error)
        audit.event(RunStarted(__version__, config.sha256, socket.gethostname(), _user(), rfc3339(now),
                               clock_override, dry_run, [rule.name for rule in rules],
                               fingerprint(keys.signing.public_key()), audit.previous_incomplete,
                               "hashed" if id_key else "none", approval.sha256 if approval else None))
        log.info("run_started", dry_run=dry_run, now=rfc3339(now), rules=len(rules),
                 previous_incomplete=audit.previous_incomplete)
        started = time.monotonic()
        pace = Pace(should_stop, clock=clock, budget=config.job.max_duration, max_lag=config.job.max_replica_lag)
        try:
            executor = Executor(connectors, id_key, config, dry_run, pace, progress or Silent())
            if approval:
                if _refused(approval, tolerance, config, env, connectors, works, audit, report):
                    return report
                works = [replace(work, ceiling=approval.ceiling(work.rule.name, tolerance)) for work in works]
            recorder = Recorder(audit, lanes)
            recorder.units(executor, works, report.rules)
            if config.requests:
                partial = {rule.name for rule in rules} != {rule.name for rule in config.rules}
                _serve_requests(config, executor, recorder, report, works, partial, clock)
        except (Interrupted, KeyboardInterrupt):
            report.interrupted = True  # the unit in flight has recorded its own interruption
        except Exception as exc:  # a defect of ours: recorded, and the log still signed with status failed
            report.errors.append(_unexpected(exc))
            log.error("run_failed", error=report.errors[-1])
        finally:
            report.out_of_time, report.replica_wait_seconds = pace.out_of_time, pace.paused_seconds
            _finish(audit, report, started, id_key is not None)
            if authority:  # before the WORM copy, so that the tokens go with the files they vouch for
                stamp_runs(authority, audit.names, keys.signing.public_key())
            if worm:
                _copy_to_worm(worm, audit, config.audit.dir, report, clock())
            if config.job.metrics_file:
                try:
                    write_metrics(config.job.metrics_file, report, config.job.state_dir, clock())
                except OSError as exc:
                    log.error("metrics_not_written", error=exc.strerror, path=str(config.job.metrics_file))
            structlog.contextvars.unbind_contextvars("run_id")
    return report


def _refused(approval: Approval, tolerance: float, config: Config, env: Environment, connectors: Stores,
             works: Sequence[RuleWork], audit: AuditWriter, report: Report) -> bool:
    """Count every rule as `plan` does (nothing changes); when the approval does not cover this run, skip them all.

    Counting first, for every rule, is what lets the run be refused whole: once one rule had started changing
    records, refusing another would leave half of a change nobody approved of as a whole.
    """
    reports = []
    for work in works:
        rule_report = report_for(work)
        try:
            _, counts = assess(connectors, work, rule_report)
        except RetentionError as exc:  # it would fail in the run too; the approval cannot judge it
            rule_report.status, rule_report.error, counts = ERROR, str(exc), None
        if counts is not None:
            rule_report.remaining, rule_report.oldest_expired = counts.matched, counts.oldest
        reports.append(rule_report)
    counted = {r.name: None if r.status == ERROR else r.matched for r in reports}
    refusals = approval.refusals(config, stores_identity(config, env), counted, tolerance)
    if not refusals:
        return False
    reason = f"refused under {approval.path.name}: " + "; ".join(refusals)
    log.error("run_refused", approval=str(approval.path), reason=reason)
    for work, rule_report in zip(works, reports, strict=True):
        rule = work.rule
        rule_report.status, rule_report.error = OVER_THRESHOLD, reason
        audit.event(RuleSkipped(rule.name, "approval", reason, rule_report.matched, rule_report.total,
                                str(rule.max_fraction), rule.max_records, *backlog(rule_report)))
        report.rules.append(rule_report)
    return True


def _serve_requests(config: Config, executor: Executor, recorder: Recorder, report: Report,
                    works: Sequence[RuleWork], partial: bool, clock: Clock) -> None:
    """Serve every pending erasure request through each rule able to find its records, then write back the outcome.

    Each (rule, request) pair is a unit of the same executor as the rules; one request's failure is recorded as
    that request's and the others still run.
    """
    audit = recorder.audit
    try:
        pending = read_requests(config, executor.connectors, pending_only=True)
    except Exception as exc:  # an unreadable table, or rows no request can be made of
        error_class, message = error_summary(exc)
        report.errors.append(f"erasure requests: {message}")
        audit.event(RuleFailed(REQUESTS, error_class, message, 0, 0))
        log.error("requests_unreadable", error=message)
        return
    for request in pending:
        if executor.should_stop():
            raise Interrupted
        outcome = RequestOutcome(request, partial=partial)
        report.requests.append(outcome)
        serving = [work for work in works if applies(work.rule, request)]
        problem = request.problem or (None if serving else no_rule_problem(request))
        if problem:
            outcome.errors.append(problem)
            audit.event(RuleFailed(REQUESTS, "RequestProblem", problem, 0, 0, request.id))
            log.error("request_refused", request=request.id, error=problem)
        if not problem:
            recorder.units(executor, [request_work(work, request) for work in serving], outcome.rules)
        if not executor.dry_run:
            try:
                mark(config, executor.connectors, outcome, audit.run_id, str(audit.path.resolve()), clock())
            except Exception as exc:
                outcome.errors.append(f"the outcome could not be written back: {error_summary(exc)[1]}")
        log.info("request_processed", request=request.id, status=outcome.status, rules=len(outcome.rules))


@dataclass
class Recorder:
    """Runs units in their lanes (`dispatch`) and turns what they yield into audit events: the one writer of the log
    and its sidecar."""

    audit: AuditWriter
    lanes: Lanes  # where the units run
    _held: dict[int, HeldNames] = field(default_factory=dict)  # per unit that started

    def units(self, executor: Executor, works: Sequence[RuleWork], reports: list[RuleReport]) -> None:
        """Run `works`, appending the report of each unit that started to `reports`, in the units' order."""
        units = [Unit(work, report_for(work)) for work in works]
        parallel = self.lanes.parallelism()
        if parallel > 1 and not executor.dry_run:
            units = split(units, executor.connectors, parallel, executor.config)
        try:
            self.lanes.run(units, executor, self.record)
        finally:
            reports.extend(reports_of(units))

    def record(self, unit: Unit, outcome: Outcome) -> None:
        rule, work, report, audit = unit.work.rule, unit.work, unit.report, self.audit
        if isinstance(outcome, Started):
            self._forget(unit)
            self._held[id(unit)] = HeldNames()
            shard = work.selection.shard
            audit.event(RuleStarted(rule.name, rule.connector, rule.target, work.action.kind, outcome.cutoff,
                                    list(outcome.holds), work.request, work.reason, shard.label if shard else None))
        elif isinstance(outcome, Skipped):
            audit.event(RuleSkipped(rule.name, "threshold", outcome.reason, outcome.matched, outcome.total,
                                    str(rule.max_fraction), rule.max_records, *backlog(report)))
        elif isinstance(outcome, Applied):
            digest = audit.record_ids("changed", rule.name, outcome.ids)[1] if audit.hashed_ids else None
            audit.event(BatchApplied(rule.name, work.action.kind, outcome.count, work.request, digest,
                                     outcome.partition, outcome.worker))
        elif isinstance(outcome, HeldIds):
            self._held[id(unit)].add(outcome.ids)
        elif isinstance(outcome, Finished):
            held, digest = None, None
            if audit.hashed_ids:  # written now, right before the event that accounts for them
                held, digest = audit.record_ids("held", rule.name, self._held[id(unit)].names())
            self._forget(unit)
            audit.event(RuleFinished(
                rule.name, report.total, report.matched, report.changed, report.held, report.blocked,
                report.unknown_age, report.duration_ms, work.request, *backlog(report), held, digest))
        else:
            self._forget(unit)
            audit.event(RuleFailed(report.name, outcome.error_class, outcome.message, report.changed,
                                   report.blocked, work.request, *backlog(report)))

    def _forget(self, unit: Unit) -> None:
        names = self._held.pop(id(unit), None)
        if names is not None:
            names.close()


def backlog(report: RuleReport) -> tuple[int | None, str | None]:
    """`remaining` and `oldest_expired` as the log writes them."""
    return report.remaining, rfc3339(report.oldest_expired) if report.oldest_expired else None


class HeldNames:
    """A unit's held records' names, kept aside (in an anonymous file: memory stays flat) until its rule_finished.

    Written to the sidecar as they came, other lanes' batches would fall between them and the event that accounts
    for them, and `audit verify` reads each event's lines in order.
    """

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None

    def add(self, names: Sequence[str]) -> None:
        if names:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="retention-held-")  # noqa: SIM115 - closed by close()
            self._file.write(("\n".join(names) + "\n").encode("ascii"))

    def names(self) -> Iterator[str]:
        if self._file is None:
            return
        self._file.seek(0)
        for line in self._file:
            yield line.decode("ascii").rstrip("\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextmanager
def _lanes(config: Config, run_id: str, keys: RunKeys) -> Iterator[Lanes]:
    """Where this run's units run: this process's threads, or the Dask cluster job.executor names."""
    executor = config.job.executor
    if executor is None or executor in (SERIAL, THREADS):
        yield LocalLanes(executor, config.job.workers)
        return
    from retention.remote import DaskLanes

    lanes = DaskLanes(executor, config, run_id, PseudonymKeys(keys.transform, keys.record_ids).fingerprint())
    try:
        yield lanes
    finally:
        lanes.close()


def _unexpected(exc: BaseException) -> str:
    error_class, message = error_summary(exc)
    return f"{error_class}: {message}"


def _open_worm(config: Config, connectors: Stores
               ) -> tuple[WormCopy | None, ChainHead | None, str | None]:
    """The WORM copy, if configured, and the newest run it holds (or why it could not be read)."""
    assert config.audit is not None
    settings = config.audit.worm
    if settings is None:
        return None, None, None
    from retention.audit.worm import WormCopy

    worm = WormCopy(connectors.object_store(settings.connector).object_client(), settings.bucket, settings.prefix,
                    settings.retain_days)
    try:
        return worm, worm.head(), None
    except AuditError as exc:
        return worm, None, str(exc)


def _finish(audit: AuditWriter, report: Report, started: float, hashed_ids: bool) -> None:
    """Write run_finished with the totals and sign the log."""
    structlog.contextvars.unbind_contextvars("rule", "connector", "request")
    units = [*report.rules, *(unit for outcome in report.requests for unit in outcome.rules)]
    totals = {name: sum(getattr(unit, name) for unit in units)
              for name in ("matched", "changed", "held", "unknown_age")}
    audit.event(RunFinished(report.status, report.exit_code, int((time.monotonic() - started) * 1000),
                            sum(unit.status in (ERROR, INTERRUPTED) for unit in units),
                            sum(unit.status == OVER_THRESHOLD for unit in units),
                            sum(outcome.failed for outcome in report.requests), **totals,
                            ids_sha256=audit.ids_sha256() if hashed_ids else None, errors=report.errors or None))
    audit.close()
    log.info("run_finished", status=report.status, exit_code=report.exit_code, audit_file=str(audit.path), **totals)


def _copy_to_worm(worm: WormCopy, audit: AuditWriter, directory: Path, report: Report, now: datetime) -> None:
    """Upload this run's files, and every earlier run the bucket is missing; a failure fails the run (exit 1).

    Earlier runs that died unsigned go too: this run's signed log chains to them, which seals their bytes, and
    the batches they applied must be preserved off the host like any other.
    """
    try:
        earlier = [path for run in run_files(directory) if run.name < audit.path.name
                   for path in RunFiles(run).existing()]
        worm.upload([*worm.missing(earlier), *audit.files()], now)
    except AuditError as exc:
        report.audit_copy_error = str(exc)
        log.error("audit_copy_failed", error=str(exc))


@dataclass(frozen=True)
class RunKeys:
    signing: Ed25519PrivateKey
    transform: bytes | None  # the hmac transform's key
    record_ids: bytes | None  # the audit sidecar's key, when record ids are hashed


def _run_keys(config: Config, env: Environment) -> RunKeys:
    """Every key a run needs, loaded before anything connects: a missing or unsafe one is exit 2."""
    if config.audit is None:
        raise ConfigError("`run` needs an [audit] table (dir, signing_key)", source=str(config.path), key="audit")
    if config.audit.signing_key is None:
        raise ConfigError("is required for `run`: the path of an Ed25519 private key (retention audit keygen)",
                          source=str(config.path), key="audit.signing_key")
    signing = load_private_key(Path(env.resolve(config.audit.signing_key, secret=False)))  # a path, not a secret
    pseudonyms = pseudonym_keys(config, env)
    return RunKeys(signing, pseudonyms.transform, pseudonyms.record_ids)


def _timestamp_authority(config: Config, env: Environment) -> Authority | None:
    """The configured TSA, read before anything connects: a wrong URL or an unreadable CA file is exit 2."""
    assert config.audit is not None
    settings = config.audit.timestamp
    if settings is None:
        return None
    try:
        url = check_url(env.resolve(settings.url))  # a secret: it may carry credentials
    except ValueError as exc:
        raise ConfigError(str(exc), source=str(config.path), key="audit.timestamp.url") from None
    try:
        roots = load_ca(Path(env.resolve(settings.ca_file, secret=False)))
    except ValueError as exc:
        raise ConfigError(str(exc), source=str(config.path), key="audit.timestamp.ca_file") from None
    return Authority(url, roots)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
