"""Every committed batch reaches the audit, and a rule that finished is never called interrupted."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import structlog.testing

from retention import run as coordinator
from retention.config import load_config
from retention.pacing import Pace
from retention.settings import Environment
from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, fail_audit_at, make_sandbox
from tests.stores import PostgresStore


def _box(tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch, expired: int,
         extra_job: str = "") -> Sandbox:
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * expired, timedelta(days=1))
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    box.config.write_text(box.config.read_text().replace("batch_size = 2\n", "batch_size = 2\n" + extra_job))
    for name, value in box.env().items():
        monkeypatch.setenv(name, value)
    return box


def test_committed_batches_are_reported_when_the_step_between_batches_fails(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every committed batch must reach the audit, even when the run fails between two batches.

    The executor calls pace.before_next_batch() *before* yielding Applied for the batch it just received, and with
    record ids the SQL pipeline has already committed the following batch (named on the second thread): a failure
    there (replica_lag raising anything but ConnectorError, say) loses both from the audit.
    """
    box = _box(tmp_path, pg_store, monkeypatch, expired=10)

    def failing(self: Pace, store: object) -> None:
        raise RuntimeError("replica lag probe failed")

    monkeypatch.setattr(Pace, "before_next_batch", failing)

    monkeypatch.setattr(Pace, "must_wait", lambda self, store: True)  # replicas lag: every pause is taken
    report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW)
    deleted = 11 - pg_store.scalar("SELECT count(*) FROM cookie_events")
    sidecar = Path(str(report.audit_file).replace(".jsonl", ".ids"))
    named = len([line for line in sidecar.read_text().splitlines() if line.startswith("changed ")]) \
        if sidecar.exists() else 0
    assert (deleted, deleted) == (report.rules[0].changed, named), \
        f"{deleted} rows deleted, {report.rules[0].changed} reported changed, {named} named in the sidecar"


def test_a_rule_that_finished_all_its_batches_is_not_reported_interrupted(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_duration passing just after the rule's last batch marks a complete rule 'interrupted' (exit 1)."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=2, extra_job='max_duration = "10 minutes"\n')

    def clock():  # the run's time is up once the store has nothing expired left: after the only batch
        done = pg_store.scalar("SELECT count(*) FROM cookie_events") == 1
        return NOW + (timedelta(hours=1) if done else timedelta(0))

    report = coordinator.run(load_config(box.config), Environment(), NOW, clock)
    rule = report.rules[0]
    assert 1 == pg_store.scalar("SELECT count(*) FROM cookie_events")  # every expired record is gone
    assert 2 == rule.changed
    assert ("ok", 0) == (rule.status, report.exit_code), (rule.status, rule.error, report.exit_code)


def test_the_pause_between_batches_comes_before_the_next_batch_starts(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """With hashed record ids the next PostgreSQL batch runs while one is named: it must still wait for the pause.

    At each pause exactly the batches before it have changed the store (two records each), and the run then names
    every record it changed.
    """
    box = _box(tmp_path, pg_store, monkeypatch, expired=10)
    seen: list[int] = []

    def pause(self: Pace, store: object) -> None:
        time.sleep(0.1)  # a batch started too early would commit meanwhile
        seen.append(11 - pg_store.scalar("SELECT count(*) FROM cookie_events"))

    monkeypatch.setattr(Pace, "before_next_batch", pause)

    monkeypatch.setattr(Pace, "must_wait", lambda self, store: True)  # replicas lag: every pause is taken
    report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW)
    assert [2, 4, 6, 8] == seen  # deleted before each pause: never a batch ahead of it
    sidecar = Path(str(report.audit_file).replace(".jsonl", ".ids"))
    assert 10 == len([line for line in sidecar.read_text().splitlines() if line.startswith("changed ")])


def test_a_stop_asked_for_while_a_batch_is_named_ends_the_rule_with_every_change_recorded(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop arriving between batches starts no new batch, and the batches committed all reach the audit."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=10)
    pauses = [0]

    def pause(self: Pace, store: object) -> None:
        pauses[0] += 1

    monkeypatch.setattr(Pace, "before_next_batch", pause)

    monkeypatch.setattr(Pace, "must_wait", lambda self, store: True)  # replicas lag: every pause is taken
    report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW,
                             should_stop=lambda: pauses[0] >= 2)
    deleted = 11 - pg_store.scalar("SELECT count(*) FROM cookie_events")
    sidecar = Path(str(report.audit_file).replace(".jsonl", ".ids"))
    named = len([line for line in sidecar.read_text().splitlines() if line.startswith("changed ")])
    assert (4, 4, 4) == (deleted, report.rules[0].changed, named)
    assert "interrupted" == report.rules[0].status


def test_a_batch_committed_after_the_audit_failed_is_counted_in_the_log(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit failing while the next batch runs: that batch can reach no audit, so the log counts it."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=10)
    fail_audit_at(monkeypatch, 2)
    with structlog.testing.capture_logs() as logs:
        report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW)
    assert ("failed", 1) == (report.status, report.exit_code)
    deleted = 11 - pg_store.scalar("SELECT count(*) FROM cookie_events")
    unrecorded = sum(entry["count"] for entry in logs if entry["event"] == "batch_unrecorded")
    # one batch recorded, one failing to be, one run on meanwhile: every record deleted is in the log or counted
    assert (6, 4) == (deleted, unrecorded)
