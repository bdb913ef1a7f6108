"""Judging client accounts from registry rows: which have ended long enough ago, which are in a known state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from retention.model import ClientRegistry, ClientStates


def judge(rows: Iterable[Mapping[str, Any]], registry: ClientRegistry, ended_before: datetime) -> ClientStates:
    """A client expires only when every registry row of it has an ended status and ended before the cutoff."""
    ended_long_ago: dict[Any, bool] = {}
    known: set[Any] = set()
    for row in rows:
        client = row.get(registry.id_field)
        if client is None:
            continue
        status, ended_at = row.get(registry.status_field), row.get(registry.ended_at_field)
        ended = status in registry.ended_statuses and isinstance(ended_at, datetime)
        if ended or status in registry.active_statuses:
            known.add(client)
        this_row = ended and isinstance(ended_at, datetime) and _utc(ended_at) < ended_before
        ended_long_ago[client] = ended_long_ago.get(client, True) and this_row
    expired = frozenset(client for client, verdict in ended_long_ago.items() if verdict)
    return ClientStates(expired, frozenset(known) | expired)


def _utc(value: datetime) -> datetime:
    # BSON dates come back naive and in UTC
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
