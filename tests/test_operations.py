"""Nightly operation: signals, locks across hosts, metrics, the schedule, and the deploy files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    try:
        for line in process.stderr:
            if '"batch_applied"' in line:
                process.send_signal(signal.SIGTERM)
                break
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()  # never leave a run behind, whatever failed
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


def test_signals_while_stderr_is_full_never_hang_the_run(sandbox: Sandbox) -> None:
    """SIGTERMs that arrive while the run is blocked writing logs to a full pipe still end it, signed, at once."""
    import time

    process = start_run(sandbox)
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if '"batch_applied"' in line:
                break
        time.sleep(0.5)  # nobody reads stderr: the pipe fills and the run blocks inside the logger's write
        for _ in range(3):
            process.send_signal(signal.SIGTERM)
            time.sleep(0.1)
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert "interrupted" == json.loads(stdout)["status"]
    # 1, or killed by a repeated signal that arrived while the interpreter was already exiting (its handlers gone)
    assert process.returncode in (1, -signal.SIGTERM)
    assert 0 == sandbox.cli("audit", "verify").exit_code


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
    # released when the session that held it ends (the server notices the disconnect a moment later)
    deadline = time.monotonic() + 10
    while pg_store.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"):
        assert time.monotonic() < deadline, "the advisory lock outlived its session"
        time.sleep(0.05)  # polling the server
    assert 0 == sandbox.cli("run").exit_code


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


def test_metrics_file_has_the_backlog(sandbox: Sandbox, tmp_path: Path) -> None:
    """A dry run leaves its matched records and their oldest age; a run that met its work leaves 0 and 0."""
    metrics = tmp_path / "retention.prom"
    sandbox.config.write_text(sandbox.config.read_text().replace(
        "batch_size = 2\n", f'batch_size = 1000\nmetrics_file = "{metrics}"\n'))

    def sample(name: str) -> float:
        prefix = f'retention_rule_{name}{{rule="cookies"}} '
        return float(next(line for line in metrics.read_text().splitlines() if line.startswith(prefix)).split()[-1])

    result = sandbox.cli("run", "--dry-run", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    assert 0 == result.exit_code, result.stderr
    assert 3000 == sample("remaining") == json.loads(result.stdout)["rules"][0]["remaining"]
    assert timedelta(days=800).total_seconds() == sample("oldest_expired_age_seconds")
    assert 0 == sandbox.cli("run").exit_code
    assert (0, 0) == (sample("remaining"), sample("oldest_expired_age_seconds"))


def test_schedule_once_runs_now_and_exits_with_the_run_code(sandbox: Sandbox) -> None:
    """`schedule --once` is the same run, now: report on stdout, a signed log, the run's exit code."""
    result = sandbox.cli("schedule", "--once")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert 3000 == json.loads(result.stdout)["rules"][0]["changed"]
    assert 1 == len(audit_files(sandbox))


def test_the_next_fire_time_follows_schedule_and_time_zone() -> None:
    """03:00 in Europe/Berlin is 02:00 UTC in winter; the next one after noon is tomorrow's."""
    from datetime import UTC, datetime

    from retention.config import JobConfig
    from retention.schedule import next_fire

    job = JobConfig(timezone="Europe/Berlin", schedule="0 3 * * *")
    fire = next_fire(job, datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
    assert fire is not None
    assert datetime(2026, 11, 30, 2, 0, tzinfo=UTC) == fire.astimezone(UTC)


def test_the_scheduler_fires_the_run_once_at_a_time() -> None:
    """Built like `retention schedule` builds it (coalesced, one instance, a grace time), a short trigger fires it."""
    import threading
    from datetime import UTC, datetime

    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    from retention.config import JobConfig
    from retention.schedule import JOB_ID, MISFIRE_GRACE_SECONDS, build

    fired = threading.Event()
    scheduler = build(JobConfig(), lambda: fired.set() or 0, scheduler=BackgroundScheduler(timezone="UTC"),
                      when=IntervalTrigger(seconds=0.3, start_date=datetime.now(UTC)))
    job = scheduler.get_job(JOB_ID)
    assert (True, 1, MISFIRE_GRACE_SECONDS) == (job.coalesce, job.max_instances, job.misfire_grace_time)
    scheduler.start()
    try:
        assert fired.wait(timeout=10)
    finally:
        scheduler.shutdown(wait=True)


def test_a_bad_cron_expression_is_a_config_error(tmp_path: Path) -> None:
    """job.schedule is checked when the config is read, with the key named."""
    from click.testing import CliRunner

    from retention.cli import main

    path = tmp_path / "retention.toml"
    path.write_text('[job]\nschedule = "0 25 * * *"\n[connectors.app]\ntype = "sql"\nurl = "sqlite://"\n'
                    '[[rules]]\nname = "r"\nconnector = "app"\ntable = "t"\n'
                    'expire = { after = "1 day", field = "f" }\naction = "delete"\n')
    result = CliRunner().invoke(main, ["--config", str(path), "check", "--offline"])
    assert 2 == result.exit_code and "job.schedule: not a valid cron expression" in result.stderr


def test_people_at_a_terminal_see_a_bar_per_rule(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress goes to stderr with counts; stdout keeps only the result (and without a terminal, no bar at all)."""
    import io
    from datetime import UTC, datetime

    from retention import run as coordinator
    from retention.config import load_config
    from retention.progress import Bars
    from retention.settings import Environment

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    report = coordinator.run(load_config(sandbox.config), Environment(), datetime.now(UTC), lambda: datetime.now(UTC),
                        progress=Bars(stream))
    assert 0 == report.exit_code
    assert "cookies" in stream.getvalue() and "3000/3000" in stream.getvalue()


def test_two_concurrent_runs_one_exits_4(sandbox: Sandbox) -> None:
    """While one `retention run` process works, a second one on the same host changes nothing and exits 4."""
    first = start_run(sandbox)
    assert first.stderr is not None
    for line in first.stderr:
        if '"batch_applied"' in line:
            break
    second = subprocess.run([RETENTION, "--config", str(sandbox.config), "run"], capture_output=True, text=True,
                            env={**os.environ, **sandbox.env()}, check=False)
    first.communicate(timeout=120)
    assert (4, 0) == (second.returncode, first.returncode)
    assert "another run holds the lock" in second.stderr
    assert 1 == len(audit_files(sandbox))


def test_the_signed_duration_is_the_rules_own(sandbox: Sandbox, tmp_path: Path) -> None:
    """rule_finished carries how long the rule took, the same figure as the metrics file (3,000 deletes: not 0)."""
    metrics = tmp_path / "retention.prom"
    sandbox.config.write_text(sandbox.config.read_text().replace(
        "batch_size = 2\n", f'batch_size = 100\nmetrics_file = "{metrics}"\n'))
    assert 0 == sandbox.cli("run").exit_code
    finished = next(json.loads(line) for line in audit_files(sandbox)[-1].read_text().splitlines()
                    if json.loads(line)["event"] == "rule_finished")
    seconds = next(float(line.split()[1]) for line in metrics.read_text().splitlines()
                   if line.startswith('retention_rule_duration_seconds{rule="cookies"}'))
    assert 0 < finished["duration_ms"] == round(seconds * 1000)
