"""Legal holds: from the config and from a table legal maintains, and which records they keep."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from typing import Any

import structlog

from retention.config import Config, Hold, HoldSource, Rule
from retention.connector import Connector
from retention.errors import ConnectorError, RetentionError
from retention.model import HeldScope
from retention.timeutil import end_of_day_or_instant

log = structlog.get_logger("retention")


def load_holds(config: Config, connectors: Mapping[str, Connector]) -> tuple[Hold, ...]:
    """The config's holds and, with [holds_source], every row of the holds table, read now.

    A hold that cannot be read stops everything: deleting without knowing the holds could break one.
    """
    source = config.holds_source
    if source is None:
        return config.holds
    fields = [source.name_field, source.client_field, source.rule_field, source.until_field, source.reason_field]
    try:
        rows = list(connectors[source.connector].read_rows(source.table, fields))
    except RetentionError as exc:
        raise ConnectorError(f"cannot read legal holds from {source.connector}:{source.table} ({exc}); "
                             "nothing was changed") from None
    return config.holds + tuple(_hold(source, index, row, {rule.name for rule in config.rules})
                                for index, row in enumerate(rows))


def _hold(source: HoldSource, index: int, row: Mapping[str, Any], rule_names: set[str]) -> Hold:
    """One row as a hold. Doubtful rows err on the side of keeping data, and say so in the log."""
    name = str(row.get(source.name_field) or f"{source.table}#{index}")
    client, rule = row.get(source.client_field), row.get(source.rule_field)
    rules: tuple[str, ...] = ()
    if rule:
        if str(rule) in rule_names:
            rules = (str(rule),)
        else:
            log.warning("hold_names_unknown_rule", hold=name, detail="applied to every rule until fixed")
    until = _until(row.get(source.until_field))
    if row.get(source.until_field) not in (None, "") and until is None:
        log.warning("hold_until_unreadable", hold=name, detail="held without end until fixed")
    return Hold(name, (client,) if client not in (None, "") else (), rules, until,
                source=f"{source.connector}:{source.table}", reason=str(row.get(source.reason_field) or ""))


def _until(value: Any) -> datetime | None:
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
    """The holds in force at `now` that apply to `rule`: the whole rule, or some of its clients."""
    active = [hold for hold in holds if hold.active_at(now) and applies(hold, rule)]
    if not rule.client_field:
        # a client hold cannot single out records of a rule that does not know their client: it keeps them all,
        # unless it only named clients without naming this rule (then the rule's records are not client data)
        active = [hold for hold in active if not hold.client_ids or hold.rules]
    everything = any(not hold.client_ids or not rule.client_field for hold in active)
    client_ids = tuple(dict.fromkeys(cid for hold in active for cid in hold.client_ids))
    return HeldScope(everything, rule.client_field, client_ids, tuple(hold.name for hold in active))
