"""Erasure requests: a client's instruction, an end user's request through their client, a child's data.

Each run processes pending requests across every rule that can identify their records, whatever the records'
age. A legal hold still wins: the held records stay, and the request stays pending with the reason recorded.
A request is marked done, with its per-rule counts, only when all of its work succeeded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from retention.config import Config, RequestSource, Rule
from retention.connector import Connector
from retention.errors import ConnectorError, RetentionError
from retention.model import Action, Erasure

CHILD_DATA = "child_data"  # always deleted, whatever the rule's action


@dataclass(frozen=True)
class ErasureRequest:
    id: Any
    client_id: Any
    subject_id: Any
    reason: str
    received_at: Any
    status: str
    result: dict[str, Any] | None

    @property
    def pending(self) -> bool:
        return self.result is None or self.result.get("status") != "done"


@dataclass
class RequestOutcome:
    """What a run did (or a plan would do) for one request, rule by rule."""

    request: ErasureRequest
    rules: list[dict[str, Any]] = field(default_factory=list)
    held_by: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return not self.held_by and not self.errors

    def result(self, run_id: str | None, audit_file: str | None, at: str) -> dict[str, Any]:
        return {"status": "done" if self.done else "pending", "run_id": run_id, "audit_file": audit_file, "at": at,
                "held_by": self.held_by, "errors": self.errors,
                "rules": [{k: r[k] for k in ("rule", "connector", "target", "action", "changed", "held")}
                          for r in self.rules]}


def read_requests(config: Config, connectors: Mapping[str, Connector], *, pending_only: bool
                  ) -> list[ErasureRequest]:
    """The requests table, oldest first; with `pending_only`, those whose status is pending."""
    source = config.requests
    if source is None:
        return []
    fields = [source.id_field, source.client_field, source.subject_field, source.reason_field,
              source.received_field, source.status_field, source.result_field]
    try:
        rows = list(connectors[source.connector].read_rows(source.table, fields))
    except RetentionError as exc:
        raise ConnectorError(f"cannot read erasure requests from {source.connector}:{source.table} ({exc})") from None
    requests = [_request(source, row) for row in rows]
    requests.sort(key=lambda r: str(r.received_at))
    if pending_only:
        requests = [r for r in requests if r.status in source.pending_statuses and r.client_id not in (None, "")]
    return requests


def _request(source: RequestSource, row: Mapping[str, Any]) -> ErasureRequest:
    raw = row.get(source.result_field)
    try:
        result = json.loads(raw) if isinstance(raw, str) and raw else (raw if isinstance(raw, dict) else None)
    except json.JSONDecodeError:
        result = None
    subject = row.get(source.subject_field)
    return ErasureRequest(row.get(source.id_field), row.get(source.client_field), None if subject == "" else subject,
                          str(row.get(source.reason_field) or ""), row.get(source.received_field),
                          str(row.get(source.status_field) or ""), result)


def applies(rule: Rule, request: ErasureRequest) -> bool:
    """A rule can serve a request when it knows its records' client (and, for one end user, the user)."""
    if not rule.client_field:
        return False
    return request.subject_id is None or rule.subject is not None


def erasure_of(rule: Rule, request: ErasureRequest) -> Erasure:
    assert rule.client_field is not None
    return Erasure(str(request.id), rule.client_field, request.client_id,
                   rule.subject if request.subject_id is not None else None, request.subject_id)


def adapt(selection: Any, action: Action, rule: Rule, request: ErasureRequest) -> tuple[Any, Action]:
    """The rule's selection and action, aimed at the request's records; child data is always deleted."""
    selection = replace(selection, age=None, client=None, erasure=erasure_of(rule, request))
    if request.reason == CHILD_DATA:
        # deleted as quickly as possible: even records an earlier run anonymized
        return replace(selection, marker=None), Action("delete", marked_at=action.marked_at)
    return selection, action


def mark(config: Config, connectors: Mapping[str, Connector], outcome: RequestOutcome, run_id: str,
         audit_file: str, now: datetime) -> None:
    """Write the outcome back: done with its counts, or still pending with why."""
    source = config.requests
    assert source is not None
    values: dict[str, Any] = {source.result_field: json.dumps(outcome.result(run_id, audit_file, now.isoformat()),
                                                              sort_keys=True)}
    if outcome.done:
        values[source.status_field] = source.done_status
    connectors[source.connector].update_row(source.table, source.id_field, outcome.request.id, values)
