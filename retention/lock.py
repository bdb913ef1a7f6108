"""One run at a time per host: an exclusive flock that the kernel releases if the holder dies."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retention.errors import ConfigError, LockHeld


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
