"""The verbs: `plan` (what each rule would do now) and `run` (do it, and write the signed audit log)."""

from __future__ import annotations

import getpass
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from retention import __version__
from retention.audit import AuditWriter, fingerprint, load_private_key
from retention.audit.worm import WormCopy
from retention.audit.writer import ChainHead, run_files
from retention.clients import judge
from retention.config import Config, Hold, Rule
from retention.connector import Connector, connector_type
from retention.errors import AuditError, ConfigError, KeyProblem, RetentionError, UsageError
from retention.holds import held_scope, load_holds
from retention.lock import host_lock, run_lock
from retention.metrics import write_metrics
from retention.model import Action, AgeCondition, ClientCondition, ClientRegistry, Counts, Selection
from retention.privileges import missing_grants
from retention.progress import Progress, Silent
from retention.redact import error_summary
from retention.report import ERROR, INTERRUPTED, OVER_THRESHOLD, Report, RuleReport
from retention.requests import (
    ErasureRequest,
    RequestOutcome,
    adapt,
    mark,
    no_rule_problem,
    read_requests,
    serving_rules,
)
from retention.secrets import RECORD_ID_LABEL, TRANSFORM_LABEL, derive
from retention.settings import Environment
from retention.timeutil import rfc3339

log = structlog.get_logger("retention")
Clock = Callable[[], datetime]
MIN_SECRET_BYTES = 32  # of the pseudonym root secret: HMAC keys shorter than the hash are guessable
PLAN_KEY = bytes(32)  # stands in for the HMAC key in statements `plan` shows: plan needs no secret


@dataclass(frozen=True)
class RuleWork:
    """One rule, compiled for its store: the unit a run executes."""

    rule: Rule
    selection: Selection
    action: Action
    request: str | None = None  # set: this unit serves one erasure request (no thresholds; counted again after)
    reason: str | None = None


def request_work(work: RuleWork, request: ErasureRequest) -> RuleWork:
    """The same rule, aimed at one erasure request's records."""
    selection, action = adapt(work.selection, work.action, work.rule, request)
    return RuleWork(work.rule, selection, action, request.id, request.reason)


def select_rules(config: Config, names: Sequence[str]) -> list[Rule]:
    for name in names:
        config.rule(name)  # raises with the known names
    return [rule for rule in config.rules if not names or rule.name in names]


def compile_rule(config: Config, rule: Rule, now: datetime, hmac_key: bytes | None,
                 holds: Sequence[Hold] | None = None) -> RuleWork:
    """The rule's selection and action as of `now`: cutoffs computed here, once, in UTC."""
    try:
        age = AgeCondition(rule.expire.field, rule.expire.after.before(now)) \
            if rule.expire.after and rule.expire.field else None
        client = None
        if rule.expire.client_field and config.clients and rule.expire.grace:
            client = ClientCondition(rule.expire.client_field, config.clients, rule.expire.grace.before(now))
    except (OverflowError, ValueError):
        raise UsageError(f"--now {rfc3339(now)} is too early for rule {rule.name!r}: its cutoff would fall before "
                         "year 1") from None
    scope = held_scope(config.holds if holds is None else holds, rule, now)
    selection = Selection(rule.target, rule.key, age, client, scope, rule.marker,
                          dict(rule.scope), now)
    return RuleWork(rule, selection, Action(rule.action, rule.marker, rule.transforms, now, hmac_key))


class Stores(dict[str, Connector]):
    """The connectors one verb opened, by name, and the client registry they were asked for once per verb."""

    def __init__(self) -> None:
        super().__init__()
        self._registry_rows: dict[ClientRegistry, list[Mapping[str, Any]]] = {}

    def registry_rows(self, registry: ClientRegistry) -> list[Mapping[str, Any]]:
        if registry not in self._registry_rows:
            self._registry_rows[registry] = list(self[registry.connector].read_rows(
                registry.table, [registry.id_field, registry.status_field, registry.ended_at_field]))
        return self._registry_rows[registry]


def with_registry(work: RuleWork, connectors: Stores) -> RuleWork:
    """Give a rule the registry's verdict on clients when the registry lives in another store than its records.

    The registry is read once per run; each rule judges it against its own grace period.
    """
    client = work.selection.client
    if client is None or client.registry.connector == work.rule.connector:
        return work
    states = judge(connectors.registry_rows(client.registry), client.registry, client.ended_before)
    return replace(work, selection=replace(work.selection, client=replace(client, states=states)))


def threshold_reason(rule: Rule, counts: Counts) -> str | None:
    if rule.max_records is not None and counts.matched > rule.max_records:
        return f"{counts.matched} records would change, more than max_records = {rule.max_records}"
    if rule.max_fraction < 1 and counts.matched > rule.max_fraction * counts.total:
        return (f"{counts.matched} of {counts.total} records would change, more than "
                f"max_fraction = {rule.max_fraction}")
    return None


@contextmanager
def open_connectors(config: Config, env: Environment, rules: Sequence[Rule], also: Sequence[str] = ()
                    ) -> Iterator[Stores]:
    """The connectors these rules need, with their `${NAME}` options resolved (an unset one is a config error)."""
    names = {rule.connector for rule in rules} | set(also)
    if config.holds_source:
        names.add(config.holds_source.connector)
    if config.requests:
        names.add(config.requests.connector)
    if config.clients and any(rule.client_field for rule in rules):
        names.add(config.clients.connector)
    opened = Stores()
    try:
        for name in sorted(names):
            settings = config.connectors[name]
            options = {key: env.resolve(value) if value is not None and not isinstance(value, int | bool) else value
                       for key, value in settings.options.items()}
            kind = connector_type(settings.type, source=str(config.path), key=f"connectors.{name}.type")
            try:
                opened[name] = kind(name, options)
            except ConfigError as exc:
                raise ConfigError(str(exc), source=str(config.path)) from None
        yield opened
    finally:
        for connector in opened.values():
            connector.close()


def _rule_report(work: RuleWork) -> RuleReport:
    rule = work.rule
    cutoff = work.selection.age.cutoff if work.selection.age else None
    return RuleReport(rule.name, rule.policy, rule.connector, rule.target, work.action.kind, cutoff,
                      request=work.request)


def _assess(connectors: Stores, work: RuleWork, report: RuleReport) -> tuple[RuleWork, Counts | None]:
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
    if work.request is None and (reason := threshold_reason(work.rule, counts)):
        report.status, report.error = OVER_THRESHOLD, reason
    return work, counts


def plan(config: Config, env: Environment, now: datetime, rule_names: Sequence[str] = (),
         progress: Progress | None = None) -> Report:
    """What each rule would change at `now`. Reads only; needs no signing key and no pseudonym key."""
    rules = select_rules(config, rule_names)
    report = Report(now)
    with open_connectors(config, env, rules) as connectors:
        holds = load_holds(config, connectors)
        for rule in rules:
            work = compile_rule(config, rule, now, PLAN_KEY, holds)
            rule_report = _rule_report(work)
            report.rules.append(rule_report)
            started = time.monotonic()
            (progress or Silent()).start(f"counting {rule.name}", 1)
            try:
                _assess(connectors, work, rule_report)
            except RetentionError as exc:
                rule_report.status, rule_report.error = ERROR, str(exc)
            finally:
                (progress or Silent()).advance(1)
                (progress or Silent()).finish()
            rule_report.duration_ms = int((time.monotonic() - started) * 1000)
            log.info("rule_planned", rule=rule.name, connector=rule.connector, status=rule_report.status,
                     matched=rule_report.matched, held=rule_report.held, unknown_age=rule_report.unknown_age)
    return report


class Interrupted(BaseException):
    """A stop was asked for (SIGTERM, SIGINT): raised between batches, so no batch is ever half-applied."""


def run(config: Config, env: Environment, now: datetime, clock: Clock, *, rule_names: Sequence[str] = (),
        dry_run: bool = False, clock_override: bool = False, should_stop: Callable[[], bool] = lambda: False,
        progress: Progress | None = None) -> Report:
    """Enforce the rules at `now`, batch by batch, writing and signing the audit log as it goes."""
    if now > clock():
        raise UsageError(f"--now {rfc3339(now)} is later than the current time; a run may not expire records early")
    rules = select_rules(config, rule_names)
    keys = _run_keys(config, env)
    id_key = keys.record_ids

    assert config.audit is not None  # _run_keys has checked
    worm_config = config.audit.worm
    extra = [name for name in (worm_config.connector if worm_config else None, config.job.lock_connector) if name]
    with open_connectors(config, env, rules, also=extra) as connectors, run_lock(config.job.state_dir), \
            host_lock(connectors.get(config.job.lock_connector or "")):
        holds = load_holds(config, connectors)  # read under the lock, just before anything changes
        works = [compile_rule(config, rule, now, keys.transform, holds) for rule in rules]
        run_id = uuid.uuid4().hex[:16]
        worm, remote_head, worm_error = _open_worm(config, connectors)
        try:
            audit = AuditWriter(config.audit.dir, run_id, clock(), clock, keys.signing, hashed_ids=id_key is not None,
                                remote_head=remote_head)
        except AuditError as exc:
            raise ConfigError(str(exc), source=str(config.path), key="audit.dir") from None
        structlog.contextvars.bind_contextvars(run_id=run_id)
        report = Report(now, is_run=True, dry_run=dry_run, run_id=run_id, audit_file=audit.path,
                        audit_copy_error=worm_error)
        audit.event("run_started", tool_version=__version__, config_sha256=config.sha256, host=socket.gethostname(),
                    user=_user(), now=rfc3339(now), clock_override=clock_override, dry_run=dry_run,
                    rules=[rule.name for rule in rules], public_key_fingerprint=fingerprint(keys.signing.public_key()),
                    previous_incomplete=audit.previous_incomplete, record_ids="hashed" if id_key else "none")
        log.info("run_started", dry_run=dry_run, now=rfc3339(now), rules=len(rules),
                 previous_incomplete=audit.previous_incomplete)
        started = time.monotonic()
        try:
            executor = Executor(connectors, audit, id_key, config, dry_run, should_stop, progress or Silent())
            for work in works:
                if should_stop():
                    raise Interrupted
                rule_report = _rule_report(work)
                report.rules.append(rule_report)
                executor.enforce(work, rule_report)
            if config.requests:
                partial = {rule.name for rule in rules} != {rule.name for rule in config.rules}
                _serve_requests(config, executor, report, [compile_rule(config, rule, now, keys.transform, holds)
                                                           for rule in rules], partial, clock)
        except (Interrupted, KeyboardInterrupt):
            report.interrupted = True  # the unit in flight has recorded its own interruption
        except Exception as exc:  # a defect of ours: recorded, and the log still signed with status failed
            report.errors.append(_unexpected(exc))
            log.error("run_failed", error=report.errors[-1])
        finally:
            _finish(audit, report, started, id_key is not None)
            if worm:
                _copy_to_worm(worm, audit, config.audit.dir, report, clock())
            if config.job.metrics_file:
                try:
                    write_metrics(config.job.metrics_file, report, config.job.state_dir, clock())
                except OSError as exc:
                    log.error("metrics_not_written", error=exc.strerror, path=str(config.job.metrics_file))
            structlog.contextvars.unbind_contextvars("run_id")
    return report


def _serve_requests(config: Config, executor: Executor, report: Report, works: Sequence[RuleWork], partial: bool,
                    clock: Clock) -> None:
    """Serve every pending erasure request through each rule able to find its records, then write back the outcome.

    Each (rule, request) pair is a unit of the same executor as the rules; one request's failure is recorded as
    that request's and the others still run.
    """
    audit = executor.audit
    try:
        pending = read_requests(config, executor.connectors, pending_only=True)
    except Exception as exc:  # an unreadable table, or rows no request can be made of
        error_class, message = error_summary(exc)
        report.errors.append(f"erasure requests: {message}")
        audit.event("rule_failed", rule="[requests]", error_class=error_class, message=message, changed=0)
        log.error("requests_unreadable", error=message)
        return
    for request in pending:
        if executor.should_stop():
            raise Interrupted
        outcome = RequestOutcome(request, partial=partial)
        report.requests.append(outcome)
        serving = [work for work in works if work.rule in serving_rules([work.rule], request)]
        problem = request.problem or (None if serving else no_rule_problem(request))
        if problem:
            outcome.errors.append(problem)
            audit.event("rule_failed", rule="[requests]", request=request.id, error_class="RequestProblem",
                        message=problem, changed=0)
            log.error("request_refused", request=request.id, error=problem)
        for work in serving if not problem else ():
            unit = request_work(work, request)
            rule_report = _rule_report(unit)
            outcome.rules.append(rule_report)
            executor.enforce(unit, rule_report)
        if not executor.dry_run:
            try:
                mark(config, executor.connectors, outcome, audit.run_id, str(audit.path.resolve()), clock())
            except Exception as exc:
                outcome.errors.append(f"the outcome could not be written back: {error_summary(exc)[1]}")
        log.info("request_processed", request=request.id, status=outcome.status, rules=len(outcome.rules))


def _unexpected(exc: BaseException) -> str:
    error_class, message = error_summary(exc)
    return f"{error_class}: {message}"


def _open_worm(config: Config, connectors: dict[str, Connector]
               ) -> tuple[WormCopy | None, ChainHead | None, str | None]:
    """The WORM copy, if configured, and the newest run it holds (or why it could not be read)."""
    assert config.audit is not None
    settings = config.audit.worm
    if settings is None:
        return None, None, None
    worm = WormCopy(getattr(connectors[settings.connector], "client", None), settings.bucket, settings.prefix,
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
    extra: dict[str, object] = {"ids_sha256": audit.ids_sha256()} if hashed_ids else {}
    if report.errors:
        extra["errors"] = report.errors
    audit.event("run_finished", status=report.status, exit_code=report.exit_code,
                duration_ms=int((time.monotonic() - started) * 1000),
                rules_failed=sum(unit.status in (ERROR, INTERRUPTED) for unit in units),
                rules_skipped=sum(unit.status == OVER_THRESHOLD for unit in units),
                requests_failed=sum(outcome.failed for outcome in report.requests), **totals, **extra)
    audit.close()
    log.info("run_finished", status=report.status, exit_code=report.exit_code, audit_file=str(audit.path), **totals)


def _copy_to_worm(worm: WormCopy, audit: AuditWriter, directory: Path, report: Report, now: datetime) -> None:
    """Upload this run's files, and every earlier run the bucket is missing; a failure fails the run (exit 1).

    Earlier runs that died unsigned go too: this run's signed log chains to them, which seals their bytes, and
    the batches they applied must be preserved off the host like any other.
    """
    try:
        earlier = [path for run in run_files(directory) if run.name < audit.path.name
                   for path in (run, run.with_name(run.name + ".sig"), run.with_name(run.name[:-6] + ".ids"))
                   if path.exists()]
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
    root = env.resolve(config.pseudonym_key) if config.pseudonym_key else None
    if root is not None and len(root.encode("utf-8")) < MIN_SECRET_BYTES:
        raise KeyProblem(f"is {len(root.encode('utf-8'))} bytes; pseudonyms and record ids need a secret of at "
                         f"least {MIN_SECRET_BYTES} bytes: make one with `openssl rand -hex 32`",
                         source=str(config.path), key="secrets.pseudonym_key")
    hashed = root is not None and config.audit.record_ids == "hashed"
    return RunKeys(signing, derive(root, TRANSFORM_LABEL) if root else None,
                   derive(root, RECORD_ID_LABEL) if root and hashed else None)


@dataclass
class Executor:
    """Runs units (a rule, or a rule serving one erasure request) the same way: one path, one stop signal."""

    connectors: Stores
    audit: AuditWriter
    id_key: bytes | None
    config: Config
    dry_run: bool
    should_stop: Callable[[], bool]
    progress: Progress

    def enforce(self, work: RuleWork, report: RuleReport) -> None:
        """Assess, then change batch by batch; a failure is recorded as this unit's and the run goes on.

        A stop request ends the unit between batches: it records its own interruption, then re-raises.
        """
        rule, audit = work.rule, self.audit
        request = {"request": work.request, "reason": work.reason} if work.request else {}
        structlog.contextvars.bind_contextvars(rule=rule.name, connector=rule.connector, request=work.request)
        audit.event("rule_started", rule=rule.name, connector=rule.connector, target=rule.target,
                    action=work.action.kind, cutoff=rfc3339(report.cutoff) if report.cutoff else None,
                    holds=list(work.selection.held.holds), **request)
        started = time.monotonic()
        try:
            self._enforce(work, report, started)
        except (Interrupted, KeyboardInterrupt):
            report.status = INTERRUPTED
            report.error = "interrupted; the batch in flight was committed or rolled back whole"
            self._failed(work, report, "Interrupted", report.error, started)
            raise
        except Exception as exc:  # whatever it is, it is this unit's failure, never the run's crash
            error_class, message = error_summary(exc)
            if isinstance(exc, _RuleProblem):
                error_class = "TargetProblem"
            report.status, report.error = ERROR, message
            self._failed(work, report, error_class, message, started)
        finally:
            structlog.contextvars.unbind_contextvars("rule", "connector", "request")

    def _enforce(self, work: RuleWork, report: RuleReport, started: float) -> None:
        rule, audit = work.rule, self.audit
        request: dict[str, object] = {"request": work.request} if work.request else {}
        connector = self.connectors[rule.connector]
        work, counts = _assess(self.connectors, work, report)
        if counts is None:
            raise _RuleProblem(report.error or "")
        if report.status == OVER_THRESHOLD:
            audit.event("rule_skipped", rule=rule.name, reason="threshold", detail=report.error,
                        matched=counts.matched, total=counts.total, max_fraction=str(rule.max_fraction),
                        max_records=rule.max_records)
            log.warning("rule_skipped", reason=report.error)
            return
        refusals: dict[str, int] = {}
        unsettled = 0
        if not self.dry_run:
            self.progress.start(rule.name, counts.matched)
            for batch in connector.apply(work.selection, work.action, batch_size=self.config.batch_size(rule),
                                         limit=counts.matched, id_key=self.id_key, should_stop=self.should_stop):
                if batch.blocked or batch.unsettled:
                    report.blocked += batch.blocked
                    unsettled += batch.unsettled
                    if batch.refusal:
                        refusals[batch.refusal] = refusals.get(batch.refusal, 0) + batch.blocked
                    continue
                self.progress.advance(batch.count)
                fields = {}
                if self.id_key:
                    fields["ids_digest"] = audit.record_ids("changed", rule.name, batch.ids)[1]
                report.changed += batch.count
                audit.event("batch_applied", rule=rule.name, action=work.action.kind, count=batch.count,
                            **request, **fields)
                log.debug("batch_applied", count=batch.count, changed=report.changed)
            self.progress.finish()
            if self.should_stop():
                raise Interrupted  # every batch the store finished is in the log; no new one was started
        if refusals or unsettled:
            raise RecordsRefused(_refused_message(rule.target, report.blocked, refusals, unsettled))
        if work.request is not None:  # a request is done only when a fresh count finds nothing of it left
            report.remaining = counts.matched if self.dry_run else connector.count(work.selection).matched
            request["remaining"] = report.remaining
        held_fields = self._record_held(connector, work, counts) if self.id_key else {}
        report.duration_ms = int((time.monotonic() - started) * 1000)
        audit.event("rule_finished", rule=rule.name, total=report.total, matched=report.matched,
                    changed=report.changed, held=report.held, blocked=report.blocked, unknown_age=report.unknown_age,
                    duration_ms=report.duration_ms, **request, **held_fields)
        log.info("rule_finished", matched=report.matched, changed=report.changed, held=report.held,
                 unknown_age=report.unknown_age, duration_ms=report.duration_ms)

    def _failed(self, work: RuleWork, report: RuleReport, error_class: str, message: str, started: float) -> None:
        report.duration_ms = int((time.monotonic() - started) * 1000)
        request = {"request": work.request} if work.request else {}
        self.audit.event("rule_failed", rule=report.name, error_class=error_class, message=message,
                         changed=report.changed, blocked=report.blocked, **request)
        log.error("rule_failed", error_class=error_class, error=message, changed=report.changed)

    def _record_held(self, connector: Connector, work: RuleWork, counts: Counts) -> dict[str, object]:
        """Name the held records in the sidecar by keyed hash, streamed in chunks."""
        assert self.id_key is not None
        chunks = connector.held_ids(work.selection, self.config.batch_size(work.rule), self.id_key) \
            if counts.held else iter(())
        lines, digest = self.audit.record_ids("held", work.rule.name, (value for chunk in chunks for value in chunk))
        return {"held_ids": lines, "held_ids_digest": digest}


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


class _RuleProblem(RetentionError):
    """The rule's target failed its checks (the message names fields and tables)."""


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class TargetCheck:
    rule: str
    target: str
    problems: tuple[str, ...]
    unreachable: bool = False
    grants: tuple[str, ...] = ()  # GRANT statements that would give the role what the rules need


def check(config: Config, env: Environment, now: datetime) -> list[TargetCheck]:
    """Connect to every connector and confirm each rule's target and fields exist with usable types."""
    results = []
    with open_connectors(config, env, config.rules) as connectors:
        if config.holds_source:
            source = config.holds_source
            target = f"{source.connector}:{source.table}"
            try:
                load_holds(config, connectors)
                results.append(TargetCheck("[holds_source]", target, ()))
            except RetentionError as exc:
                results.append(TargetCheck("[holds_source]", target, (str(exc),)))
        if config.requests:
            requests = config.requests
            results.append(_check_rows(connectors, "[requests]", requests.connector, requests.table, (
                requests.id_field, requests.client_field, requests.subject_field, requests.reason_field,
                requests.received_field, requests.status_field, requests.result_field)))
        for rule in config.rules:
            work = compile_rule(config, rule, now, PLAN_KEY)
            target = f"{rule.connector}:{rule.target}"
            connector = connectors[rule.connector]
            try:
                problems = connector.check(work.selection, work.action)
                if rule.client_field and config.requests:  # the fields an erasure request is served by
                    probe = ErasureRequest("probe", None, "probe", "probe" if rule.subject else None, "", None, "",
                                           None)
                    unit = request_work(work, probe)
                    problems += [p for p in connector.check(unit.selection, unit.action) if p not in problems]
                results.append(TargetCheck(rule.name, target, tuple(problems)))
            except RetentionError as exc:
                results.append(TargetCheck(rule.name, target, (str(exc),), unreachable=True))
        try:
            grants = tuple(missing_grants(config, connectors))
        except RetentionError as exc:
            results.append(TargetCheck("[privileges]", "", (str(exc),), unreachable=True))
        else:
            if grants:
                results.append(TargetCheck("[privileges]", "", (f"{len(grants)} privileges missing: the GRANT "
                                                                "statements below",), grants=grants))
    return results


def _check_rows(connectors: Stores, label: str, connector: str, table: str, fields: Sequence[str]) -> TargetCheck:
    """A table of rows (requests, holds) exists and has the configured fields."""
    try:
        with closing(iter(connectors[connector].read_rows(table, list(fields)))) as rows:  # type: ignore[type-var]
            next(rows, None)
    except RetentionError as exc:
        return TargetCheck(label, f"{connector}:{table}", (str(exc),))
    return TargetCheck(label, f"{connector}:{table}", ())


@dataclass(frozen=True)
class HoldReport:
    """One hold in force: where it comes from, what it names, and how many expired records it keeps now."""

    hold: Hold
    rules: tuple[str, ...]
    records: int
    errors: tuple[str, ...] = ()


def hold_reports(config: Config, env: Environment, now: datetime) -> list[HoldReport]:
    """Every hold in force at `now`, each counted on its own against the rules it applies to."""
    reports = []
    with open_connectors(config, env, config.rules) as connectors:
        for hold in load_holds(config, connectors):
            if not hold.active_at(now):
                continue
            rules, records, errors = [], 0, []
            for rule in config.rules:
                work = compile_rule(config, rule, now, PLAN_KEY, (hold,))
                if not work.selection.held.active:
                    continue
                rules.append(rule.name)
                if work.selection.held.problem:
                    errors.append(f"{rule.name}: {work.selection.held.problem}")
                    continue
                try:
                    connector = connectors[rule.connector]
                    records += connector.count(with_registry(work, connectors).selection).held
                except RetentionError as exc:
                    errors.append(f"{rule.name}: {exc}")
            reports.append(HoldReport(hold, tuple(rules), records, tuple(errors)))
    return reports


def request_preview(config: Config, env: Environment, now: datetime, request_id: str | None
                    ) -> list[tuple[ErasureRequest, list[dict[str, Any]]]]:
    """Each request (or the one named), with what it would change now, rule by rule: the confirmation step.

    A request that cannot be served (no client, a child_data request without the child, ids that are not ids)
    says so here, before any run.
    """
    if config.requests is None:
        raise ConfigError("no [requests] table in the config", source=str(config.path), key="requests")
    previews = []
    with open_connectors(config, env, config.rules) as connectors:
        holds = load_holds(config, connectors)
        requests = read_requests(config, connectors, pending_only=False)
        if request_id is not None:
            requests = [r for r in requests if r.id == request_id]
            where = f"{config.requests.connector}:{config.requests.table}"
            if not requests:
                raise UsageError(f"no erasure request {request_id!r} in {where}")
            if len(requests) > 1:
                raise UsageError(f"{request_id!r} names {len(requests)} requests in {where}: ids must be unique")
        for request in requests:
            rows = []
            serving = [] if request.problem else serving_rules(config.rules, request)
            for rule in serving:
                work = request_work(compile_rule(config, rule, now, PLAN_KEY, holds), request)
                row: dict[str, Any] = {"rule": rule.name, "connector": rule.connector, "target": rule.target,
                                       "action": work.action.kind}
                try:
                    counts = connectors[rule.connector].count(with_registry(work, connectors).selection)
                    row.update(would_change=counts.matched, held=counts.held)
                except RetentionError as exc:
                    row.update(would_change=None, held=None, error=str(exc))
                rows.append(row)
            if not request.problem and not serving:
                request = replace(request, problem=no_rule_problem(request))
            previews.append((request, rows))
    return previews
