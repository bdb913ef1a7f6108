"""Judging client accounts from registry rows: which have ended long enough ago, which are in a known state."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from retention.ids import NotAnId, canonical_id
from retention.model import ClientCondition, ClientStates
from retention.timeutil import MAX_YEARS, Duration, parse_duration, stored_instant

log = structlog.get_logger("retention")


def judge(rows: Iterable[Mapping[str, Any]], client: ClientCondition) -> ClientStates:
    """A client expires only when every registry row of it has an ended status and ended before the cutoff: the
    rule's (`client.ended_before`), or the client's own grace (`retention_field`) counted back from `client.now`.

    Clients are named by canonical text (retention.ids), whatever type the registry stores them as. A row whose
    own grace cannot be read makes its client unknown: its records are never touched.
    """
    registry = client.registry
    ended_long_ago: dict[str, bool] = {}
    known: set[str] = set()
    unreadable: set[str] = set()
    for row in rows:
        try:
            client_id = canonical_id(row.get(registry.id_field))
        except NotAnId:
            continue  # a registry row that names no client cannot make anything expire
        if client_id is None:
            continue
        ended_before: datetime | None = client.ended_before
        if registry.retention_field:
            ended_before = own_cutoff(row.get(registry.retention_field), client.ended_before, client.now)
            if ended_before is None:
                unreadable.add(client_id)
        status, ended_at = row.get(registry.status_field), stored_instant(row.get(registry.ended_at_field))
        ended = status in registry.ended_statuses and ended_at is not None
        if ended or status in registry.active_statuses:
            known.add(client_id)
        this_row = ended and ended_at is not None and ended_before is not None and ended_at < ended_before
        ended_long_ago[client_id] = ended_long_ago.get(client_id, True) and this_row
    if unreadable:
        log.warning("client_retention_unreadable", clients=len(unreadable), field=registry.retention_field,
                    table=registry.table)
    expired = frozenset(c for c, verdict in ended_long_ago.items() if verdict and c not in unreadable)
    return ClientStates(expired, (frozenset(known) | expired) - unreadable)


# PostgreSQL's text of an interval (IntervalStyle postgres): "1 year 2 mons 3 days 04:05:06"; no negative parts
INTERVAL = re.compile(r"(?:(\d+) years? ?)?(?:(\d+) mons? ?)?(?:(\d+) days? ?)?(?:(\d+):(\d\d):(\d\d)(?:\.\d+)?)?")


def _before_interval(now: datetime, parts: re.Match[str]) -> datetime:
    """`now` minus an interval, with calendar months (SPEC: months clamp to the month's end)."""
    years, months, days, hours, minutes, seconds = (int(part or 0) for part in parts.groups())
    if years * 366 + months * 31 + days > MAX_YEARS * 366:
        raise OverflowError("longer than any retention period")
    moved = Duration(years * 12 + months, "month").before(now) if years or months else now
    return moved - timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def own_cutoff(value: object, default: datetime, now: datetime | None) -> datetime | None:
    """When a client must have ended before for its records to expire, by its own grace period: a duration
    ("90 days", "6 months"), a whole number of days, or an interval; empty means the rule's. None: unreadable."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if now is None:
        return None
    try:
        if isinstance(value, timedelta):
            return now - value if value >= timedelta(0) else None
        if isinstance(value, str):
            text = value.strip()
            if not text.isdigit() and (interval := INTERVAL.fullmatch(text)):
                return _before_interval(now, interval)
            grace = Duration(int(text), "day") if text.isdigit() else parse_duration(text)
        elif isinstance(value, int | float | Decimal) and not isinstance(value, bool) and value == int(value) \
                and 0 <= value <= MAX_YEARS * 366:
            grace = Duration(int(value), "day")
        else:
            return None
        if grace.amount > MAX_YEARS * 366:
            return None
        return grace.before(now)
    except (ValueError, OverflowError, ArithmeticError):
        return None

