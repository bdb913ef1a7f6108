"""How far a MongoDB replica set's majority commit point trails its latest write, from `hello` (no privileges)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any


def majority_commit_lag(hello: Mapping[str, Any]) -> float | None:
    """Seconds between the primary's last write and the last write a majority has; None for a standalone server.

    While members lag, the majority point stays behind as the run writes, so the figure grows; it returns to
    zero once a majority has caught up.
    """
    last_write = hello.get("lastWrite")
    if not isinstance(last_write, Mapping):
        return None
    written, committed = last_write.get("lastWriteDate"), last_write.get("majorityWriteDate")
    if not isinstance(written, datetime) or not isinstance(committed, datetime):
        return None
    return max(0.0, (written - committed).total_seconds())
