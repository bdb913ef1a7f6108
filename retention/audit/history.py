"""The audit directory as a history: every run with its verdict, each rule over time, each erasure request's fate.

Reads only the audit directory and the public keys (never a store), for `audit report`. Each run is read by
`summary` (leniently: a tampered file is still shown, as found) and judged by `verify`; rule series, request
outcomes and holds are drawn from verified runs only, so a forged line cannot make a request look done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from retention.audit.summary import RunSummary, summarize
from retention.audit.timestamp import TimestampPolicy
from retention.audit.verify import RunCheck, verify
from retention.audit.writer import run_files

DONE, PENDING, FAILED, INCOMPLETE, DRY_RUN = "done", "pending", "failed", "incomplete", "dry run"
SERIES = ("changed", "held", "blocked", "remaining")  # what the per-rule charts plot


@dataclass(frozen=True)
class Run:
    number: int  # 1 for the oldest: how the charts' x axis and the tables refer to it
    summary: RunSummary
    check: RunCheck

    @property
    def verified(self) -> bool:
        return self.check.ok


@dataclass(frozen=True)
class Service:
    """What one run did for one erasure request, through every rule that served it."""

    run: Run
    work: list[dict[str, Any]]

    @property
    def outcome(self) -> str:
        """As the run judged it (retention.requests): failed, pending while held or left, else done."""
        if self.run.summary.dry_run:
            return DRY_RUN
        if any(entry["status"] == "incomplete" for entry in self.work):
            return INCOMPLETE
        if any(entry["status"] != "ok" for entry in self.work):
            return FAILED
        return PENDING if self.waiting_for else DONE

    @property
    def waiting_for(self) -> list[str]:
        # the log names the holds in force on each rule, not which of them kept these records
        held = [entry for entry in self.work if _count(entry, "held")]
        holds = dict.fromkeys(hold for entry in held for hold in entry["holds"])
        reasons = [f"{sum(_count(entry, 'held') or 0 for entry in held)} records held (holds in force: "
                   f"{', '.join(holds) or 'none named'})"] if held else []
        reasons += [f"{entry['rule']}: {_count(entry, 'remaining')} records remain" for entry in self.work
                    if _count(entry, "remaining")]
        reasons += [f"{entry['rule']}: {entry.get('detail') or entry['status']}" for entry in self.work
                    if entry["status"] not in ("ok", "incomplete")]
        return reasons


@dataclass
class Request:
    id: str
    reason: str | None
    services: list[Service] = field(default_factory=list)  # oldest first

    @property
    def last(self) -> Service | None:
        """The newest real (not dry) run that served it: its outcome is the request's, its file the proof."""
        real = [service for service in self.services if not service.run.summary.dry_run]
        return real[-1] if real else None


@dataclass(frozen=True)
class HoldInForce:
    rule: str
    holds: list[str]
    held: int | None
    run: Run  # the newest verified run of the rule


@dataclass
class History:
    directory: Path
    runs: list[Run]
    foreign: list[RunCheck]  # files in the audit dir that are no run's (audit verify counts them as problems)
    keys: list[Ed25519PublicKey]  # the runs were verified with

    @property
    def problems(self) -> list[RunCheck]:
        return [run.check for run in self.runs if not run.verified] + self.foreign

    @property
    def verified(self) -> list[Run]:
        return [run for run in self.runs if run.verified]

    def rules(self) -> dict[str, list[tuple[Run, dict[str, Any]]]]:
        """Each rule's own work (not requests'), run by run, in the order the rules first appear."""
        found: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
        for run in self.verified:
            for entry in run.summary.rules:
                found.setdefault(entry["rule"], []).append((run, entry))
        return found

    def requests(self) -> list[Request]:
        found: dict[str, Request] = {}
        for run in self.verified:
            served: dict[str, list[dict[str, Any]]] = {}
            for entry in run.summary.requests:
                served.setdefault(entry["request"], []).append(entry)
            for request_id, work in served.items():
                request = found.setdefault(request_id, Request(request_id, None))
                request.reason = next((e["reason"] for e in work if e.get("reason")), request.reason)
                request.services.append(Service(run, work))
        return list(found.values())

    def holds(self) -> list[HoldInForce]:
        """Per rule, the holds its newest verified run applied, and how many records they kept."""
        return [HoldInForce(rule, entry["holds"], _count(entry, "held"), run)
                for rule, history in self.rules().items() for run, entry in history[-1:] if entry["holds"]]


def read_history(directory: Path, keys: Sequence[Ed25519PublicKey],
                 timestamps: TimestampPolicy | None = None) -> History:
    checks = {check.path: check for check in verify([directory], keys, timestamps)}
    runs = [Run(number, _summary(path), checks[path]) for number, path in enumerate(run_files(directory), 1)]
    known = {run.check.path for run in runs}
    return History(directory, runs, [check for path, check in checks.items() if path not in known], list(keys))


def _summary(path: Path) -> RunSummary:
    try:
        return summarize(path)
    except OSError:  # unreadable: `verify` says so; the run is still listed
        return RunSummary(path, path.stem)


def _count(entry: dict[str, Any], name: str) -> int | None:
    """A count from an untrusted line: an integer, or None when absent or not a number."""
    value = entry.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
