"""The Dask executor (retention/remote.py) under faults, on real schedulers and workers (from an adversarial review)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from retention.errors import ConfigError
from retention.testing.sandbox import PSEUDONYM_KEY
from tests.helpers import fail_audit_at
from tests.servers import dask_cluster
from tests.stores import PostgresStore
from tests.test_remote import TABLES, _box, _events, _left, _run, _watch


@pytest.fixture(autouse=True)
def whole_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Units, not shards, are this file's subject: each rule runs as one unit (tests/test_sharding.py splits them)."""
    from retention import run as coordinator

    monkeypatch.setattr(coordinator, "split", lambda units, *_: list(units))


def test_a_recording_failure_stops_the_dask_workers(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch, dask_address: str) -> None:
    """The audit log fails (disk full) on the second batch. Locally the lanes are aborted (Pace.abort) and stop at
    their next batch; on Dask nothing tells the workers: the coordinator acknowledges every outcome unrecorded, so
    the workers go on deleting every expired record of every unit, none of it in any audit log."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=100)
    fail_audit_at(monkeypatch, 2)
    with structlog.testing.capture_logs() as logs:
        report = _run(box, dask_address)
    assert ("failed", 1) == (report.status, report.exit_code)
    deleted = sum(101 - left for left in _left(pg_store))
    unrecorded = sum(entry["count"] for entry in logs if entry["event"] == "batch_unrecorded")
    recorded = sum(e["count"] for e in _events(report) if e["event"] == "batch_applied")
    # each unit in flight may finish the batch it has under way (and, on PostgreSQL, the one after): no more
    assert deleted <= recorded + TABLES * 2 * 2, \
        f"{deleted} of {TABLES * 100} deleted after the audit failed; {recorded} recorded, {unrecorded} counted"


@pytest.mark.parametrize("secret_url", [
    "postgresql://postgres@{host}/{db}?password=hunter2",  # libpq takes the password as a URI parameter too
    "postgresql://postgres@{host}/{db}?sslpassword=hunter2",
])
def test_a_password_in_the_url_query_never_travels_to_the_workers(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch, secret_url: str) -> None:
    """_refuse_literal_secrets only looks at the URL's user-info: the same password as a query parameter (which
    libpq and psycopg accept) is not refused, and would travel in every task's arguments through the scheduler."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=1)
    host, db = pg_store.url.split("@", 1)[1].split("/", 1)
    box.config.write_text(box.config.read_text().replace(pg_store.url, secret_url.format(host=host, db=db)))
    with pytest.raises(ConfigError, match=r"connectors.app.url: holds a password; with a Dask executor"):
        _run(box, "tcp://127.0.0.1:1")  # refused before any connection: the scheduler's address does not matter


def test_a_finished_unit_is_not_run_again_when_its_worker_dies_later(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker finishes a unit, starts another, and dies. Dask keeps a finished task's result on its worker; the
    coordinator still holds the future, so Dask computes the finished unit again. That second attempt is recorded as
    the same unit starting over (a second rule_started and rule_finished for one rule, its report's matched reset),
    or, if it starts after the coordinator stopped reading outcomes, it waits for an acknowledgement that never
    comes while the coordinator waits for its result."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=300)
    outcome: dict[str, Any] = {}
    with dask_cluster(2, env={"RETENTION_PSEUDONYM_KEY": PSEUDONYM_KEY}) as cluster:
        victim: list[str] = []

        def kill_a_worker_once_it_finished_a_unit_and_began_another() -> None:
            deadline = time.monotonic() + 60
            while not victim and time.monotonic() < deadline:
                events = _watch(box)
                finished = [e["rule"] for e in events if e["event"] == "rule_finished"]
                if finished:
                    worker = next(e["worker"] for e in events
                                  if e["event"] == "batch_applied" and e["rule"] == finished[0])
                    if any(e["event"] == "batch_applied" and e["worker"] == worker and e["rule"] not in finished
                           for e in events):
                        victim.append(worker)
                        os.killpg(os.getpgid(cluster.worker_pid(worker)), signal.SIGKILL)
                time.sleep(0.02)

        killer = threading.Thread(target=kill_a_worker_once_it_finished_a_unit_and_began_another)
        killer.start()

        def run() -> None:
            outcome["report"] = _run(box, cluster.address)

        started = time.monotonic()
        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        runner.join(120)
        took = time.monotonic() - started
        killer.join()
        assert victim, "no worker was killed"
        assert not runner.is_alive(), f"the run still waits after {took:.0f} s"
    report = outcome["report"]
    events = _events(report)
    starts = {rule: sum(1 for e in events if e["event"] == "rule_started" and e["rule"] == rule)
              for rule in {e["rule"] for e in events if e["event"] == "rule_started"}}
    finishes = {rule: sum(1 for e in events if e["event"] == "rule_finished" and e["rule"] == rule) for rule in starts}
    lost = {e["rule"] for e in events if e["event"] == "rule_failed" and e["error_class"] == "WorkerLost"}
    assert 0 == report.exit_code, report.to_json()
    assert [1] * TABLES == _left(pg_store)
    # a rule whose unit ended before its worker died starts and finishes once; a lost one starts twice
    assert {rule: 2 if rule in lost else 1 for rule in starts} == starts, (starts, lost)
    assert {rule: 1 for rule in starts} == finishes, finishes


def test_a_scheduler_lost_mid_run_leaves_no_unit_reported_ok_that_never_ended(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler dies after the first batch. The coordinator does not hang and signs a failed log, but the unit
    in flight, whose end no log line records, is reported `ok` (the worker's last snapshot, taken mid-unit), and the
    error is 'unexpected OSError at core.py (connect)' rather than the scheduler being named."""
    from distributed import Client

    box = _box(tmp_path, pg_store, monkeypatch, expired=300)
    outcome: dict[str, Any] = {}
    with dask_cluster(2, env={"RETENTION_PSEUDONYM_KEY": PSEUDONYM_KEY}) as cluster:
        with Client(cluster.address, timeout="10s") as client:
            scheduler = int(client.run_on_scheduler(os.getpid))
        killed: list[bool] = []

        def kill_the_scheduler_after_the_first_batch() -> None:
            deadline = time.monotonic() + 60
            while not killed and time.monotonic() < deadline:
                if any(e["event"] == "batch_applied" for e in _watch(box)):
                    os.kill(scheduler, signal.SIGKILL)
                    killed.append(True)
                time.sleep(0.02)

        killer = threading.Thread(target=kill_the_scheduler_after_the_first_batch)
        killer.start()
        runner = threading.Thread(target=lambda: outcome.update(report=_run(box, cluster.address)), daemon=True)
        runner.start()
        runner.join(120)
        killer.join()
        assert killed and not runner.is_alive(), "the coordinator still waits for a dead scheduler"
    report = outcome["report"]
    assert (1, "failed") == (report.exit_code, report.status)
    assert report.audit_file and Path(str(report.audit_file) + ".sig").exists()
    events = _events(report)
    ended = {e["rule"] for e in events if e["event"] in ("rule_finished", "rule_failed", "rule_skipped")}
    assert [] == [(rule.name, rule.status) for rule in report.rules if rule.name not in ended and rule.status == "ok"]
    assert any("Dask scheduler" in error for error in report.errors), report.errors


def test_after_a_stop_no_queued_unit_starts_on_dask(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch, dask_address: str) -> None:
    """SIGTERM 'starts no other' unit (README; a local lane checks the stop before each unit). On Dask the stop is
    only checked between batches: every unit still queued when the stop came starts anyway on a free worker,
    counts its table, and is recorded as started and interrupted."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=500)

    asked: list[int] = []

    def stop() -> bool:  # once ten batches are in the log; remembers how long the log was then
        if asked:
            return True
        logs = list((box.root / "audit").glob("*.jsonl"))
        lines = logs[0].read_text().splitlines() if logs else []
        if sum('"batch_applied"' in line for line in lines) >= 10:
            asked.append(len(lines))
        return bool(asked)

    report = _run(box, dask_address, should_stop=stop)
    assert (1, "interrupted") == (report.exit_code, report.status)
    events = _events(report)
    # Each of the two workers (one thread each) took one unit before the stop; a unit that checked the stop just
    # before it was set may be recorded after it, but the two queued units never start: at most two ever do.
    started = [e["rule"] for e in events if e["event"] == "rule_started"]
    assert len(set(started)) <= 2, f"{started}; the stop came at log line {asked[0]}"


@pytest.mark.parametrize("gather_late", [False, True], ids=["as-it-comes", "gathered-after-the-worker-died"])
def test_a_finished_unit_lost_with_its_worker_near_the_end_does_not_stall_the_run(
        gather_late: bool, tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two units: a short one on one worker, a long one on the other. The short one's worker dies after it finished.
    The coordinator dropped that future from `pending` when it first completed; Dask computes it again once the
    other worker is free, by which time the coordinator has left its loop and waits in `future.result()` without
    reading the outcome queue, while the new attempt waits for the acknowledgement of its Started: both wait
    ACK_TIMEOUT (300 s), then the unit is recorded as started again and never ended.

    `gathered-after-the-worker-died` holds the coordinator's first fetch of a result until the worker is dead (what
    a busy machine does by chance): the fetch finds the result gone and Dask runs the unit again, which must not
    block the loop that acknowledges the new attempt."""
    from distributed import Future

    box = _box(tmp_path, pg_store, monkeypatch, expired=(4, 100))
    outcome: dict[str, Any] = {}
    with dask_cluster(2, env={"RETENTION_PSEUDONYM_KEY": PSEUDONYM_KEY}) as cluster:
        victim: list[str] = []
        if gather_late:
            real_exception = Future.exception

            def after_the_kill(self: Any, *args: Any, **kwargs: Any) -> Any:
                deadline = time.monotonic() + 60
                while not victim and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(1.0)  # the scheduler has seen the worker go
                return real_exception(self, *args, **kwargs)

            monkeypatch.setattr(Future, "exception", after_the_kill)

        def kill_the_worker_of_the_short_unit_once_it_finished() -> None:
            deadline = time.monotonic() + 60
            while not victim and time.monotonic() < deadline:
                events = _watch(box)
                if any(e["event"] == "rule_finished" and e["rule"] == "cookies-0" for e in events):
                    worker = next(e["worker"] for e in events
                                  if e["event"] == "batch_applied" and e["rule"] == "cookies-0")
                    victim.append(worker)
                    os.killpg(os.getpgid(cluster.worker_pid(worker)), signal.SIGKILL)
                time.sleep(0.02)

        killer = threading.Thread(target=kill_the_worker_of_the_short_unit_once_it_finished)
        killer.start()
        started = time.monotonic()
        runner = threading.Thread(target=lambda: outcome.update(report=_run(box, cluster.address)), daemon=True)
        runner.start()
        runner.join(150)  # a stall waits ACK_TIMEOUT (300 s); a busy machine needs time
        killer.join()
        took = time.monotonic() - started
        stalled = runner.is_alive()
    assert victim, "the short unit did not finish first"
    assert not stalled, f"the run still waits after {took:.0f} s"
    events = _events(outcome["report"])
    assert 1 == sum(e["event"] == "rule_started" and e["rule"] == "cookies-0" for e in events)


def test_workers_are_free_soon_after_the_coordinator_gives_up(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the coordinator's polling loop (run() handles KeyboardInterrupt; the seam raises it where a real
    Ctrl-C most often lands: the loop's check of the stop request). DaskLanes sets the stop event and leaves without
    acknowledging the outcomes already sent: each worker sits in `acks.get(timeout=ACK_TIMEOUT)` for 300 s, never
    looking at the stop event, holding its only thread (the next run's units queue behind it), and the batches they
    committed are neither recorded nor counted as unrecorded in the coordinator's log.

    (A real SIGINT landing in `_Session.receive` instead is taken for a recording failure: then the workers are not
    stopped at all and delete every expired record, unrecorded; see the recording-failure test.)"""
    from distributed import Client

    from retention.pacing import Pace

    box = _box(tmp_path, pg_store, monkeypatch, expired=300)
    real = Pace.should_stop
    interrupted: list[bool] = []

    def ctrl_c_after_four_batches(self: Pace) -> bool:
        if not interrupted and sum(e["event"] == "batch_applied" for e in _watch(box)) >= 4:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Pace, "should_stop", ctrl_c_after_four_batches)
    with dask_cluster(2, env={"RETENTION_PSEUDONYM_KEY": PSEUDONYM_KEY}) as cluster:
        with structlog.testing.capture_logs() as logs:
            report = _run(box, cluster.address)
        assert interrupted and (1, "interrupted") == (report.exit_code, report.status)
        with Client(cluster.address, timeout="10s") as client:
            began = time.monotonic()
            free = [client.submit(lambda n: n, n, pure=False) for n in range(2)]
            try:
                [future.result(timeout=30) for future in free]
                waited = time.monotonic() - began
            except TimeoutError:
                waited = -1.0
    deleted = sum(301 - left for left in _left(pg_store))
    recorded = sum(e["count"] for e in _events(report) if e["event"] == "batch_applied")
    unrecorded = sum(entry["count"] for entry in logs if entry["event"] == "batch_unrecorded")
    assert (deleted, True) == (recorded + unrecorded, 0 <= waited < 30), \
        f"{deleted} deleted, {recorded} recorded, {unrecorded} counted unrecorded; workers free after {waited:.0f} s " \
        "(-1: still busy after 30 s)"


def test_a_stop_ends_a_run_whose_cluster_has_no_worker_left(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker gone (scaled to zero, OOM-killed, not yet started): the units wait for a worker forever, and the
    coordinator's loop ends only when every future is done, so not even SIGTERM (a stop request) ends the run: it
    holds the run lock and never signs its log until it is SIGKILLed."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=4)
    asked = time.monotonic() + 2
    outcome: dict[str, Any] = {}
    with dask_cluster(0) as cluster:
        runner = threading.Thread(target=lambda: outcome.update(
            report=_run(box, cluster.address, should_stop=lambda: time.monotonic() > asked)), daemon=True)
        runner.start()
        runner.join(30)
        stalled = runner.is_alive()
    assert not stalled, "28 s after the stop request the run still waits for a worker"
    assert (1, "interrupted") == (outcome["report"].exit_code, outcome["report"].status)
