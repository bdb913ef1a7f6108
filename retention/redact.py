"""Keeping personal data and secrets out of messages, logs and audit files.

Error messages name identifiers (tables, columns, constraints, hosts), never values. Our own errors are built
that way; a driver's error is described from its structured fields (see the connectors); any other exception is
named by its class and where it was raised, because its text may echo a value it was given.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from pathlib import Path

from retention.errors import RetentionError


def error_summary(error: BaseException) -> tuple[str, str]:
    """An error's class and a message fit for the audit log and the run's report."""
    if isinstance(error, RetentionError):
        lines = str(error).splitlines()
        return type(error).__name__, lines[0] if lines else ""
    frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
    return type(error).__name__, (f"unexpected {type(error).__name__}{where}; its text is not shown, "
                                  "as it may hold data values")


def hide(text: str, secrets: Iterable[str]) -> str:
    """Replace every known secret value in `text` with ***."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
