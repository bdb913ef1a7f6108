"""Nightly operation: signals, locks across hosts, metrics, the schedule, and the deploy files."""

from __future__ import annotations

import json
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


def start_run(sandbox: Sandbox) -> subprocess.Popen[str]:
    return subprocess.Popen([RETENTION, "--config", str(sandbox.config), "--log-format", "json", "-v", "run",
                             "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **sandbox.env()})


def test_sigterm_finishes_the_batch_signs_the_log_and_a_rerun_completes(sandbox: Sandbox,
                                                                        pg_store: PostgresStore) -> None:
    """SIGTERM mid-run: the batch in flight completes, the log ends `interrupted` and verifies; the next run ends it."""
    process = start_run(sandbox)
    assert process.stderr is not None
    for line in process.stderr:
        if '"batch_applied"' in line:
            process.send_signal(signal.SIGTERM)
            break
    stdout, _ = process.communicate(timeout=60)
    assert 1 == process.returncode
    report = json.loads(stdout)
    changed = report["rules"][0]["changed"]
    assert ("interrupted", "interrupted") == (report["status"], report["rules"][0]["status"])
    assert 0 < changed < 3000
    assert 3001 - changed == len(pg_store.find("cookie_events"))  # every batch all-or-nothing, all accounted for
    last = json.loads(audit_files(sandbox)[-1].read_text().splitlines()[-1])
    assert ("run_finished", "interrupted", changed) == (last["event"], last["status"], last["changed"])
    assert 0 == sandbox.cli("audit", "verify").exit_code
    assert 0 == sandbox.cli("run").exit_code
    assert [3000] == [r["id"] for r in pg_store.find("cookie_events")]


def test_a_second_host_exits_4_while_the_advisory_lock_is_held(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """With job.lock, a run that cannot take the PostgreSQL advisory lock changes nothing and writes nothing."""
    import psycopg

    from retention.lock import ADVISORY_KEY

    config = sandbox.config.read_text().replace('batch_size = 2\n', 'batch_size = 2\nlock = { connector = "app" }\n')
    sandbox.config.write_text(config)
    with psycopg.connect(pg_store.url, autocommit=True) as other_host:
        other_host.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))
        result = sandbox.cli("run")
        assert 4 == result.exit_code and "another host holds the run lock" in result.stderr
        assert [] == audit_files(sandbox)
    assert 0 == sandbox.cli("run").exit_code  # released with the session that held it


def test_metrics_file_has_per_rule_counts_status_and_last_success(sandbox: Sandbox, tmp_path: Path) -> None:
    """The Prometheus textfile appears atomically (folders created) with the run's numbers."""
    metrics = tmp_path / "textfile" / "sub" / "retention.prom"
    sandbox.config.write_text(sandbox.config.read_text().replace(
        "batch_size = 2\n", f'batch_size = 1000\nmetrics_file = "{metrics}"\n'))
    assert 0 == sandbox.cli("run").exit_code
    text = metrics.read_text()
    for line in ('retention_rule_changed{rule="cookies"} 3000.0', 'retention_rule_matched{rule="cookies"} 3000.0',
                 'retention_rule_failed{rule="cookies"} 0.0', "retention_run_exit_code 0.0",
                 "retention_run_success 1.0"):
        assert line in text
    success = next(line for line in text.splitlines() if line.startswith("retention_last_success_timestamp_seconds"))
    assert float(success.split()[1]) > 0
    assert not list(metrics.parent.glob("*.tmp*"))
