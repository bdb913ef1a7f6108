"""`requests certificate`: one erasure request's story, from the signed audit logs, as a statement to hand over.

The evidence is the audit log, not the requests table: every unit that served a request logs its `rule_started`,
`batch_applied` and `rule_finished` (or `rule_failed`) with the request's id, and those lines are signed and chained.
The requests table contributes only what the log does not hold (when the request was received, and its status).
The statement names rules, stores, counts, hold names, runs and file hashes: never a value read from a record, not
even the client's or the person's id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retention.audit.events import RunFiles
from retention.audit.verify import RunCheck
from retention.audit.writer import run_files

VERIFY_LOG = "openssl pkeyutl -verify -pubin -inkey audit-public.pem -rawin -in {file} -sigfile {file}.sig"
OWN_LOCK = "the store's own lock (Object Lock)"


@dataclass
class RequestWork:
    """What one run did for the request through one rule."""

    run_id: str
    rule: str
    connector: str | None
    target: str | None
    action: str | None
    holds: list[str]
    started: str | None
    changed: int = 0
    held: int = 0
    remaining: int | None = None
    outcome: str = "incomplete"  # finished | failed | incomplete (the run ended before the unit did)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        held_by = (self.holds or [OWN_LOCK]) if self.held else []
        return {"run_id": self.run_id, "rule": self.rule, "connector": self.connector, "target": self.target,
                "action": self.action, "at": self.started, "changed": self.changed, "held": self.held,
                "held_by": held_by, "remaining": self.remaining, "outcome": self.outcome, "error": self.error}


@dataclass
class Evidence:
    """The runs that served one request, and what each did for it, oldest first."""

    runs: list[Path] = field(default_factory=list)
    work: list[RequestWork] = field(default_factory=list)
    finished_at: dict[str, str] = field(default_factory=dict)  # run id -> when its last unit for the request ended
    dry_runs: set[str] = field(default_factory=set)

    def unfinished(self, run_id: str) -> list[str]:
        """Why, by the signed log, run `run_id` did not complete the request; empty when it did: a real run in
        which every unit that served it finished with nothing held and nothing left."""
        units = [unit for unit in self.work if unit.run_id == run_id]
        if not units:
            return [f"run {run_id} did not serve it"]
        reasons = ["it was a dry run"] if run_id in self.dry_runs else []
        for unit in units:
            if unit.outcome != "finished":
                reasons.append(f"{unit.rule}: {unit.outcome}")
            elif unit.held:
                reasons.append(f"{unit.rule}: {unit.held} records held")
            elif unit.remaining != 0:
                reasons.append(f"{unit.rule}: " + ("not counted again" if unit.remaining is None
                                                   else f"{unit.remaining} records left"))
        return reasons


def gather(directory: Path, request_id: str) -> Evidence:
    """Every unit of every run in `directory` that served `request_id` (lines read leniently: verify judges)."""
    evidence = Evidence()
    for log in run_files(directory):
        units: dict[str, RequestWork] = {}
        for event in _events(log):
            if event.get("event") == "run_started" and event.get("dry_run") is not False:
                evidence.dry_runs.add(str(event.get("run_id")))
            if event.get("request") != request_id or not isinstance(event.get("rule"), str):
                continue
            rule, kind, run_id = event["rule"], event.get("event"), str(event.get("run_id"))
            if kind == "rule_started":
                holds = event.get("holds")
                units[rule] = RequestWork(run_id, rule, event.get("connector"), event.get("target"),
                                          event.get("action"), [str(h) for h in holds] if isinstance(holds, list)
                                          else [], event.get("ts"))
                evidence.work.append(units[rule])
            elif kind == "batch_applied" and rule in units:
                units[rule].changed += _count(event.get("count"))
            elif kind in ("rule_finished", "rule_failed") and rule in units:
                unit = units[rule]
                unit.held = _count(event.get("held"))
                unit.remaining = event.get("remaining") if isinstance(event.get("remaining"), int) else None
                unit.outcome = "finished" if kind == "rule_finished" else "failed"
                unit.error = str(event.get("message")) if kind == "rule_failed" else None
                evidence.finished_at[run_id] = str(event.get("ts"))
        if units:
            evidence.runs.append(log)
    return evidence


def certificate(request: dict[str, Any], evidence: Evidence, checks: dict[Path, RunCheck],
                key_fingerprint: str, issued_at: str, tool_version: str) -> dict[str, Any]:
    """The statement: the request, what was done for it rule by rule and run by run, and the files that prove it."""
    runs = []
    for log in evidence.runs:
        check = checks.get(log)
        runs.append({"run_id": RunFiles(log).run_id, "audit_file": log.name,
                     "sha256": hashlib.sha256(log.read_bytes()).hexdigest(),
                     "verification": check.status if check else "not verified",
                     "verify": VERIFY_LOG.format(file=log.name)})
    return {
        "certificate": "erasure-request", "format": 1, "issued_at": issued_at, "tool_version": tool_version,
        "public_key_fingerprint": key_fingerprint, "request": request,
        "work": [unit.to_json() for unit in evidence.work], "runs": runs,
        "how_to_verify": [
            "Each audit file: " + VERIFY_LOG.format(file="FILE.jsonl") + " (expect: Signature Verified "
            "Successfully), and `sha256sum FILE.jsonl` equals its sha256 here.",
            "This certificate, as written with --out: " + VERIFY_LOG.format(file="CERTIFICATE.json"),
            "The audit key's fingerprint: openssl pkey -pubin -in audit-public.pem -outform DER | sha256sum",
        ],
    }


def _events(log: Path) -> list[dict[str, Any]]:
    events = []
    for raw in log.read_bytes().splitlines():
        try:
            event = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not isinstance(event, dict):
            break
        events.append(event)
    return events


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
