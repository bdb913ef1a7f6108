"""Reading audit logs back for people: one summary per run, and the per-rule story of one run."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retention.audit.events import RUN_FILE, RunFiles

ENDED = {"rule_finished": "ok", "rule_skipped": "over_threshold", "rule_failed": "error"}
SEVERITY = ("ok", "over_threshold", "error")  # a sharded rule reports its shards' worst status
COUNTS = ("matched", "changed", "held", "unknown_age", "total", "blocked", "remaining")
SHOWN = frozenset({"rule", "connector", "target", "action", "cutoff", "status", "detail",
                   "matched", "changed", "held", "unknown_age", "total"})  # what `audit show --format json` prints


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
    rules: list[dict[str, Any]] = field(default_factory=list)  # each rule's own work (not requests'), in start order
    requests: list[dict[str, Any]] = field(default_factory=list)  # per (request, rule): `request`, `reason` + counts
    errors: list[Any] = field(default_factory=list)  # run_finished's run-level errors
    header: dict[str, Any] = field(default_factory=dict)

    def to_json(self, *, with_rules: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"run_id": self.run_id, "file": str(self.path), "started": self.started,
                                "now": self.now, "dry_run": self.dry_run, "status": self.status,
                                "exit_code": self.exit_code, "signed": self.signed, **self.totals}
        if with_rules:
            data["rules"] = [{k: v for k, v in rule.items() if k in SHOWN} for rule in self.rules]
            data["run_started"] = self.header
        return data


def summarize(path: Path) -> RunSummary:
    """What a run file says, read leniently: a damaged line ends the reading (`audit verify` judges).

    A rule's work and each erasure request's work through that rule are kept apart; the shards of one unit (a
    rule split across lanes) add up into one entry, as the run's own report merges them.
    """
    match = RUN_FILE.match(path.name)
    summary = RunSummary(path, match.group(2) if match else path.stem,
                         signed=RunFiles(path).signed)
    work: dict[tuple[str, str | None], dict[str, Any]] = {}
    running: Counter[tuple[str, str | None]] = Counter()  # units started and not yet ended, per entry
    worst: dict[tuple[str, str | None], str] = {}  # the worst status of the units that ended, per entry
    for event in _events(path):
        kind = event.get("event") if isinstance(event.get("event"), str) else None  # crafted: a list, a number
        key = (str(event.get("rule")), _text(event.get("request")))
        if kind == "run_started":
            summary.started, summary.now, summary.dry_run = event.get("ts"), event.get("now"), event.get("dry_run")
            summary.header = {k: v for k, v in event.items() if k not in ("prev", "seq", "event")}
        elif kind == "rule_started":
            entry = work.setdefault(key, _entry(event))
            holds = event.get("holds")
            names = [str(name) for name in holds] if isinstance(holds, list) else []
            entry["holds"] = list(dict.fromkeys([*entry["holds"], *names]))
            entry["status"] = "incomplete"
            running[key] += 1
        elif kind in ENDED and (key in work or key[1] is not None):
            # a request refused before any rule served it ends without a start, under the rule "[requests]"
            entry = work.setdefault(key, _entry(event))
            _add(entry, event)
            worst[key] = max(worst.get(key, "ok"), ENDED[kind], key=SEVERITY.index)
            running[key] -= 1
            entry["status"] = "incomplete" if running[key] > 0 else worst[key]
            if ENDED[kind] != "ok" and "detail" not in entry:
                entry["detail"] = event.get("message") or event.get("detail")
        elif kind == "run_finished":
            summary.status, summary.exit_code = _text(event.get("status")) or "?", event.get("exit_code")
            summary.totals = {k: event[k] for k in ("matched", "changed", "held", "unknown_age") if k in event}
            errors = event.get("errors")
            summary.errors = errors if isinstance(errors, list) else []
    summary.rules = [entry for (_, request), entry in work.items() if request is None]
    summary.requests = [entry for (_, request), entry in work.items() if request is not None]
    return summary


def _events(path: Path) -> list[dict[str, Any]]:
    events = []
    for raw in path.read_bytes().splitlines():
        try:
            event = json.loads(raw)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError, a number too long for int()
            break
        if not isinstance(event, dict):
            break
        events.append(event)
    return events


def _entry(event: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"rule": str(event.get("rule")), "connector": event.get("connector"),
                             "target": event.get("target"), "action": event.get("action"),
                             "cutoff": event.get("cutoff"), "status": "incomplete", "changed": 0, "holds": []}
    if event.get("request") is not None:
        entry.update(request=_text(event.get("request")), reason=event.get("reason"))
    return entry


def _add(entry: dict[str, Any], event: dict[str, Any]) -> None:
    """One unit's end: its counts added to the entry's (the largest `total`), the oldest `oldest_expired`."""
    for name in COUNTS:
        if name in event:
            old, new = entry.get(name), event[name]
            both = all(isinstance(v, int) and not isinstance(v, bool) for v in (old, new))
            entry[name] = (max(old, new) if name == "total" else old + new) if both else new
    oldest = [v for v in (entry.get("oldest_expired"), event.get("oldest_expired")) if isinstance(v, str)]
    if "oldest_expired" in event:
        entry["oldest_expired"] = min(oldest) if oldest else None


def _text(value: object) -> str | None:
    return None if value is None else str(value)
