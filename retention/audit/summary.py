"""Reading audit logs back for people: one summary per run, and the per-rule story of one run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retention.audit.events import RUN_FILE, RunFiles


@dataclass
class RunSummary:
    path: Path
    run_id: str
    started: str | None = None
    now: str | None = None
    dry_run: bool | None = None
    status: str = "incomplete"
    exit_code: int | None = None
    signed: bool = False
    totals: dict[str, int] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)

    def to_json(self, *, with_rules: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"run_id": self.run_id, "file": str(self.path), "started": self.started,
                                "now": self.now, "dry_run": self.dry_run, "status": self.status,
                                "exit_code": self.exit_code, "signed": self.signed, **self.totals}
        if with_rules:
            data["rules"] = self.rules
            data["run_started"] = self.header
        return data


def summarize(path: Path) -> RunSummary:
    """What a run file says, read leniently: a damaged line ends the reading (`audit verify` judges)."""
    match = RUN_FILE.match(path.name)
    summary = RunSummary(path, match.group(2) if match else path.stem,
                         signed=RunFiles(path).signed)
    rules: dict[str, dict[str, Any]] = {}
    for raw in path.read_bytes().splitlines():
        try:
            event = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not isinstance(event, dict):
            break
        kind = event.get("event")
        if kind == "run_started":
            summary.started, summary.now, summary.dry_run = event.get("ts"), event.get("now"), event.get("dry_run")
            summary.header = {k: v for k, v in event.items() if k not in ("prev", "seq", "event")}
        elif kind == "rule_started":
            rules[event["rule"]] = {"rule": event["rule"], "connector": event.get("connector"),
                                    "target": event.get("target"), "action": event.get("action"),
                                    "cutoff": event.get("cutoff"), "status": "incomplete", "changed": 0}
        elif kind in ("rule_finished", "rule_skipped", "rule_failed") and event.get("rule") in rules:
            entry = rules[event["rule"]]
            entry.update({k: event[k] for k in ("matched", "changed", "held", "unknown_age", "total") if k in event})
            entry["status"] = {"rule_finished": "ok", "rule_skipped": "over_threshold",
                               "rule_failed": "error"}[kind]
            if kind != "rule_finished":
                entry["detail"] = event.get("message") or event.get("detail")
        elif kind == "run_finished":
            summary.status, summary.exit_code = event.get("status", "?"), event.get("exit_code")
            summary.totals = {k: event[k] for k in ("matched", "changed", "held", "unknown_age") if k in event}
    summary.rules = list(rules.values())
    return summary
