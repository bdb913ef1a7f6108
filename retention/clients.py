"""Judging client accounts from registry rows: which have ended long enough ago, which are in a known state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from retention.ids import NotAnId, canonical_id
from retention.model import ClientRegistry, ClientStates
from retention.timeutil import stored_instant


def judge(rows: Iterable[Mapping[str, Any]], registry: ClientRegistry, ended_before: datetime) -> ClientStates:
    """A client expires only when every registry row of it has an ended status and ended before the cutoff.

    Clients are named by canonical text (retention.ids), whatever type the registry stores them as.
    """
    ended_long_ago: dict[str, bool] = {}
    known: set[str] = set()
    for row in rows:
        try:
            client = canonical_id(row.get(registry.id_field))
        except NotAnId:
            continue  # a registry row that names no client cannot make anything expire
        if client is None:
            continue
        status, ended_at = row.get(registry.status_field), stored_instant(row.get(registry.ended_at_field))
        ended = status in registry.ended_statuses and ended_at is not None
        if ended or status in registry.active_statuses:
            known.add(client)
        this_row = ended and ended_at is not None and ended_at < ended_before
        ended_long_ago[client] = ended_long_ago.get(client, True) and this_row
    expired = frozenset(client for client, verdict in ended_long_ago.items() if verdict)
    return ClientStates(expired, frozenset(known) | expired)

