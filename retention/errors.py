"""One exception root, grouped by what the caller should do about it."""

from __future__ import annotations


class RetentionError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1


class ConfigError(RetentionError):
    """The configuration or the command line is wrong; nothing was changed."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class UsageError(ConfigError):
    """A flag or argument is not acceptable (for example `run --now` in the future)."""


class KeyProblem(ConfigError):
    """A signing or pseudonym key is missing, unreadable or unsafe."""


class ConnectorError(RetentionError):
    """A store could not be reached or refused an operation."""


class TargetMissing(ConnectorError):
    """A table, collection or bucket named by a rule does not exist."""


class LockHeld(RetentionError):
    """Another run holds the lock; nothing was changed."""

    exit_code = 4


class AuditError(RetentionError):
    """The audit log could not be written or read."""


class VerificationFailed(RetentionError):
    """An audit file fails verification (`audit verify`'s exit code)."""

    exit_code = 5
