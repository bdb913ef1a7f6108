"""Erasure requests: a client's instruction, an end user's request through their client, a child's data.

Each run serves pending requests through every rule that can identify their records, whatever the records' age,
as work units of the same executor that enforces the rules. A request is marked done only when every rule able to
serve it did so in a full run (not a `--rule` run) and a count after the change finds nothing left: a held record
(a legal hold, S3 Object Lock) keeps it pending with the reason, a failure marks it failed. Requests are read
as untrusted input: ids must be scalar (retention.ids), and a request that cannot be served says why.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from retention.config import Config, RequestSource, Rule
from retention.errors import ConnectorError, RetentionError
from retention.ids import NotAnId, canonical_id
from retention.model import Action, Erasure, Selection
from retention.report import ERROR, INTERRUPTED, RuleReport
from retention.stores import Stores

CHILD_DATA = "child_data"  # always deleted, whatever the rule's action
END_USER = "end_user_request"
REASONS = ("client_instruction", END_USER, CHILD_DATA)  # anything else is refused: a reason is not free text here
DONE, PENDING, FAILED = "done", "pending", "failed"


@dataclass(frozen=True)
class ErasureRequest:
    """One row of the requests table. Ids are canonical text; `key` is the row's id as stored, to write back."""

    id: str
    key: object  # as stored, untrusted: written back through the store's own comparison
    client_id: str | None
    subject_id: str | None
    reason: str
    received_at: object  # as stored, untrusted: only ever printed
    status: str
    result: dict[str, Any] | None
    problem: str | None = None  # why it cannot be served, naming fields, never values


@dataclass
class RequestOutcome:
    """What a run did for one request: one report per rule that served it."""

    request: ErasureRequest
    rules: list[RuleReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    partial: bool = False  # a `--rule` run: some rules able to serve it did not run

    @property
    def held_by(self) -> list[str]:
        return list(dict.fromkeys(name for report in self.rules if report.held for name in report.held_by))

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(report.status in (ERROR, INTERRUPTED) for report in self.rules)

    @property
    def status(self) -> str:
        if self.failed:
            return FAILED
        if self.partial or any(report.held or report.remaining or report.remaining is None for report in self.rules):
            return PENDING  # held, records left, or not counted again (the run stopped first)
        return DONE

    @property
    def waiting_for(self) -> list[str]:
        """Why a request that did not fail is not done yet."""
        reasons = [f"held by {', '.join(self.held_by)}"] if self.held_by else []
        reasons += [f"{report.name}: {report.remaining} records remain" for report in self.rules if report.remaining]
        reasons += [f"{report.name}: a count after the change (the run stopped first)" for report in self.rules
                    if report.remaining is None]
        if self.partial:
            reasons.append("a full run: this run served it through some rules only (--rule)")
        return reasons

    def to_json(self) -> dict[str, Any]:
        return {"id": self.request.id, "status": self.status, "held_by": self.held_by, "waiting_for": self.waiting_for,
                "errors": self.errors + [f"{r.name}: {r.error}" for r in self.rules if r.error],
                "rules": [{"rule": r.name, "connector": r.connector, "target": r.target, "action": r.action,
                           "matched": r.matched, "changed": r.changed, "held": r.held, "remaining": r.remaining,
                           "status": r.status, "error": r.error} for r in self.rules]}

    def result(self, run_id: str | None, audit_file: str | None, at: str) -> dict[str, Any]:
        data = self.to_json()
        del data["id"]
        return {**data, "run_id": run_id, "audit_file": audit_file, "at": at}


def read_requests(config: Config, connectors: Stores, *, pending_only: bool
                  ) -> list[ErasureRequest]:
    """The requests table, oldest first; with `pending_only`, those whose status is pending."""
    source = config.requests
    if source is None:
        return []
    fields = [source.id_field, source.client_field, source.subject_field, source.reason_field,
              source.received_field, source.status_field, source.result_field]
    try:
        rows = list(connectors.rows(source.connector).read_rows(source.table, fields))
    except RetentionError as exc:
        raise ConnectorError(f"cannot read erasure requests from {source.connector}:{source.table} ({exc})") from None
    requests = [_request(source, row) for row in rows]
    shared = Counter(r.id for r in requests if r.key is not None)
    requests = [replace(r, problem=f"{shared[r.id]} rows of {source.table} have this {source.id_field}: the outcome "
                                   "could not be written to one of them alone, so ids must be unique")
                if shared.get(r.id, 0) > 1 else r for r in requests]
    requests.sort(key=lambda r: str(r.received_at))
    if pending_only:
        requests = [r for r in requests if r.status in source.pending_statuses]
    return requests


def _request(source: RequestSource, row: Mapping[str, Any]) -> ErasureRequest:
    raw = row.get(source.result_field)
    try:
        result = json.loads(raw) if isinstance(raw, str) and raw else raw
    except json.JSONDecodeError:
        result = None
    result = result if isinstance(result, dict) else None  # whatever else the column holds is no outcome of ours
    reason = row.get(source.reason_field)
    reason = reason if isinstance(reason, str) else ""
    ids: dict[str, str | None] = {}
    problems = []
    for name, key in (("id", source.id_field), ("client_id", source.client_field),
                      ("subject_id", source.subject_field)):
        try:
            ids[name] = canonical_id(row.get(key))
        except NotAnId as exc:
            ids[name] = None
            problems.append(f"{source.table}.{key}: {exc}")
    if ids["id"] is None and not problems:
        problems.append(f"{source.table}.{source.id_field} is empty: the request cannot be named or marked")
    if ids["client_id"] is None and not problems:
        problems.append(f"{source.table}.{source.client_field} is empty: the request names no client")
    if reason not in REASONS and not problems:  # never echoed: the column may hold free text about a person
        problems.append(f"{source.table}.{source.reason_field} is not one of {', '.join(REASONS)}")
    if reason in (CHILD_DATA, END_USER) and ids["subject_id"] is None and not problems:
        problems.append(f"a {reason} request must name the person in {source.table}.{source.subject_field}; "
                        "it would otherwise erase every record of the client (client_instruction does that)")
    return ErasureRequest(ids["id"] or "?", row.get(source.id_field) if ids["id"] else None, ids["client_id"],
                          ids["subject_id"], reason if reason in REASONS else "?", row.get(source.received_field),
                          str(row.get(source.status_field) or ""), result, "; ".join(problems) or None)


def applies(rule: Rule, request: ErasureRequest) -> bool:
    """A rule can serve a request when it knows its records' client (and, for one end user, the user)."""
    if not rule.client_field:
        return False
    return request.subject_id is None or rule.subject is not None


def serving_rules(rules: Sequence[Rule], request: ErasureRequest) -> list[Rule]:
    return [rule for rule in rules if applies(rule, request)]


def no_rule_problem(request: ErasureRequest) -> str:
    what = "an end user's records (subject_field or subject_key)" if request.subject_id else "a client's records"
    return f"no rule can identify {what}: nothing would be erased"


def adapt(selection: Selection, action: Action, rule: Rule, request: ErasureRequest) -> tuple[Selection, Action]:
    """The rule's selection and action, aimed at the request's records; child data is always deleted."""
    assert rule.client_field is not None and request.client_id is not None
    erasure = Erasure(request.id, rule.client_field, request.client_id,
                      rule.subject if request.subject_id is not None else None, request.subject_id)
    selection = replace(selection, age=None, client=None, erasure=erasure)
    if request.reason == CHILD_DATA:
        # deleted as quickly as possible: even records an earlier run anonymized
        return replace(selection, marker=None), Action("delete", marked_at=action.marked_at)
    return selection, action


def mark(config: Config, connectors: Stores, outcome: RequestOutcome, run_id: str,
         audit_file: str, now: datetime) -> None:
    """Write the outcome back: done with its counts, or still pending (or failed) with why."""
    source = config.requests
    assert source is not None
    if outcome.request.key is None:
        return  # no usable id: the failure shows in the run's report and log instead
    values: dict[str, Any] = {source.result_field: json.dumps(outcome.result(run_id, audit_file, now.isoformat()),
                                                              sort_keys=True)}
    if outcome.status == DONE:
        values[source.status_field] = source.done_status
    connectors.rows(source.connector).update_row(source.table, source.id_field, outcome.request.key, values)
