"""Where units run (job.executor): lanes side by side, one recorder, the same end state as a serial run."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from retention.connectors.mongodb import MongoConnector

from retention import run as coordinator
from retention.config import load_config, with_executor
from retention.errors import ConfigError, UsageError
from retention.pacing import Pace
from retention.settings import Environment
from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import SESSIONS_RULE, Sandbox, make_sandbox
from tests.stores import MongoStore, PostgresStore


@pytest.fixture
def two_stores(tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore,
               monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """Six expired cookies in PostgreSQL, six expired sessions in MongoDB (one fresh of each), batch size 2."""
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 6, timedelta(days=1))
    mongo_store.database["sessions"].insert_many(
        [{"_id": i, "started_at": NOW - timedelta(days=800 if i < 6 else 1)} for i in range(7)])
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE + SESSIONS_RULE, clients=False,
              extra=f'[connectors.events]\ntype = "mongodb"\nurl = "{mongo_store.url}"\n'
                    f'database = "{mongo_store.database.name}"\n')
    for name, value in box.env().items():
        monkeypatch.setenv(name, value)
    return box


def _run_watching_lanes(box: Sandbox, monkeypatch: pytest.MonkeyPatch, executor: str | None,
                        wait: float) -> list[str]:
    """Run; between its batches the PostgreSQL rule waits for the MongoDB rule to have paused once. Returns the
    pauses that waited in vain: none when the two rules run side by side."""
    mongo_paused = threading.Event()
    in_vain: list[str] = []

    def pause(self: Pace, store: object) -> None:
        if isinstance(store, MongoConnector):
            mongo_paused.set()
        elif not mongo_paused.wait(wait):
            in_vain.append(type(store).__name__)

    monkeypatch.setattr(Pace, "before_next_batch", pause)

    monkeypatch.setattr(Pace, "must_wait", lambda self, store: True)  # replicas lag: every pause is taken
    monkeypatch.setattr(coordinator, "split", lambda units, *_: list(units))  # lanes here; shards: test_sharding
    config = load_config(box.config)
    report = coordinator.run(with_executor(config, executor) if executor else config, Environment(), NOW,
                             lambda: NOW)
    assert 0 == report.exit_code, report.to_json()
    assert [6, 6] == [rule.changed for rule in report.rules]
    assert ["cookies", "sessions"] == [rule.name for rule in report.rules]  # in the config's order, always
    return in_vain


@pytest.mark.parametrize("executor", [None, "threads"])
def test_rules_on_two_stores_run_side_by_side(two_stores: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                              executor: str | None) -> None:
    """By default (a lane per store) and with threads, the MongoDB rule runs while the PostgreSQL one does."""
    assert [] == _run_watching_lanes(two_stores, monkeypatch, executor, wait=10)


def test_a_serial_run_runs_one_rule_after_the_other(two_stores: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: in a serial run the PostgreSQL rule's pauses see no MongoDB batch."""
    assert ["PostgresConnector"] * 2 == _run_watching_lanes(two_stores, monkeypatch, "serial", wait=0.2)


def test_one_worker_runs_one_unit_at_a_time(two_stores: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """executor = "threads" honours job.workers."""
    config = two_stores.config.read_text().replace("batch_size = 2\n", 'batch_size = 2\nexecutor = "threads"\n'
                                                                       "workers = 1\n")
    two_stores.config.write_text(config)
    assert ["PostgresConnector"] * 2 == _run_watching_lanes(two_stores, monkeypatch, None, wait=0.2)


def test_every_batch_names_the_worker_that_applied_it(two_stores: Sandbox) -> None:
    result = two_stores.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json", "--executor", "threads")
    assert 0 == result.exit_code, result.stdout + result.stderr
    lines = [json.loads(line) for line in Path(json.loads(result.stdout)["audit_file"]).read_text().splitlines()]
    assert {"local"} == {e["worker"] for e in lines if e["event"] == "batch_applied"}
    assert 12 == sum(e["count"] for e in lines if e["event"] == "batch_applied")
    assert 0 == two_stores.cli("audit", "verify").exit_code


@pytest.mark.parametrize(("job", "message"), [
    ('executor = "fast"', 'job.executor: expected "serial", "threads" or a Dask scheduler address'),
    ('executor = "tcp://scheduler"', "job.executor: expected"),
    ('executor = "http://scheduler:8786"', "job.executor: expected"),
    ("executor = 4", "job.executor: expected a string"),
    ("workers = 2", 'job.workers: is for executor = "threads"'),
    ('executor = "serial"\nworkers = 2', "job.workers: is the number of units run side by side"),
    ('executor = "threads"\nworkers = 0', "job.workers: expected a positive integer"),
])
def test_a_wrong_executor_setting_names_the_key(two_stores: Sandbox, job: str, message: str) -> None:
    two_stores.config.write_text(two_stores.config.read_text().replace("batch_size = 2\n", f"batch_size = 2\n{job}\n"))
    with pytest.raises(ConfigError) as raised:
        load_config(two_stores.config)
    assert message in str(raised.value)


def test_a_dask_address_without_dask_installed_says_what_to_install(
        two_stores: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name))
    plain = load_config(two_stores.config)
    with pytest.raises(UsageError, match=r"--executor: a Dask scheduler address needs Dask"):
        with_executor(plain, "tcp://s:8786")
    config = two_stores.config.read_text().replace("batch_size = 2\n", 'batch_size = 2\nexecutor = "tcp://s:8786"\n')
    two_stores.config.write_text(config)
    with pytest.raises(ConfigError, match=r"needs Dask, which is not installed: "
                                          r"pip install 'pypeserver-retention\[dask\]'"):
        load_config(two_stores.config)


def test_run_executor_flag_refuses_a_wrong_value_before_anything_runs(two_stores: Sandbox,
                                                                       mongo_store: MongoStore) -> None:
    result = two_stores.cli("run", "--executor", "fast")
    assert 2 == result.exit_code
    assert "--executor: expected" in result.stderr
    assert 7 == mongo_store.database["sessions"].count_documents({})
