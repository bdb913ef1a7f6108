"""The lanes (retention/dispatch.py) and the recorder (retention/run.py) under faults (from an adversarial review)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from retention.connectors.mongodb import MongoConnector
from retention.connectors.postgres import PostgresConnector

from retention import run as coordinator
from retention.config import load_config
from retention.settings import Environment
from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import SESSIONS_RULE, Sandbox, make_sandbox
from tests.stores import MongoStore, PostgresStore


def _two_stores(tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch,
                extra: str = "", cookies: int = 6, sessions: int = 6) -> Sandbox:
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * cookies, timedelta(days=1))
    mongo_store.database["sessions"].insert_many(
        [{"_id": i, "started_at": NOW - timedelta(days=800 if i < sessions else 1)} for i in range(sessions + 1)])
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE + SESSIONS_RULE, clients=False,
              extra=f'[connectors.events]\ntype = "mongodb"\nurl = "{mongo_store.url}"\n'
                    f'database = "{mongo_store.database.name}"\n' + extra)
    for name, value in box.env().items():
        monkeypatch.setenv(name, value)
    return box


def _log(box: Sandbox) -> str:
    logs = list(box.audit_dir.glob("*.jsonl"))
    return logs[0].read_text() if logs else ""


def _sidecar(box: Sandbox) -> str:
    ids = list(box.audit_dir.glob("*.ids"))
    return ids[0].read_text() if ids else ""


def _wait_for(condition: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _events(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(str(path)).read_text().splitlines()]


def test_held_ids_of_one_lane_and_batches_of_another_keep_the_sidecar_verifiable(
        tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit's held ids are written to the sidecar when they arrive, but accounted for by its rule_finished line;
    a batch of another lane recorded in between puts its lines after the held ones while its event comes first,
    so `audit verify` (which reads the sidecar in event order) rejects a log the run itself wrote.

    The only seams are waits: the MongoDB rule counts once the PostgreSQL rule's held ids are in the sidecar, and
    the PostgreSQL rule finishes once a MongoDB batch is in the log (lanes may interleave so on their own; the
    waits make it certain)."""
    box = _two_stores(tmp_path, pg_store, mongo_store, monkeypatch,
                      extra='[[holds]]\nname = "litigation"\nrules = ["cookies"]\n')
    real = PostgresConnector.held_ids

    def held_ids_then_wait(self: PostgresConnector, *args: Any, **kwargs: Any) -> Iterator[tuple[str, ...]]:
        yield from real(self, *args, **kwargs)
        _wait_for(lambda: '"batch_applied"' in _log(box))

    real_count = MongoConnector.count

    def count_once_ids_are_held(self: MongoConnector, *args: Any, **kwargs: Any) -> Any:
        _wait_for(lambda: "held cookies" in _sidecar(box))
        return real_count(self, *args, **kwargs)

    monkeypatch.setattr(PostgresConnector, "held_ids", held_ids_then_wait)
    monkeypatch.setattr(MongoConnector, "count", count_once_ids_are_held)
    report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW)
    assert 0 == report.exit_code, report.to_json()
    assert [6, 6] == [rule.held if rule.name == "cookies" else rule.changed for rule in report.rules]
    result = box.cli("audit", "verify")
    assert 0 == result.exit_code, result.stdout + result.stderr


def test_ctrl_c_in_the_coordinator_records_what_the_lanes_committed(
        tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """run() handles KeyboardInterrupt (a caller without signal handlers: Ctrl-C lands in the coordinator's thread).

    The recorder is healthy, yet the lanes are aborted as if recording had failed and drained: the batch committed
    meanwhile is only counted as `batch_unrecorded`, and the units in flight get no rule_failed line, in a log that
    is signed as a complete, interrupted run. Expected: Ctrl-C handled like SIGTERM (a stop request).
    """
    import os
    import signal

    import structlog.testing
    from retention.connectors.mongodb import MongoConnector as Mongo

    from retention.pacing import Pace

    box = _two_stores(tmp_path, pg_store, mongo_store, monkeypatch)
    sent: list[bool] = []

    def pause(self: Pace, store: object) -> None:  # before each lane's second batch
        if isinstance(store, PostgresConnector) and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: KeyboardInterrupt in the main (coordinator) thread
        if isinstance(store, PostgresConnector | Mongo):
            _wait_for(self.should_stop, 5)  # the run stops between batches

    monkeypatch.setattr(Pace, "before_next_batch", pause)

    monkeypatch.setattr(Pace, "must_wait", lambda self, store: True)  # replicas lag: every pause is taken
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with structlog.testing.capture_logs() as logs:
            report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent and (1, "interrupted") == (report.exit_code, report.status)
    events = _events(report.audit_file)
    deleted = (7 - pg_store.scalar("SELECT count(*) FROM cookie_events")) + \
        (7 - mongo_store.database["sessions"].count_documents({}))
    recorded = sum(e["count"] for e in events if e["event"] == "batch_applied")
    unrecorded = sum(entry["count"] for entry in logs if entry["event"] == "batch_unrecorded")
    started = {e["rule"] for e in events if e["event"] == "rule_started"}
    ended = {e["rule"] for e in events if e["event"] in ("rule_finished", "rule_failed", "rule_skipped")}
    assert (deleted, 0, started) == (recorded, unrecorded, ended), \
        f"{deleted} deleted, {recorded} in the log, {unrecorded} counted unrecorded; started {started}, ended {ended}"


def test_a_retry_logged_by_the_batch_thread_names_its_run_and_rule(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: `run_id`, `rule` and `connector` are bound to every event. With hashed ids on PostgreSQL each batch
    runs on `_BatchRunner`'s thread, which is started without the caller's context: a retry it logs (a lock wait
    over lock_timeout, a lost connection) names neither the run nor the rule."""
    import threading

    import psycopg

    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 4, timedelta(days=1))
    database = pg_store.url.rsplit("/", 1)[1]
    pg_store.execute(f'ALTER DATABASE "{database}" SET lock_timeout = \'200ms\'')
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    url = pg_store.url.replace("postgresql+psycopg://", "postgresql://")
    holder = psycopg.connect(url)
    holder.execute("SELECT * FROM cookie_events WHERE id = 0 FOR UPDATE")  # a row lock the first batch meets

    def release_once_a_batch_has_timed_out() -> None:  # not on a timer: a slow start must not miss the lock
        with psycopg.connect(url, autocommit=True) as watcher:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:  # type: ignore[index]
                time.sleep(0.02)
        time.sleep(0.5)  # past lock_timeout (200 ms): the batch has failed once and is being retried
        holder.commit()

    release = threading.Thread(target=release_once_a_batch_has_timed_out)
    release.start()
    try:
        result = box.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    finally:
        release.join()
        holder.close()
    assert 0 == result.exit_code, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    retries = [line for line in lines if line["event"] == "transient_error_retrying"]
    assert retries, "no retry happened"
    assert all({"run_id", "rule", "connector"} <= set(line) for line in retries), \
        [" ".join(sorted(line)) for line in retries]


def test_every_committed_batch_is_in_the_log_while_the_run_waits_for_replicas(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """dispatch.py: "no batch starts before the one before it is in the log". With hashed ids on PostgreSQL the
    replica-lag pause (and the stop check) now runs inside `start()`, before the batch just committed is yielded:
    for the whole wait (job.max_replica_lag: minutes, hours) that batch is committed and in no log, so a crash or
    SIGKILL meanwhile loses it from the audit. Before 0ccf8a0 the batch was "recorded first, then the pause"."""
    from retention.pacing import Pace

    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 8, timedelta(days=1))
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    for name, value in box.env().items():
        monkeypatch.setenv(name, value)
    seen: list[tuple[int, int]] = []

    def pause(self: Pace, store: object) -> None:  # a replica lagging: what is committed, what is in the log
        deleted = 9 - pg_store.scalar("SELECT count(*) FROM cookie_events")
        logged = sum(e["count"] for e in (json.loads(line) for line in _log(box).splitlines())
                     if e["event"] == "batch_applied")
        seen.append((deleted, logged))

    monkeypatch.setattr(Pace, "before_next_batch", pause)

    monkeypatch.setattr(Pace, "must_wait", lambda self, store: True)  # replicas lag: every pause is taken
    report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW)
    assert 0 == report.exit_code
    assert [(2, 2), (4, 4), (6, 6)] == seen, "(committed, in the log) at each pause"
