"""Building configs and calling the CLI the way a user does: the package's testing sandbox, re-exported."""

from __future__ import annotations

from retention.testing.sandbox import PSEUDONYM_KEY, Sandbox, audit_files, make_sandbox

__all__ = ["PSEUDONYM_KEY", "Sandbox", "audit_files", "make_sandbox"]
