"""Cost in proportion to what expires: counting an age rule reads the expired range, not the table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, NOW_TEXT
from tests.helpers import Sandbox, make_sandbox
from tests.stores import PostgresStore

RULE = COOKIE_RULE.replace("{target}", "table")


def scans(store: PostgresStore) -> tuple[int, int]:
    """(sequential scans, index scans) of cookie_events, as PostgreSQL's statistics count them."""
    row = store.query("SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                      "WHERE relname = 'cookie_events'")
    return int(row[0][0]), int(row[0][1])


@pytest.fixture
def big_table(tmp_path: Path, pg_store: PostgresStore) -> Sandbox:
    """50,000 cookie events, 200 of them expired, 20 without a timestamp, indexed by age and analysed."""
    pg_store.standard_schema()
    pg_store.execute("INSERT INTO cookie_events (id, collected_at) SELECT g, CASE WHEN g <= 200 "
                     "THEN timestamptz '2020-01-01' + g * interval '1 minute' WHEN g <= 220 THEN NULL "
                     "ELSE timestamptz '2026-06-01' + g * interval '1 second' END FROM generate_series(1, 50000) g")
    pg_store.execute("CREATE INDEX cookie_events_collected_at ON cookie_events (collected_at)")
    pg_store.execute("ANALYZE cookie_events")
    # the setup's own scans (CREATE INDEX reads the table) must be counted before a test takes its `before`:
    # a session reports its statistics when it ends, and the inserted rows arrive in the same report
    pg_store.engine.dispose()
    deadline = time.monotonic() + 10
    while pg_store.scalar("SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'cookie_events'") < 50000:
        assert time.monotonic() < deadline, "the setup's statistics never arrived"
        time.sleep(0.05)  # polling the server's counters
        pg_store.engine.dispose()
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(RULE.replace("max_fraction = 1.0", "max_fraction = 0.5"), clients=False)
    return box


def settled_scans(store: PostgresStore, before: tuple[int, int]) -> tuple[int, int]:
    """The counters once the job's sessions have reported theirs (PostgreSQL flushes them as a session ends)."""
    deadline = time.monotonic() + 10
    while True:
        store.execute("SELECT pg_stat_clear_snapshot()")
        now = scans(store)
        if now[1] > before[1] or time.monotonic() > deadline:
            return now
        time.sleep(0.05)  # polling the server's counters, not waiting on the job's clock


def test_plan_of_an_age_rule_reads_only_the_expired_range(big_table: Sandbox, pg_store: PostgresStore) -> None:
    """With an index on the age field, counting never scans the whole table; the counts stay exact."""
    before = scans(pg_store)
    result = big_table.cli("plan", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    rule = json.loads(result.stdout)["rules"][0]
    assert (200, 0, 20, 50000) == (rule["matched"], rule["held"], rule["unknown_age"], rule["total"])
    after = settled_scans(pg_store, before)
    assert after[0] == before[0], "the count scanned the whole table"
    assert after[1] > before[1]


def test_run_of_an_age_rule_reads_only_the_expired_range(big_table: Sandbox, pg_store: PostgresStore) -> None:
    """The batches pick their records by the index too; the run changes exactly the expired ones."""
    before = scans(pg_store)
    result = big_table.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert 200 == json.loads(result.stdout)["rules"][0]["changed"]
    after = settled_scans(pg_store, before)
    assert after[0] == before[0], "a statement scanned the whole table"
    assert 49800 == pg_store.scalar("SELECT count(*) FROM cookie_events")


def test_check_warns_when_the_age_field_has_no_index(tmp_path: Path, pg_store: PostgresStore) -> None:
    """Without an index on expire.field every run scans the whole table: `check` says so, and still exits 0."""
    store = pg_store
    store.standard_schema()
    box = make_sandbox(tmp_path / "sandbox", store)
    box.write(RULE, clients=False)
    unindexed = box.cli("check")
    assert 0 == unindexed.exit_code, unindexed.stdout + unindexed.stderr
    assert "no index on collected_at: every run scans the whole table" in unindexed.stdout
    store.execute("CREATE INDEX cookie_events_collected_at ON cookie_events (collected_at)")
    indexed = box.cli("check")
    assert 0 == indexed.exit_code and "every run scans" not in indexed.stdout, indexed.stdout
