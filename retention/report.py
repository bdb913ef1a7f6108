"""What `plan` and `run` return: per-rule counts and status, in the stable JSON shape of the SPEC."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retention.timeutil import rfc3339

if TYPE_CHECKING:  # requests.py builds on this module's RuleReport
    from retention.requests import RequestOutcome

OK, OVER_THRESHOLD, ERROR, INTERRUPTED = "ok", "over_threshold", "error", "interrupted"


@dataclass
class RuleReport:
    name: str
    policy: str
    connector: str
    target: str
    action: str
    cutoff: datetime | None
    total: int = 0
    matched: int = 0
    held: int = 0
    unknown_age: int = 0
    changed: int = 0
    blocked: int = 0  # records the store refused to change (isolated; the rule then ends in error)
    status: str = OK
    error: str | None = None
    statement: str | None = None
    duration_ms: int = 0
    request: str | None = None  # the erasure request this rule served, if any
    remaining: int | None = None  # expired, unheld, unprocessed records still there after the rule (counted again)
    oldest_expired: datetime | None = None  # the oldest of those, by the age field (age rules only)
    held_by: tuple[str, ...] = ()  # what kept the held records: hold names, or the store's own lock

    def to_json(self, *, with_changed: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name, "policy": self.policy, "connector": self.connector, "target": self.target,
            "action": self.action, "cutoff": rfc3339(self.cutoff) if self.cutoff else None,
            "total": self.total, "matched": self.matched, "held": self.held, "unknown_age": self.unknown_age,
            "status": self.status, "error": self.error,
        }
        if with_changed:
            data["changed"] = self.changed
            data["blocked"] = self.blocked
            data["remaining"] = self.remaining
            data["oldest_expired"] = rfc3339(self.oldest_expired) if self.oldest_expired else None
        else:
            data["statement"] = self.statement  # what each batch would run, for review
        return data


@dataclass
class Report:
    """A plan (nothing changed) or a run (with run_id, audit file and `changed` per rule)."""

    now: datetime
    rules: list[RuleReport] = field(default_factory=list)
    is_run: bool = False
    dry_run: bool = False
    run_id: str | None = None
    audit_file: Path | None = None
    interrupted: bool = False
    out_of_time: bool = False  # job.max_duration ended the run early
    replica_wait_seconds: float = 0.0  # waited between batches for lagging replicas (job.max_replica_lag)
    audit_copy_error: str | None = None  # the WORM copy could not be read or written
    requests: list[RequestOutcome] = field(default_factory=list)  # each erasure request processed
    errors: list[str] = field(default_factory=list)  # failures outside any rule (an unreadable requests table)

    @property
    def exit_code(self) -> int:
        statuses = {rule.status for rule in self.rules}
        if ERROR in statuses or INTERRUPTED in statuses or self.interrupted or self.audit_copy_error or self.errors:
            return 1
        if any(outcome.failed for outcome in self.requests):
            return 1
        if OVER_THRESHOLD in statuses:
            return 3
        return 0

    @property
    def status(self) -> str:
        if self.interrupted:
            return "interrupted"
        return "failed" if self.exit_code == 1 else "ok"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"now": rfc3339(self.now),
                                "rules": [rule.to_json(with_changed=self.is_run) for rule in self.rules]}
        if self.is_run:
            data.update(run_id=self.run_id, audit_file=str(self.audit_file) if self.audit_file else None,
                        dry_run=self.dry_run, status=self.status, exit_code=self.exit_code,
                        audit_copy_error=self.audit_copy_error, errors=self.errors, out_of_time=self.out_of_time,
                        replica_wait_seconds=round(self.replica_wait_seconds, 3),
                        requests=[outcome.to_json() for outcome in self.requests])
        return data
