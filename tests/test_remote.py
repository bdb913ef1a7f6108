"""Units on a real Dask cluster (a scheduler and two workers, processes of their own): one signer, no lost record."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from retention import run as coordinator
from retention.config import load_config, with_executor
from retention.errors import ConfigError
from retention.settings import Environment
from retention.testing.sandbox import PSEUDONYM_KEY
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.servers import dask_cluster
from tests.stores import PostgresStore

TABLES = 4  # one rule each: units enough for both workers


def _box(tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch, expired: int | Sequence[int],
         batch_size: int = 2) -> Sandbox:
    """A table of cookies per entry of `expired` (TABLES of them for a number), that many rows expired in each (and
    one fresh), a delete rule per table."""
    per_table = [expired] * TABLES if isinstance(expired, int) else list(expired)
    for n, expired in enumerate(per_table):
        pg_store.execute(f"CREATE TABLE cookies_{n} (id bigint PRIMARY KEY, collected_at timestamptz)")
        pg_store.execute(f"INSERT INTO cookies_{n} SELECT g, CAST(:now AS timestamptz) - "
                         "CASE WHEN g < :expired THEN interval '800 days' ELSE interval '1 day' END "
                         "FROM generate_series(0, :expired) AS g", {"now": NOW, "expired": expired})
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write("".join(f"""
[[rules]]
name = "cookies-{n}"
connector = "app"
table = "cookies_{n}"
expire = {{ after = "24 months", field = "collected_at" }}
action = "delete"
max_fraction = 1.0
""" for n in range(len(per_table))), clients=False)
    text = box.config.read_text().replace("${APP_DATABASE_URL}", pg_store.url)  # the workers lack that variable
    box.config.write_text(text.replace("batch_size = 2\n", f"batch_size = {batch_size}\n"))
    for name, value in box.env().items():
        monkeypatch.setenv(name, value)
    return box


def _left(pg_store: PostgresStore) -> list[int]:
    return [pg_store.scalar(f"SELECT count(*) FROM cookies_{n}") for n in range(TABLES)]


def _watch(box: Sandbox) -> list[dict[str, Any]]:
    """The events of the audit logs as they are being written (a line half written is not one yet)."""
    events = []
    for path in (box.root / "audit").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def _events(report: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(str(report.audit_file)).read_text().splitlines()]


def _run(box: Sandbox, address: str, **options: Any) -> Any:
    return coordinator.run(with_executor(load_config(box.config), address), Environment(), NOW, lambda: NOW,
                           **options)


def test_units_run_on_both_workers_and_the_coordinator_alone_signs(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch, dask_address: str) -> None:
    box = _box(tmp_path, pg_store, monkeypatch, expired=20)
    report = _run(box, dask_address)
    assert 0 == report.exit_code, report.to_json()
    assert [1] * TABLES == _left(pg_store)
    assert [20] * TABLES == [rule.changed for rule in report.rules]
    events = _events(report)
    workers = {e["worker"] for e in events if e["event"] == "batch_applied"}
    assert 2 == len(workers) and all(w.startswith("tcp://127.0.0.1:") for w in workers), workers
    sidecar = Path(str(report.audit_file).replace(".jsonl", ".ids")).read_text().splitlines()
    assert TABLES * 20 == len([line for line in sidecar if line.startswith("changed ")])
    assert 0 == box.cli("audit", "verify").exit_code


def test_a_stop_reaches_every_worker_between_batches(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch, dask_address: str) -> None:
    """SIGTERM on the coordinator (its stop request) stops the workers' units between batches; all is recorded."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=500)

    def stop() -> bool:  # once ten batches are in the log
        logs = list((box.root / "audit").glob("*.jsonl"))
        return bool(logs) and logs[0].read_text().count('"batch_applied"') >= 10

    report = _run(box, dask_address, should_stop=stop)
    assert (1, "interrupted") == (report.exit_code, report.status)
    deleted = sum(501 - left for left in _left(pg_store))
    events = _events(report)
    assert 20 <= deleted < TABLES * 500
    assert deleted == sum(e["count"] for e in events if e["event"] == "batch_applied")
    assert {"Interrupted"} == {e["error_class"] for e in events if e["event"] == "rule_failed"}
    assert 0 == box.cli("audit", "verify").exit_code


def test_killing_a_worker_mid_unit_loses_nothing(tmp_path: Path, pg_store: PostgresStore,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker dies mid-unit: Dask runs the unit again on the other worker, every expired record goes, every
    deleted record is in the log, and the log says the first attempt was lost."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=300)
    with dask_cluster(2, env={"RETENTION_PSEUDONYM_KEY": PSEUDONYM_KEY}) as cluster:
        victim: list[str] = []

        def kill_the_first_worker_to_apply_a_batch() -> None:
            deadline = time.monotonic() + 60
            while not victim and time.monotonic() < deadline:
                applied = [e for e in _watch(box) if e["event"] == "batch_applied"]
                if applied:
                    victim.append(applied[0]["worker"])
                    os.killpg(os.getpgid(cluster.worker_pid(victim[0])), signal.SIGKILL)
                time.sleep(0.02)

        killer = threading.Thread(target=kill_the_first_worker_to_apply_a_batch)
        killer.start()
        report = _run(box, cluster.address)
        killer.join()
    assert victim, "no batch was applied"
    assert 0 == report.exit_code, report.to_json()
    assert [1] * TABLES == _left(pg_store)
    assert TABLES * 300 == sum(rule.changed for rule in report.rules)
    events = _events(report)
    finished = [e for e in events if e["event"] in ("rule_finished", "run_finished")]  # retries keep counts whole
    assert all(e["matched"] >= e["changed"] for e in finished), \
        [(e.get("rule", "run"), e["matched"], e["changed"]) for e in finished]
    lost = [e for e in events if e["event"] == "rule_failed"]
    assert lost and {"WorkerLost"} == {e["error_class"] for e in lost}
    assert all(victim[0] in e["message"] for e in lost)
    # a batch the worker committed just before it died cannot have been sent: the log says how many it changed
    # that no batch_applied names (at most one batch per lost unit)
    unnamed = TABLES * 300 - sum(e["count"] for e in events if e["event"] == "batch_applied")
    assert 0 <= unnamed <= 2 * len(lost)
    said = sum(int(found[1]) for e in lost if (found := re.search(r"; (\d+) records it changed", e["message"])))
    assert unnamed == said, [e["message"] for e in lost]
    assert 0 == box.cli("audit", "verify").exit_code


def test_a_worker_with_another_pseudonym_secret_changes_nothing(tmp_path: Path, pg_store: PostgresStore,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Its record ids would not match the coordinator's: each unit fails, saying so, before it counts a record."""
    box = _box(tmp_path, pg_store, monkeypatch, expired=4)
    with dask_cluster(1, env={"RETENTION_PSEUDONYM_KEY": "another-secret-" + "x" * 32}) as cluster:
        report = _run(box, cluster.address)
    assert 1 == report.exit_code
    assert [5] * TABLES == _left(pg_store)
    assert all("is not the coordinator's" in (rule.error or "") for rule in report.rules)
    assert 0 == box.cli("audit", "verify").exit_code


def test_a_password_written_into_the_config_never_travels_to_the_workers(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    box = _box(tmp_path, pg_store, monkeypatch, expired=1)
    box.config.write_text(box.config.read_text().replace("postgresql://postgres@", "postgresql://postgres:hunter2@"))
    with pytest.raises(ConfigError, match=r"connectors.app.url: holds a password; with a Dask executor") as raised:
        _run(box, "tcp://127.0.0.1:1")
    assert "hunter2" not in str(raised.value)
    assert not list((box.root / "audit").glob("*.jsonl"))


def test_an_unreachable_scheduler_is_named_and_nothing_runs(tmp_path: Path, pg_store: PostgresStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    box = _box(tmp_path, pg_store, monkeypatch, expired=1)
    result = box.cli("run", "--executor", "tcp://127.0.0.1:9")
    assert 1 == result.exit_code
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.stderr
    assert [2] * TABLES == _left(pg_store)


def test_one_large_s3_rule_runs_as_shards_on_both_workers(tmp_path: Path, moto_url: str, dask_address: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole rule is judged on the coordinator; its folders are split between shards, run on both workers."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_s3 import OLD, RULE, S3Sandbox

    box = S3Sandbox(tmp_path / "s3", moto_url)
    old = [f"uploads/p{folder:02d}/{n}" for folder in range(16) for n in range(4)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: box.put(key, collected_at=OLD), old))
    box.put("uploads/p00/fresh", collected_at=NOW.isoformat())
    box.write(RULE.format(bucket=box.bucket, field="metadata:collected-at"))
    monkeypatch.setenv("RETENTION_PSEUDONYM_KEY", PSEUDONYM_KEY)
    config = load_config(box.root / "retention.toml")
    report = coordinator.run(with_executor(config, dask_address), Environment(), NOW, lambda: NOW)
    assert 0 == report.exit_code, report.to_json()
    assert [(64, 64)] == [(rule.matched, rule.changed) for rule in report.rules]
    assert ["uploads/p00/fresh"] == box.keys()
    events = _events(report)
    assert len([e for e in events if e["event"] == "rule_started"]) >= 2
    assert 2 == len({e["worker"] for e in events if e["event"] == "batch_applied"})
    assert 0 == box.cli("audit", "verify").exit_code
