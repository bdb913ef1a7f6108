"""Signals to the scheduler between runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, audit_files, make_sandbox
from tests.stores import PostgresStore

RETENTION = str(Path(sys.executable).parent / "retention")


@pytest.fixture
def sandbox(tmp_path: Path, pg_store: PostgresStore) -> Sandbox:
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 3000, timedelta(days=1))
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    return box


def test_sigint_to_an_idle_scheduler_exits_promptly(sandbox: Sandbox) -> None:
    """Between runs, a signal stops the scheduler at once: no traceback, no audit file."""
    process = subprocess.Popen([RETENTION, "--config", str(sandbox.config), "--log-format", "json", "schedule"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **sandbox.env()})
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if "scheduler_started" in line:
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert "Traceback" not in stderr, stderr
    assert [] == audit_files(sandbox)
