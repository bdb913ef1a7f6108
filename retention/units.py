"""Rules and erasure requests compiled to work units: frozen, store-neutral, what one execution needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from retention.clients import judge
from retention.config import Config, Hold, Rule
from retention.errors import UsageError
from retention.holds import held_scope
from retention.model import Action, AgeCondition, ClientCondition, Counts, Selection
from retention.requests import (
    ErasureRequest,
    adapt,
)
from retention.stores import Stores
from retention.timeutil import rfc3339

log = structlog.get_logger("retention")


PLAN_KEY = bytes(32)  # stands in for the HMAC key in statements `plan` shows: plan needs no secret


@dataclass(frozen=True)
class RuleWork:
    """One rule, compiled for its store: the unit a run executes."""

    rule: Rule
    selection: Selection
    action: Action
    request: str | None = None  # set: this unit serves one erasure request (no thresholds; counted again after)
    reason: str | None = None
    ceiling: int | None = None  # the most records an approved plan lets the rule change (`run --approved`)


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
            client = ClientCondition(rule.expire.client_field, config.clients, rule.expire.grace.before(now),
                                     now=now)
    except (OverflowError, ValueError):
        raise UsageError(f"--now {rfc3339(now)} is too early for rule {rule.name!r}: its cutoff would fall before "
                         "year 1") from None
    scope = held_scope(config.holds if holds is None else holds, rule, now)
    selection = Selection(rule.target, rule.key, age, client, scope, rule.marker,
                          dict(rule.scope), now)
    return RuleWork(rule, selection, Action(rule.action, rule.marker, rule.transforms, now, hmac_key))


def with_registry(work: RuleWork, connectors: Stores) -> RuleWork:
    """Give a rule the registry's verdict on clients when the registry lives in another store than its records, or
    when clients have their own grace periods (`clients.retention_field`: judged here, the verdict pushed as lists).

    The registry is read once per run; each rule judges it against its own grace period.
    """
    client = work.selection.client
    if client is None or (client.registry.connector == work.rule.connector and not client.registry.retention_field):
        return work
    states = judge(connectors.registry_rows(client.registry), client)
    return replace(work, selection=replace(work.selection, client=replace(client, states=states)))


def threshold_reason(rule: Rule, counts: Counts, ceiling: int | None = None) -> str | None:
    if ceiling is not None and counts.matched > ceiling:
        return f"{counts.matched} records would change, more than the {ceiling} the approved plan allows"
    if rule.max_records is not None and counts.matched > rule.max_records:
        return f"{counts.matched} records would change, more than max_records = {rule.max_records}"
    if rule.max_fraction < 1 and counts.matched > rule.max_fraction * counts.total:
        return (f"{counts.matched} of {counts.total} records would change, more than "
                f"max_fraction = {rule.max_fraction}")
    return None
