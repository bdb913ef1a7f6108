"""Building configs and calling the CLI the way a user does (the package's testing sandbox, re-exported), and
injecting the failures a run must survive."""

from __future__ import annotations

from typing import Any

import pytest

from retention.audit.writer import AuditWriter
from retention.testing.sandbox import PSEUDONYM_KEY, Sandbox, audit_files, make_sandbox

SESSIONS_RULE = """
[[rules]]
name = "sessions"
connector = "events"
collection = "sessions"
expire = { after = "24 months", field = "started_at" }
action = "delete"
max_fraction = 1.0
"""


def fail_audit_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """The disk fills up: the `call`-th writing of record ids to the audit sidecar fails (ENOSPC)."""
    real = AuditWriter.record_ids
    calls = [0]

    def failing(self: AuditWriter, *args: Any, **kwargs: Any) -> tuple[int, str]:
        calls[0] += 1
        if calls[0] == call:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AuditWriter, "record_ids", failing)


__all__ = ["PSEUDONYM_KEY", "SESSIONS_RULE", "Sandbox", "audit_files", "fail_audit_at", "make_sandbox"]
