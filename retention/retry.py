"""Retrying what a store can safely do again: bounded, with backoff, for errors that say "try again"."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("retention")
ATTEMPTS = 4  # the first try and three retries
FIRST_DELAY = 0.5  # seconds; doubled after each failure


def retrying(call: Callable[[], T], transient: Callable[[BaseException], bool], *, what: str,
             attempts: int = ATTEMPTS, first_delay: float = FIRST_DELAY,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """Call `call`; on a transient error wait and call again, at most `attempts` times in all.

    Only for work that is idempotent: every batch re-checks its whole predicate, so running it again after a
    lost connection changes nothing twice.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not transient(exc):
                raise
            log.warning("transient_error_retrying", what=what, attempt=attempt, error_class=type(exc).__name__,
                        delay_s=delay)
            sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover
