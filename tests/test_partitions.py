"""Opt-in: a range partition whose every row is expired and none held is dropped whole, not deleted row by row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, NOW_TEXT
from tests.helpers import Sandbox, make_sandbox
from tests.stores import PostgresStore

RULE = COOKIE_RULE.replace("{target}", "table").replace('"delete"', '"delete"\ndrop_partitions = true')
MONTHS = [f"2024-{m:02d}" for m in range(8, 13)]  # the cutoff, 2024-11-29, falls inside 2024-11


def partitioned(store: PostgresStore, *, client: bool = False) -> None:
    """cookie_events by month of collected_at, 2024-08 to 2024-12, 10 rows a month (ids 100*m + n)."""
    store.execute("CREATE TABLE cookie_events (id INTEGER, visitor_id TEXT, client_id TEXT, "
                  "collected_at TIMESTAMPTZ NOT NULL, ip TEXT, PRIMARY KEY (id, collected_at)) "
                  "PARTITION BY RANGE (collected_at)")
    for index, month in enumerate(MONTHS):
        following = MONTHS[index + 1] if index + 1 < len(MONTHS) else "2025-01"
        name = f"cookie_events_{month.replace('-', '_')}"
        store.execute(f"CREATE TABLE {name} PARTITION OF cookie_events "
                      f"FOR VALUES FROM ('{month}-01') TO ('{following}-01')")
        store.execute(f"INSERT INTO cookie_events SELECT {index + 8} * 100 + n, 'v', "
                      f"CASE WHEN n = 0 THEN 'c-held' ELSE 'c-other' END, "
                      f"timestamptz '{month}-01' + n * interval '2 days', '192.0.2.1' FROM generate_series(0, 9) n")
    store.execute("CREATE INDEX ON cookie_events (collected_at)")


def partitions(store: PostgresStore) -> list[str]:
    return [row[0] for row in store.query("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                          "WHERE i.inhparent = 'cookie_events'::regclass ORDER BY 1")]


@pytest.fixture
def box(tmp_path: Path, pg_store: PostgresStore) -> Sandbox:
    partitioned(pg_store)
    return make_sandbox(tmp_path / "sandbox", pg_store)


def run(box: Sandbox) -> dict:
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_wholly_expired_partitions_are_dropped_the_rest_deleted_by_row(box: Sandbox, pg_store: PostgresStore) -> None:
    box.write(RULE, clients=False)
    expired_november = pg_store.scalar("SELECT count(*) FROM cookie_events_2024_11 "
                                       "WHERE collected_at < '2024-11-29T03:00:00Z'")
    report = run(box)
    rule = report["rules"][0]
    # 2024-08..10 are expired whole (30 rows, dropped); 2024-11 holds the cutoff: its expired rows go one by one
    assert 30 + expired_november == rule["changed"]
    assert ["cookie_events_2024_11", "cookie_events_2024_12"] == partitions(pg_store)
    assert 0 == pg_store.scalar("SELECT count(*) FROM cookie_events WHERE collected_at < '2024-11-29T03:00:00Z'")
    assert 20 - expired_november == pg_store.scalar("SELECT count(*) FROM cookie_events")
    events = [json.loads(line) for line in Path(report["audit_file"]).read_text().splitlines()]
    dropped = [e for e in events if e["event"] == "batch_applied" and e.get("partition")]
    assert [("public.cookie_events_2024_08", 10), ("public.cookie_events_2024_09", 10),
            ("public.cookie_events_2024_10", 10)] == [(e["partition"], e["count"]) for e in dropped]
    sidecar = Path(report["audit_file"].replace(".jsonl", ".ids")).read_text().splitlines()
    assert rule["changed"] == len([line for line in sidecar if line.startswith("changed ")])


def test_without_the_option_no_partition_is_dropped(box: Sandbox, pg_store: PostgresStore) -> None:
    box.write(COOKIE_RULE.replace("{target}", "table"), clients=False)
    run(box)
    assert 5 == len(partitions(pg_store))
    assert 0 == pg_store.scalar("SELECT count(*) FROM cookie_events WHERE collected_at < '2024-11-29T03:00:00Z'")


def test_a_partition_with_a_held_record_is_kept_and_deleted_by_row(box: Sandbox, pg_store: PostgresStore) -> None:
    """A client hold keeps its records: their partitions are never dropped, the other records go row by row."""
    pg_store.execute("CREATE TABLE clients (id TEXT PRIMARY KEY, status TEXT, closed_at TIMESTAMPTZ)")
    rule = RULE.replace('expire = { after = "24 months", field = "collected_at" }',
                        'expire = { after = "24 months", field = "collected_at", client_field = "client_id" }')
    box.write(rule, extra='[[holds]]\nname = "lit"\nclient_ids = ["c-held"]\nrules = ["cookies"]\n')
    report = run(box)
    assert 5 == len(partitions(pg_store))
    held = pg_store.query("SELECT id FROM cookie_events WHERE collected_at < '2024-11-29T03:00:00Z' ORDER BY id")
    assert [(800,), (900,), (1000,), (1100,)] == held
    assert 4 == report["rules"][0]["held"]


def test_a_table_with_delete_triggers_is_never_dropped_from(box: Sandbox, pg_store: PostgresStore) -> None:
    """DROP would bypass the table's DELETE triggers (an audit trail, say): rows are deleted one batch at a time."""
    pg_store.execute("CREATE TABLE deleted (id INTEGER)")
    pg_store.execute("CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN INSERT INTO deleted VALUES (OLD.id); RETURN OLD; END $$")
    pg_store.execute("CREATE TRIGGER note AFTER DELETE ON cookie_events FOR EACH ROW EXECUTE FUNCTION note()")
    box.write(RULE, clients=False)
    changed = run(box)["rules"][0]["changed"]
    assert 5 == len(partitions(pg_store))
    assert changed == pg_store.scalar("SELECT count(*) FROM deleted")


def test_check_refuses_the_option_where_it_cannot_apply(tmp_path: Path, pg_store: PostgresStore) -> None:
    pg_store.standard_schema()  # cookie_events, not partitioned
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(RULE, clients=False)
    result = box.cli("check")
    assert 2 == result.exit_code and "not partitioned by range of collected_at" in result.stdout, result.stdout
