"""Legal holds: from the config and from a table legal maintains, and which records they keep."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from typing import Any

import structlog

from retention.config import Config, Hold, HoldSource, Rule
from retention.errors import ConnectorError, RetentionError
from retention.ids import NotAnId, canonical_id, canonical_ids
from retention.model import HeldScope
from retention.stores import Stores
from retention.timeutil import end_of_day_or_instant

log = structlog.get_logger("retention")


def load_holds(config: Config, connectors: Stores) -> tuple[Hold, ...]:
    """The config's holds and, with [holds_source], every row of the holds table, read now.

    A hold that cannot be read stops everything: deleting without knowing the holds could break one.
    """
    source = config.holds_source
    if source is None:
        return config.holds
    fields = [source.name_field, source.client_field, source.rule_field, source.until_field, source.reason_field]
    try:
        rows = list(connectors.rows(source.connector).read_rows(source.table, fields))
    except RetentionError as exc:
        raise ConnectorError(f"cannot read legal holds from {source.connector}:{source.table} ({exc}); "
                             "nothing was changed") from None
    return config.holds + tuple(_hold(source, index, row, {rule.name for rule in config.rules})
                                for index, row in enumerate(rows))


def _hold(source: HoldSource, index: int, row: Mapping[str, Any], rule_names: set[str]) -> Hold:
    """One row as a hold. Doubtful rows err on the side of keeping data, and say so in the log."""
    name = str(row.get(source.name_field) or f"{source.table}#{index}")
    rule = row.get(source.rule_field)
    try:
        client = canonical_id(row.get(source.client_field))
    except NotAnId:
        client = None  # without a client it names, the hold keeps everything in its scope
        log.warning("hold_client_unreadable", hold=name, detail="holds every record of its rules until fixed")
    rules: tuple[str, ...] = ()
    if rule:
        if str(rule) in rule_names:
            rules = (str(rule),)
        else:
            log.warning("hold_names_unknown_rule", hold=name, detail="applied to every rule until fixed")
    until = _until(row.get(source.until_field))
    if row.get(source.until_field) not in (None, "") and until is None:
        log.warning("hold_until_unreadable", hold=name, detail="held without end until fixed")
    return Hold(name, (client,) if client is not None else (), rules, until,
                source=f"{source.connector}:{source.table}", reason=str(row.get(source.reason_field) or ""))


def _until(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.max, tzinfo=UTC)
    if isinstance(value, str) and value.strip():
        try:
            return end_of_day_or_instant(value)
        except ValueError:
            return None
    return None


def applies(hold: Hold, rule: Rule) -> bool:
    return not hold.rules or rule.name in hold.rules


def held_scope(holds: Iterable[Hold], rule: Rule, now: datetime) -> HeldScope:
    """The holds in force at `now` that apply to `rule`: the whole rule, or some of its clients (canonical ids)."""
    active = [hold for hold in holds if hold.active_at(now) and applies(hold, rule)]
    names = tuple(hold.name for hold in active)
    if not rule.client_field:
        blind = [hold for hold in active if hold.client_ids]
        if blind:  # never silently weaker: the hold would keep nothing of this rule, or everything
            return HeldScope(True, None, (), names, problem=unidentifiable(blind[0], rule))
    everything = any(not hold.client_ids for hold in active)
    client_ids = tuple(sorted({cid for hold in active for cid in canonical_ids(hold.client_ids)}))
    clients_of = tuple((hold.name, tuple(sorted(canonical_ids(hold.client_ids)))) for hold in active)
    return HeldScope(everything, rule.client_field, client_ids, names, clients_of=clients_of)


def unidentifiable(hold: Hold, rule: Rule) -> str:
    return (f"hold {hold.name!r} ({hold.source}) names clients, but rule {rule.name!r} cannot tell its records' "
            "clients (no expire.client_field or client_key): give the hold the rules it applies to")
