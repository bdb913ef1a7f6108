"""The read-only verbs: plan, check, the holds in force and what erasure requests would change."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import structlog

from retention.config import Config, Hold
from retention.connector import ScanAdvice
from retention.errors import ConfigError, RetentionError, UsageError
from retention.execute import assess, report_for
from retention.expiry import ExpiryFinding, native_findings
from retention.holds import load_holds
from retention.privileges import missing_grants
from retention.progress import Progress, Silent
from retention.report import ERROR, Report
from retention.requests import (
    ErasureRequest,
    no_rule_problem,
    read_requests,
    serving_rules,
)
from retention.settings import Environment
from retention.stores import Stores, open_connectors
from retention.units import PLAN_KEY, compile_rule, request_work, select_rules, with_registry

log = structlog.get_logger("retention")


def plan(config: Config, env: Environment, now: datetime, rule_names: Sequence[str] = (),
         progress: Progress | None = None) -> Report:
    """What each rule would change at `now`. Reads only; needs no signing key and no pseudonym key."""
    rules = select_rules(config, rule_names)
    report = Report(now)
    with open_connectors(config, env, rules) as connectors:
        holds = load_holds(config, connectors)
        for rule in rules:
            work = compile_rule(config, rule, now, PLAN_KEY, holds)
            rule_report = report_for(work)
            report.rules.append(rule_report)
            started = time.monotonic()
            (progress or Silent()).start(f"counting {rule.name}", 1)
            try:
                assess(connectors, work, rule_report)
            except RetentionError as exc:
                rule_report.status, rule_report.error = ERROR, str(exc)
            finally:
                (progress or Silent()).advance(1)
                (progress or Silent()).finish()
            rule_report.duration_ms = int((time.monotonic() - started) * 1000)
            log.info("rule_planned", rule=rule.name, connector=rule.connector, status=rule_report.status,
                     matched=rule_report.matched, held=rule_report.held, unknown_age=rule_report.unknown_age)
    return report


@dataclass(frozen=True)
class TargetCheck:
    rule: str
    target: str
    problems: tuple[str, ...]
    unreachable: bool = False
    grants: tuple[str, ...] = ()  # GRANT statements that would give the role what the rules need
    warnings: tuple[str, ...] = ()  # works, but costs more than it should (a whole-table scan every run)
    expiry: tuple[ExpiryFinding, ...] = ()  # the store's own TTL indexes or lifecycle rules on the target


def check(config: Config, env: Environment, now: datetime) -> list[TargetCheck]:
    """Connect to every connector and confirm each rule's target and fields exist with usable types, and compare
    the native expiry on each target (TTL indexes, lifecycle rules) with its rule."""
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
                advice = connector.scan_warnings(work.selection) if isinstance(connector, ScanAdvice) and \
                    not problems else []
                expiry = native_findings(config, rule, connector, work.selection, now) if not problems else ()
                results.append(TargetCheck(rule.name, target, tuple(problems), warnings=tuple(advice), expiry=expiry))
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
        with closing(iter(connectors.rows(connector).read_rows(table, list(fields)))) as rows:  # type: ignore[type-var]
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
                report = report_for(work)
                try:  # the same assessment a run makes: target checks, holds in scope, counts
                    assess(connectors, work, report)
                except RetentionError as exc:
                    report.status, report.error = ERROR, str(exc)
                failed = report.status == ERROR
                rows.append({"rule": rule.name, "connector": rule.connector, "target": rule.target,
                             "action": work.action.kind, "would_change": None if failed else report.matched,
                             "held": None if failed else report.held, **({"error": report.error} if failed else {})})
            if not request.problem and not serving:
                request = replace(request, problem=no_rule_problem(request))
            previews.append((request, rows))
    return previews
