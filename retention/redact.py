"""Keeping personal data and secrets out of messages, logs and audit files."""

from __future__ import annotations

import re
from collections.abc import Iterable

_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|\([^()]*\)=\([^()]*\)")


def scrub(message: str) -> str:
    """Elide quoted literals and `(column)=(value)` details, which is where drivers echo data values."""
    return _QUOTED.sub("…", message).strip()


def error_summary(error: BaseException) -> tuple[str, str]:
    """An error's class and a message fit for the audit log (first line, literals elided)."""
    lines = str(error).splitlines()
    return type(error).__name__, scrub(lines[0] if lines else "")


def hide(text: str, secrets: Iterable[str]) -> str:
    """Replace every known secret value in `text` with ***."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
