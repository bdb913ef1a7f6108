"""structlog set-up, done once at the CLI edge: JSON lines for machines, colour for people, never a secret."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import structlog

from retention.redact import hide

# Keys whose values must never reach a log line, whatever code passes them.
_FORBIDDEN_KEYS = frozenset({"url", "password", "secret", "pseudonym_key", "signing_key", "value", "values", "row"})


def configure(log_format: str = "auto", verbosity: int = 0, secrets: Callable[[], Iterable[str]] = frozenset) -> None:
    """Send logs to stderr: JSON unless stderr is a terminal (or `log_format` says otherwise)."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    level = {-1: logging.WARNING, 0: logging.INFO}.get(max(-1, min(verbosity, 1)), logging.DEBUG)

    def refuse_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        known = list(secrets())
        for key in list(event):
            if key in _FORBIDDEN_KEYS:
                event[key] = "***"
            elif isinstance(event[key], str) and known:
                event[key] = hide(event[key], known)
        return event

    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            refuse_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def batch_unrecorded(count: int) -> None:
    """Say how many records a batch committed after the run stopped recording changed: no audit log can hold them."""
    structlog.get_logger("retention").error(
        "batch_unrecorded", count=count,
        detail="committed after the run stopped recording; the audit log of this run lacks it")
