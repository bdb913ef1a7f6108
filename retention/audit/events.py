"""The audit log's vocabulary: one frozen type per event, and one value object for a run's files.

The writer takes only these types, so a misspelt event or field is a type error, not a line that verification
rejects later. Optional fields (those naming an erasure request, record-id digests) are left out of the line when
they are None, as they always were; every other field is written, null included.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

RUN_FILE = re.compile(r"^(\d{8}T\d{12}Z)-([0-9a-f]+)\.jsonl$")


@dataclass(frozen=True)
class RunFiles:
    """A run's files: `<stamp>-<run_id>.jsonl`, its `.sig`, its record-id sidecar `.ids`, its timestamp `.tsr`."""

    log: Path

    @classmethod
    def of(cls, directory: Path, stamp: str, run_id: str) -> RunFiles:
        return cls(directory / f"{stamp}-{run_id}.jsonl")

    @property
    def name(self) -> str:
        return self.log.name

    @property
    def run_id(self) -> str | None:
        match = RUN_FILE.match(self.log.name)
        return match.group(2) if match else None

    @property
    def signature(self) -> Path:
        return self.log.with_name(self.log.name + ".sig")

    @property
    def ids(self) -> Path:
        return self.log.with_name(self.log.name[: -len(".jsonl")] + ".ids")

    @property
    def timestamp(self) -> Path:
        return self.log.with_name(self.log.name + ".tsr")

    @property
    def signed(self) -> bool:
        return self.signature.exists()

    def existing(self) -> list[Path]:
        """The log and whichever of its companions exist, in upload order."""
        return [path for path in (self.log, self.signature, self.ids, self.timestamp) if path.exists()]

    @staticmethod
    def companion_of(path: Path) -> Path | None:
        """The run log a `.sig`, `.ids` or `.tsr` file belongs to (whether or not it exists), else None."""
        for suffix, cut in ((".jsonl.sig", ".sig"), (".jsonl.tsr", ".tsr"), (".ids", ".ids")):
            if path.name.endswith(suffix):
                log = path.with_name(path.name[: -len(cut)] + (".jsonl" if cut == ".ids" else ""))
                return log if RUN_FILE.match(log.name) else None
        return None


class AuditEvent:
    """Base of the event types: `event` names it in the log; `fields()` is what its line carries."""

    event: ClassVar[str]
    optional: ClassVar[frozenset[str]] = frozenset()

    def fields(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {k: v for k, v in values.items() if v is not None or k not in self.optional}


@dataclass(frozen=True)
class RunStarted(AuditEvent):
    event: ClassVar[str] = "run_started"
    optional: ClassVar[frozenset[str]] = frozenset({"approval_sha256"})
    tool_version: str
    config_sha256: str
    host: str
    user: str
    now: str
    clock_override: bool
    dry_run: bool
    rules: list[str]
    public_key_fingerprint: str
    previous_incomplete: bool
    record_ids: str
    approval_sha256: str | None = None  # the approved plan (`run --approved`) this run was held to


@dataclass(frozen=True)
class RuleStarted(AuditEvent):
    event: ClassVar[str] = "rule_started"
    optional: ClassVar[frozenset[str]] = frozenset({"request", "reason", "shard"})
    rule: str
    connector: str
    target: str
    action: str
    cutoff: str | None
    holds: list[str]
    request: str | None = None
    reason: str | None = None
    shard: str | None = None  # "2/8": this part of the rule's records (its thresholds were judged whole)


@dataclass(frozen=True)
class BatchApplied(AuditEvent):
    event: ClassVar[str] = "batch_applied"
    optional: ClassVar[frozenset[str]] = frozenset({"request", "ids_digest", "partition"})
    rule: str
    action: str
    count: int
    request: str | None = None
    ids_digest: str | None = None
    partition: str | None = None  # a whole partition, dropped (drop_partitions)
    worker: str = "local"  # who applied it: "local" (the coordinator's process) or a Dask worker's address


@dataclass(frozen=True)
class RuleFinished(AuditEvent):
    event: ClassVar[str] = "rule_finished"
    optional: ClassVar[frozenset[str]] = frozenset({"request", "held_ids", "held_ids_digest"})
    rule: str
    total: int
    matched: int
    changed: int
    held: int
    blocked: int
    unknown_age: int
    duration_ms: int
    request: str | None = None
    remaining: int | None = None  # the backlog: expired, unheld, unprocessed records still there, counted afresh
    oldest_expired: str | None = None  # RFC 3339: the oldest of them by the age field (null: none, or no age)
    held_ids: int | None = None
    held_ids_digest: str | None = None


@dataclass(frozen=True)
class RuleSkipped(AuditEvent):
    event: ClassVar[str] = "rule_skipped"
    rule: str
    reason: str
    detail: str | None
    matched: int
    total: int
    max_fraction: str
    max_records: int | None
    remaining: int | None = None  # a skipped rule leaves what it matched
    oldest_expired: str | None = None


@dataclass(frozen=True)
class RuleFailed(AuditEvent):
    event: ClassVar[str] = "rule_failed"
    optional: ClassVar[frozenset[str]] = frozenset({"request"})
    rule: str
    error_class: str
    message: str
    changed: int
    blocked: int
    request: str | None = None
    remaining: int | None = None  # null when the rule ended before its backlog could be counted
    oldest_expired: str | None = None


@dataclass(frozen=True)
class RunFinished(AuditEvent):
    event: ClassVar[str] = "run_finished"
    optional: ClassVar[frozenset[str]] = frozenset({"ids_sha256", "errors"})
    status: str
    exit_code: int
    duration_ms: int
    rules_failed: int
    rules_skipped: int
    requests_failed: int
    matched: int
    changed: int
    held: int
    unknown_age: int
    ids_sha256: str | None = None
    errors: list[str] | None = None


EVENTS = frozenset(kind.event for kind in (RunStarted, RuleStarted, BatchApplied, RuleFinished, RuleSkipped,
                                          RuleFailed, RunFinished))

__all__ = ["EVENTS", "RUN_FILE", "AuditEvent", "BatchApplied", "RuleFailed", "RuleFinished", "RuleSkipped",
           "RuleStarted", "RunFiles", "RunFinished", "RunStarted"]
