"""Being a good neighbour: a run that keeps to its time (job.max_duration) and waits for lagging replicas."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention import run as coordinator
from retention.audit import load_public_keys, verify
from retention.config import load_config
from retention.errors import ConfigError
from retention.pacing import Pace
from retention.settings import Environment
from retention.timeutil import parse_span
from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import PostgresStore


@pytest.mark.parametrize(("text", "expected"), [
    ("90 seconds", timedelta(seconds=90)), ("1 minute", timedelta(minutes=1)), ("4 hours", timedelta(hours=4)),
    ("2 days", timedelta(days=2))])
def test_spans_take_seconds_minutes_hours_and_days(text: str, expected: timedelta) -> None:
    assert expected == parse_span(text)


@pytest.mark.parametrize("text", ["4", "four hours", "0 hours", "2 months", "-1 hours"])
def test_a_bad_span_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_span(text)


def test_max_duration_in_the_config_is_validated(tmp_path: Path) -> None:
    config = tmp_path / "retention.toml"
    config.write_text('[job]\nmax_duration = "soon"\n[connectors.app]\ntype = "sql"\nurl = "sqlite://"\n'
                      + COOKIE_RULE.replace("{target}", "table"))
    with pytest.raises(ConfigError, match=r"job\.max_duration"):
        load_config(config)


def ticking(start: datetime, step: timedelta) -> Iterator[datetime]:
    """An injected wall clock: each reading is `step` later than the one before."""
    return (start + step * n for n in itertools.count())


@pytest.fixture
def many_batches(tmp_path: Path, pg_store: PostgresStore) -> Sandbox:
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 40, timedelta(days=1))
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    box.config.write_text(box.config.read_text().replace("batch_size = 2\n",
                                                         'batch_size = 2\nmax_duration = "10 minutes"\n'))
    return box


def test_max_duration_stops_between_batches_signed_and_the_next_run_goes_on(many_batches: Sandbox,
                                                                           pg_store: PostgresStore,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Past job.max_duration the run stops after the batch in flight: status interrupted, signed, exit 1."""
    for name, value in many_batches.env().items():
        monkeypatch.setenv(name, value)
    config = load_config(many_batches.config)
    readings = ticking(NOW, timedelta(seconds=20))  # every reading of the clock, 20 s on
    report = coordinator.run(config, Environment(), NOW, lambda: next(readings))
    rule = report.rules[0]
    assert (1, "interrupted", "interrupted") == (report.exit_code, report.status, rule.status)
    assert 0 < rule.changed < 40 and "max_duration" in (rule.error or "")
    assert 41 - rule.changed == pg_store.scalar("SELECT count(*) FROM cookie_events")
    events = [json.loads(line) for line in report.audit_file.read_text().splitlines()]  # type: ignore[union-attr]
    assert "interrupted" == events[-1]["status"]
    assert all(check.ok for check in verify([many_batches.audit_dir], load_public_keys([many_batches.public_key])))
    again = coordinator.run(config, Environment(), NOW, lambda: NOW)  # a clock that stands still: no time is up
    assert (0, 41 - rule.changed - 1) == (again.exit_code, again.rules[0].changed)
    assert 1 == pg_store.scalar("SELECT count(*) FROM cookie_events")


class LaggingStore:
    """A store whose replicas report the lags given, one per reading."""

    def __init__(self, *lags: float | None) -> None:
        self.lags = list(lags)

    def replica_lag(self) -> float | None:
        return self.lags.pop(0)


def test_a_lagging_replica_pauses_the_next_batch_until_it_catches_up() -> None:
    slept: list[float] = []
    pace = Pace(lambda: False, clock=lambda: NOW, budget=None, max_lag=timedelta(seconds=5), sleep=slept.append,
                monotonic=itertools.count().__next__)
    pace.before_next_batch(LaggingStore(9.0, 7.5, 6.0, 1.0))
    assert 3 == len(slept) and pace.paused_seconds > 0


def test_a_replica_within_bounds_or_unknown_never_pauses() -> None:
    slept: list[float] = []
    pace = Pace(lambda: False, clock=lambda: NOW, budget=None, max_lag=timedelta(seconds=5), sleep=slept.append)
    pace.before_next_batch(LaggingStore(4.0))
    pace.before_next_batch(LaggingStore(None))
    pace.before_next_batch(object())  # a store without replicas to ask
    assert [] == slept


def test_a_stop_request_or_the_deadline_ends_a_pause() -> None:
    slept: list[float] = []
    stop = iter([False, False, True])
    pace = Pace(lambda: next(stop), clock=lambda: NOW, budget=None, max_lag=timedelta(seconds=5),
                sleep=slept.append)
    pace.before_next_batch(LaggingStore(*[60.0] * 10))
    assert 2 == len(slept)
    readings = ticking(datetime(2026, 1, 1, tzinfo=UTC), timedelta(minutes=1))
    late = Pace(lambda: False, clock=lambda: next(readings), budget=timedelta(minutes=3),
                max_lag=timedelta(seconds=5), sleep=slept.append)
    late.before_next_batch(LaggingStore(*[60.0] * 10))
    assert late.should_stop()


def test_a_real_replica_that_stops_replaying_pauses_the_run_until_it_resumes(tmp_path: Path) -> None:
    """A streaming replica (pg_basebackup) stops replaying: the run waits between batches, then finishes."""
    import os
    import subprocess
    import sys
    import threading
    import time

    import psycopg

    from tests.servers import postgres_replica, postgres_server

    with postgres_server() as primary, postgres_replica(primary) as replica:
        store = PostgresStore(primary)
        store.standard_schema()
        add_cookies(store, NOW, *[timedelta(days=800)] * 200)
        # every deleted row costs the primary 20 ms: 4 s in all, so the run outlasts a 1 s bound
        store.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                      "$$ BEGIN PERFORM pg_sleep(0.02); RETURN OLD; END $$")
        store.execute("CREATE TRIGGER slow BEFORE DELETE ON cookie_events FOR EACH ROW EXECUTE FUNCTION slow()")
        box = make_sandbox(tmp_path / "sandbox", store)
        box.write(COOKIE_RULE, clients=False)
        metrics = tmp_path / "retention.prom"
        box.config.write_text(box.config.read_text().replace("batch_size = 2\n", (
            f'batch_size = 5\nmax_replica_lag = "1 second"\nmetrics_file = "{metrics}"\n')))
        with psycopg.connect(replica, autocommit=True) as standby:
            standby.execute("SELECT pg_wal_replay_pause()")
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "retention"), "--config", str(box.config), "--log-format", "json",
                 "-v", "run", "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, **box.env()})
            events: list[str] = []
            paused = threading.Event()

            def read_log() -> None:
                assert process.stderr is not None
                for line in process.stderr:
                    events.append(json.loads(line)["event"])
                    if events[-1] == "replica_lag_pause":
                        paused.set()

            reader = threading.Thread(target=read_log)
            reader.start()
            assert paused.wait(30), events
            left = store.scalar("SELECT count(*) FROM cookie_events")
            time.sleep(1.5)  # the replica is still stopped: the run must not start another batch meanwhile
            assert left == store.scalar("SELECT count(*) FROM cookie_events")
            assert 0 < left < 200
            standby.execute("SELECT pg_wal_replay_resume()")
            assert process.stdout is not None
            stdout = process.stdout.read()  # stderr is the reader's alone: two readers would split its lines
            process.wait(timeout=60)
            reader.join()
        assert 0 == process.returncode, stdout
        assert 200 == json.loads(stdout)["rules"][0]["changed"]
        assert "replica_lag_resume" in events
        wait = next(line for line in metrics.read_text().splitlines()
                    if line.startswith("retention_run_replica_wait_seconds"))
        assert float(wait.split()[1]) >= 1.5
        store.close()


def test_mongodb_majority_commit_lag_is_read_from_hello() -> None:
    from retention.connectors.mongodb_lag import majority_commit_lag

    written = datetime(2026, 11, 30, 1, 0, 40)
    assert 40.0 == majority_commit_lag({"lastWrite": {"lastWriteDate": written,
                                                      "majorityWriteDate": datetime(2026, 11, 30, 1, 0, 0)}})
    assert 0.0 == majority_commit_lag({"lastWrite": {"lastWriteDate": written, "majorityWriteDate": written}})
    assert majority_commit_lag({"isWritablePrimary": True}) is None  # a standalone server has no replicas
    assert majority_commit_lag({"lastWrite": {"lastWriteDate": "soon"}}) is None


def test_a_mongodb_replica_set_in_step_never_pauses_the_run(mongo_store: object, tmp_path: Path) -> None:
    """On the test server (a one-member replica set) the majority is never behind: the lag reads 0, no pause."""
    from retention.connectors.mongodb import MongoConnector

    from tests.stores import MongoStore

    assert isinstance(mongo_store, MongoStore)
    connector = MongoConnector("events", {"url": mongo_store.url, "database": mongo_store.database.name})
    assert 0.0 == connector.replica_lag()
    connector.close()
    mongo_store.standard_schema()
    add_cookies(mongo_store, NOW, *[timedelta(days=800)] * 5)
    box = make_sandbox(tmp_path / "sandbox", mongo_store)
    box.write(COOKIE_RULE, clients=False)
    box.config.write_text(box.config.read_text().replace("batch_size = 2\n",
                                                         'batch_size = 2\nmax_replica_lag = "1 second"\n'))
    result = box.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert 5 == json.loads(result.stdout)["rules"][0]["changed"] and "replica_lag_pause" not in result.stderr
