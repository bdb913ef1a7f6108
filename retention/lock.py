"""One run at a time per host: an exclusive flock that the kernel releases if the holder dies."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retention.connector import HostLock
from retention.errors import ConfigError, LockHeld

# The advisory lock's key: the first 8 bytes of SHA-256("retention"), the same on every host.
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"retention").digest()[:8], "big", signed=True)


@contextmanager
def host_lock(connector: HostLock | None) -> Iterator[None]:
    """With `job.lock`, the PostgreSQL advisory lock that keeps two hosts from enforcing at once."""
    if connector is None:
        yield
        return
    with connector.advisory_lock(ADVISORY_KEY):
        yield


@contextmanager
def run_lock(state_dir: Path) -> Iterator[None]:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(state_dir / "retention.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create the lock file in job.state_dir {state_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"another run holds the lock {state_dir / 'retention.lock'}; nothing was changed") from None
        yield
    finally:
        os.close(descriptor)
