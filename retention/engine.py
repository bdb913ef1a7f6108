"""The verbs: `plan` (what each rule would do now) and `run` (do it, and write the signed audit log)."""

from __future__ import annotations

import getpass
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
from retention.errors import AuditError, ConfigError, RetentionError, UsageError
from retention.holds import held_scope, load_holds
from retention.lock import host_lock, run_lock
from retention.metrics import write_metrics
from retention.model import Action, AgeCondition, ClientCondition, ClientRegistry, Counts, Selection
from retention.progress import Progress, Silent
from retention.redact import error_summary
from retention.report import ERROR, INTERRUPTED, OK, OVER_THRESHOLD, Report, RuleReport
from retention.requests import ErasureRequest, RequestOutcome, adapt, applies, mark, read_requests
from retention.secrets import RECORD_ID_LABEL, TRANSFORM_LABEL, derive
from retention.settings import Environment
from retention.timeutil import rfc3339

log = structlog.get_logger("retention")
Clock = Callable[[], datetime]
PLAN_KEY = bytes(32)  # stands in for the HMAC key in statements `plan` shows: plan needs no secret


@dataclass(frozen=True)
class RuleWork:
    """One rule, compiled for its store: the unit a run executes."""

    rule: Rule
    selection: Selection
    action: Action


def select_rules(config: Config, names: Sequence[str]) -> list[Rule]:
    for name in names:
        config.rule(name)  # raises with the known names
    return [rule for rule in config.rules if not names or rule.name in names]


def compile_rule(config: Config, rule: Rule, now: datetime, hmac_key: bytes | None,
                 holds: Sequence[Hold] | None = None) -> RuleWork:
    """The rule's selection and action as of `now`: cutoffs computed here, once, in UTC."""
    age = AgeCondition(rule.expire.field, rule.expire.after.before(now)) \
        if rule.expire.after and rule.expire.field else None
    client = None
    if rule.expire.client_field and config.clients and rule.expire.grace:
        client = ClientCondition(rule.expire.client_field, config.clients, rule.expire.grace.before(now))
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
    return RuleReport(rule.name, rule.policy, rule.connector, rule.target, rule.action, cutoff)


def _assess(connectors: Stores, work: RuleWork, report: RuleReport) -> tuple[RuleWork, Counts | None]:
    """Check the target and count; fill the report. No counts when the rule cannot go on."""
    connector = connectors[work.rule.connector]
    problems = connector.check(work.selection, work.action)
    if problems:
        report.status, report.error = ERROR, "; ".join(problems)
        return work, None
    work = with_registry(work, connectors)
    counts = connector.count(work.selection)
    report.total, report.matched, report.held, report.unknown_age = (counts.total, counts.matched, counts.held,
                                                                     counts.unknown_age)
    report.statement = connector.statement(work.selection, work.action)
    if reason := threshold_reason(work.rule, counts):
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
            for work in works:
                if should_stop():
                    raise Interrupted
                rule_report = _rule_report(work)
                report.rules.append(rule_report)
                _enforce(connectors, work, rule_report, audit, id_key, config, dry_run, should_stop,
                         progress or Silent())
            if config.requests:
                report.requests = _process_requests(config, connectors, holds, keys, audit, now, clock, rules,
                                                    dry_run, should_stop)
        except (Interrupted, KeyboardInterrupt):
            report.interrupted = True
            failed = report.rules[-1] if report.rules else None
            if failed:
                failed.status = INTERRUPTED
                failed.error = "interrupted; the batch in flight was committed or rolled back whole"
                audit.event("rule_failed", rule=failed.name, error_class="Interrupted", message=failed.error,
                            changed=failed.changed)
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


def _process_requests(config: Config, connectors: dict[str, Connector], holds: Sequence[Hold], keys: RunKeys,
                      audit: AuditWriter, now: datetime, clock: Clock, rules: Sequence[Rule], dry_run: bool,
                      should_stop: Callable[[], bool]) -> list[RequestOutcome]:
    """Apply every pending erasure request through each rule that can find its records; write back the outcome."""
    try:
        pending = read_requests(config, connectors, pending_only=True)
    except RetentionError as exc:
        log.error("requests_unreadable", error=str(exc))
        return [RequestOutcome(ErasureRequest("?", None, None, "", None, "", None), errors=[str(exc)])]
    outcomes = []
    for request in pending:
        if should_stop():
            raise Interrupted
        outcome = RequestOutcome(request)
        for rule in [r for r in rules if applies(r, request)]:
            work = compile_rule(config, rule, now, keys.transform, holds)
            selection, action = adapt(work.selection, work.action, rule, request)
            outcome.rules.append(_serve(connectors, RuleWork(rule, selection, action), request, audit,
                                        keys.record_ids, config, dry_run, outcome))
        if not dry_run:
            try:
                mark(config, connectors, outcome, audit.run_id, str(audit.path), clock())
            except RetentionError as exc:
                outcome.errors.append(str(exc))
        log.info("request_processed", request=str(request.id), done=outcome.done, rules=len(outcome.rules))
        outcomes.append(outcome)
    return outcomes


def _serve(connectors: dict[str, Connector], work: RuleWork, request: ErasureRequest, audit: AuditWriter,
           id_key: bytes | None, config: Config, dry_run: bool, outcome: RequestOutcome) -> dict[str, Any]:
    """One rule's share of one request: count, then change, under the same audit events as a rule."""
    rule, request_id = work.rule, str(request.id)
    entry: dict[str, Any] = {"rule": rule.name, "connector": rule.connector, "target": rule.target,
                             "action": work.action.kind, "matched": 0, "held": 0, "changed": 0, "status": OK}
    audit.event("rule_started", rule=rule.name, request=request_id, reason=request.reason, connector=rule.connector,
                target=rule.target, action=work.action.kind, cutoff=None, holds=list(work.selection.held.holds))
    connector = connectors[rule.connector]
    started = time.monotonic()
    try:
        problems = connector.check(work.selection, work.action)
        if problems:
            raise _RuleProblem("; ".join(problems))
        counts = connector.count(work.selection)
        entry.update(matched=counts.matched, held=counts.held)
        if counts.held:
            outcome.held_by.extend(h for h in work.selection.held.holds if h not in outcome.held_by)
        if not dry_run:
            for batch in connector.apply(work.selection, work.action, batch_size=config.batch_size(rule),
                                         limit=counts.matched, id_key=id_key):
                fields = {"ids_digest": audit.record_ids("changed", rule.name, batch.ids)[1]} if id_key else {}
                entry["changed"] += batch.count
                audit.event("batch_applied", rule=rule.name, request=request_id, action=work.action.kind,
                            count=batch.count, **fields)
        audit.event("rule_finished", rule=rule.name, request=request_id, total=counts.total, matched=counts.matched,
                    changed=entry["changed"], held=counts.held, unknown_age=0,
                    duration_ms=int((time.monotonic() - started) * 1000))
    except (RetentionError, _RuleProblem) as exc:
        error_class, message = error_summary(exc)
        entry.update(status=ERROR, error=message)
        outcome.errors.append(f"{rule.name}: {message}")
        audit.event("rule_failed", rule=rule.name, request=request_id, error_class=error_class, message=message,
                    changed=entry["changed"])
    return entry


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
    structlog.contextvars.unbind_contextvars("rule", "connector")
    totals = {name: sum(getattr(rule, name) for rule in report.rules)
              for name in ("matched", "changed", "held", "unknown_age")}
    extra = {"ids_sha256": audit.ids_sha256()} if hashed_ids else {}
    audit.event("run_finished", status=report.status, exit_code=report.exit_code,
                duration_ms=int((time.monotonic() - started) * 1000),
                rules_failed=sum(rule.status in (ERROR, INTERRUPTED) for rule in report.rules),
                rules_skipped=sum(rule.status == OVER_THRESHOLD for rule in report.rules), **totals, **extra)
    audit.close()
    log.info("run_finished", status=report.status, exit_code=report.exit_code, audit_file=str(audit.path), **totals)


def _copy_to_worm(worm: WormCopy, audit: AuditWriter, directory: Path, report: Report, now: datetime) -> None:
    """Upload this run's files, and any earlier signed run the bucket is missing; a failure fails the run (exit 1)."""
    try:
        earlier = [path for run in run_files(directory) if run != audit.path
                   for path in (run, run.with_name(run.name + ".sig"), run.with_name(run.name[:-6] + ".ids"))
                   if path.exists() and run.with_name(run.name + ".sig").exists()]
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
    hashed = root is not None and config.audit.record_ids == "hashed"
    return RunKeys(signing, derive(root, TRANSFORM_LABEL) if root else None,
                   derive(root, RECORD_ID_LABEL) if root and hashed else None)


def _enforce(connectors: Stores, work: RuleWork, report: RuleReport, audit: AuditWriter,
             id_key: bytes | None, config: Config, dry_run: bool, should_stop: Callable[[], bool],
             progress: Progress) -> None:
    """One rule: assess, then change batch by batch; a failure is recorded and the run goes on."""
    rule = work.rule
    structlog.contextvars.bind_contextvars(rule=rule.name, connector=rule.connector)
    audit.event("rule_started", rule=rule.name, connector=rule.connector, target=rule.target, action=rule.action,
                cutoff=rfc3339(report.cutoff) if report.cutoff else None, holds=list(work.selection.held.holds))
    started = time.monotonic()
    try:
        connector = connectors[rule.connector]
        work, counts = _assess(connectors, work, report)
        if counts is None:
            raise _RuleProblem(report.error or "")
        if report.status == OVER_THRESHOLD:
            audit.event("rule_skipped", rule=rule.name, reason="threshold", detail=report.error,
                        matched=counts.matched, total=counts.total, max_fraction=str(rule.max_fraction),
                        max_records=rule.max_records)
            log.warning("rule_skipped", reason=report.error)
            return
        if not dry_run:
            progress.start(rule.name, counts.matched)
            for batch in connector.apply(work.selection, work.action, batch_size=config.batch_size(rule),
                                         limit=counts.matched, id_key=id_key, should_stop=should_stop):
                progress.advance(batch.count)
                fields = {}
                if id_key:
                    fields["ids_digest"] = audit.record_ids("changed", rule.name, batch.ids)[1]
                report.changed += batch.count
                audit.event("batch_applied", rule=rule.name, action=rule.action, count=batch.count, **fields)
                log.debug("batch_applied", count=batch.count, changed=report.changed)
            progress.finish()
            if should_stop():
                raise Interrupted  # every batch the store finished is in the log; no new one was started
        held_fields = _record_held(connector, work, counts, audit, id_key, config) if id_key else {}
        report.duration_ms = int((time.monotonic() - started) * 1000)
        audit.event("rule_finished", rule=rule.name, total=report.total, matched=report.matched,
                    changed=report.changed, held=report.held, unknown_age=report.unknown_age,
                    duration_ms=report.duration_ms, **held_fields)
        log.info("rule_finished", matched=report.matched, changed=report.changed, held=report.held,
                 unknown_age=report.unknown_age, duration_ms=report.duration_ms)
    except (RetentionError, _RuleProblem) as exc:
        _fail(report, audit, exc, started)
    except Exception as exc:
        _fail(report, audit, exc, started)


class _RuleProblem(Exception):
    """The rule's target failed its checks."""


def _fail(report: RuleReport, audit: AuditWriter, exc: Exception, started: float) -> None:
    error_class, message = error_summary(exc)
    if isinstance(exc, _RuleProblem):
        error_class = "TargetProblem"
    report.status, report.error = ERROR, message
    report.duration_ms = int((time.monotonic() - started) * 1000)
    audit.event("rule_failed", rule=report.name, error_class=error_class, message=message, changed=report.changed)
    log.error("rule_failed", error_class=error_class, error=message, changed=report.changed)


def _record_held(connector: Connector, work: RuleWork, counts: Counts, audit: AuditWriter,
                 id_key: bytes, config: Config) -> dict[str, object]:
    """Name the held records in the sidecar by keyed hash, streamed in chunks."""
    chunks = connector.held_ids(work.selection, config.batch_size(work.rule), id_key) if counts.held else iter(())
    lines, digest = audit.record_ids("held", work.rule.name, (value for chunk in chunks for value in chunk))
    return {"held_ids": lines, "held_ids_digest": digest}


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
        for rule in config.rules:
            work = compile_rule(config, rule, now, PLAN_KEY)
            target = f"{rule.connector}:{rule.target}"
            try:
                results.append(TargetCheck(rule.name, target, tuple(connectors[rule.connector].check(
                    work.selection, work.action))))
            except RetentionError as exc:
                results.append(TargetCheck(rule.name, target, (str(exc),), unreachable=True))
    return results


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
                try:
                    connector = connectors[rule.connector]
                    records += connector.count(with_registry(work, connectors).selection).held
                except RetentionError as exc:
                    errors.append(f"{rule.name}: {exc}")
            reports.append(HoldReport(hold, tuple(rules), records, tuple(errors)))
    return reports


def request_preview(config: Config, env: Environment, now: datetime, request_id: str | None
                    ) -> list[tuple[ErasureRequest, list[dict[str, Any]]]]:
    """Each request (or the one named), with what it would change now, rule by rule: the confirmation step."""
    if config.requests is None:
        raise ConfigError("no [requests] table in the config", source=str(config.path), key="requests")
    previews = []
    with open_connectors(config, env, config.rules) as connectors:
        holds = load_holds(config, connectors)
        requests = read_requests(config, connectors, pending_only=False)
        if request_id is not None:
            requests = [r for r in requests if str(r.id) == request_id]
            if not requests:
                raise UsageError(f"no erasure request {request_id!r} in {config.requests.connector}:"
                                 f"{config.requests.table}")
        for request in requests:
            rows = []
            for rule in [r for r in config.rules if applies(r, request)]:
                work = compile_rule(config, rule, now, PLAN_KEY, holds)
                selection, action = adapt(work.selection, work.action, rule, request)
                row: dict[str, Any] = {"rule": rule.name, "connector": rule.connector, "target": rule.target,
                                       "action": action.kind}
                try:
                    counts = connectors[rule.connector].count(selection)
                    row.update(would_change=counts.matched, held=counts.held)
                except RetentionError as exc:
                    row.update(would_change=None, held=None, error=str(exc))
                rows.append(row)
            previews.append((request, rows))
    return previews
