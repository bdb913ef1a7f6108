"""Every committed batch reaches the audit, and a rule that finished is never called interrupted."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from retention import run as coordinator
from retention.config import load_config
from retention.pacing import Pace
from retention.settings import Environment
from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
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
