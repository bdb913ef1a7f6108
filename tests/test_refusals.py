"""Records the store refuses to change: isolated, counted as blocked, never stalling the rest of the rule."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, NOW_TEXT, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import PostgresStore, SqlStore

REFUSED = 42
VISITS_RULE = """
[[rules]]
name = "visits"
connector = "app"
table = "visits"
expire = { after = "24 months", field = "created" }
action = "delete"
max_fraction = 1.0
"""


def refuse_one(store: SqlStore) -> str:
    """Make the store refuse to delete cookie event 42, its own way; return what the error names."""
    if isinstance(store, PostgresStore):
        store.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, "
                      "event_id INTEGER CONSTRAINT orders_event_fk REFERENCES cookie_events(id))")
        store.insert("orders", [{"id": 1, "event_id": REFUSED}])
        return "orders_event_fk"
    store.execute(f"CREATE TRIGGER keep_42 BEFORE DELETE ON cookie_events WHEN OLD.id = {REFUSED} "
                  "BEGIN SELECT RAISE(ABORT, 'kept by policy'); END")
    return "kept by policy"


@pytest.fixture
def refusing(store: SqlStore, tmp_path: Path) -> tuple[Sandbox, SqlStore, str]:
    store.standard_schema()
    add_cookies(store, NOW, *[timedelta(days=800)] * 100, timedelta(days=1))
    named = refuse_one(store)
    box = make_sandbox(tmp_path / "sandbox", store)
    box.write(COOKIE_RULE, clients=False)
    box.config.write_text(box.config.read_text().replace("batch_size = 2", "batch_size = 10"))
    return box, store, named


def test_one_refused_record_is_isolated_and_the_rest_of_the_rule_is_done(refusing: tuple[Sandbox, SqlStore, str]
                                                                       ) -> None:
    """100 expired, one refused: 99 deleted in one night, 1 blocked, the rule in error naming what refused."""
    box, store, named = refusing
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 1 == result.exit_code, result.stdout + result.stderr
    rule = json.loads(result.stdout)["rules"][0]
    assert (99, 1, "error") == (rule["changed"], rule["blocked"], rule["status"])
    assert named in rule["error"] and "cookie_events" in rule["error"]
    assert [REFUSED, 100] == [r["id"] for r in store.find("cookie_events")]
    events = [json.loads(line) for line in Path(json.loads(result.stdout)["audit_file"]).read_text().splitlines()]
    failed = next(e for e in events if e["event"] == "rule_failed")
    assert (99, 1) == (failed["changed"], failed["blocked"])
    # the refused record is backlog: still there, expired since 800 days before NOW
    assert (1, "2024-09-20T03:00:00Z") == (failed["remaining"], failed["oldest_expired"])
    assert (1, "2024-09-20T03:00:00Z") == (rule["remaining"], rule["oldest_expired"])
    assert 99 == sum(e["count"] for e in events if e["event"] == "batch_applied")
    assert 0 == box.cli("audit", "verify").exit_code


def test_a_refused_record_costs_a_bounded_number_of_statements_each_night(refusing: tuple[Sandbox, SqlStore, str]
                                                                          ) -> None:
    """The next night it is isolated again at the same small cost; the rest stays done."""
    box, store, _ = refusing
    box.cli("run", "--now", NOW_TEXT)
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    rule = json.loads(result.stdout)["rules"][0]
    assert (0, 1) == (rule["changed"], rule["blocked"])
    assert [REFUSED, 100] == [r["id"] for r in store.find("cookie_events")]


def test_isolation_costs_a_few_statements_per_refused_record(tmp_path: Path, pg_store: PostgresStore) -> None:
    """1,000 expired, batch 100, one refused: at most 2 x log2(100) + 3 statements more than with none refused (the
    last one reads the backlog's oldest record, which only a rule that left one has)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from retention import run as coordinator
    from retention.config import load_config
    from retention.settings import Environment

    def statements(refused: bool, name: str) -> int:
        store = pg_store
        store.execute("DROP TABLE IF EXISTS orders, cookie_events, clients, end_users")
        store.standard_schema()
        add_cookies(store, NOW, *[timedelta(days=800)] * 1000)
        if refused:
            refuse_one(store)
        box = make_sandbox(tmp_path / name, store)
        box.write(COOKIE_RULE, clients=False)
        box.config.write_text(box.config.read_text().replace("batch_size = 2", "batch_size = 100"))
        seen: list[str] = []

        def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            if statement.lstrip().upper().startswith(("DELETE", "SELECT CTID", "SELECT")):
                seen.append(statement)

        event.listen(Engine, "before_cursor_execute", count)
        try:
            coordinator.run(load_config(box.config), Environment(box.env()), NOW, lambda: NOW + timedelta(seconds=1))
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        return len(seen)

    extra = statements(True, "refused") - statements(False, "clean")
    assert 0 < extra <= 2 * 7 + 3, extra



def test_a_partitioned_table_with_a_composite_key(tmp_path: Path, pg_store: PostgresStore) -> None:
    """Monthly partitions, key (created, id): expired rows go from every partition, named by their whole key."""
    from datetime import date

    from retention.secrets import RECORD_ID_LABEL, derive
    from retention.transforms import pseudonym
    from tests.helpers import PSEUDONYM_KEY

    pg_store.execute("CREATE TABLE visits (id INTEGER, created DATE, visitor TEXT, PRIMARY KEY (created, id)) "
                     "PARTITION BY RANGE (created)")
    months = [date(2024, 1, 1), date(2024, 2, 1), date(2024, 3, 1), date(2026, 11, 1), date(2026, 12, 1)]
    for start, end in itertools.pairwise(months):
        pg_store.execute(f"CREATE TABLE visits_{start:%Y_%m} PARTITION OF visits "
                         f"FOR VALUES FROM ('{start}') TO ('{end}')")
    # the same ids in several partitions: only the whole key names a row
    rows = [{"id": n, "created": day, "visitor": f"v{n}"} for day in (date(2024, 1, 5), date(2024, 2, 5),
                                                                       date(2026, 11, 5)) for n in range(1, 4)]
    pg_store.insert("visits", rows)
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(VISITS_RULE, clients=False)
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert 6 == json.loads(result.stdout)["rules"][0]["changed"]
    assert [(date(2026, 11, 5), n) for n in range(1, 4)] == sorted(
        (r["created"], r["id"]) for r in pg_store.find("visits"))
    sidecar = Path(json.loads(result.stdout)["audit_file"].replace(".jsonl", ".ids")).read_text().split()
    key = derive(PSEUDONYM_KEY, RECORD_ID_LABEL)
    expected = {pseudonym(key, f'["{day}","{n}"]') for day in ("2024-01-05", "2024-02-05") for n in range(1, 4)}
    assert expected == set(sidecar[2::3])


def test_a_refused_row_in_one_partition_blocks_only_itself(tmp_path: Path, pg_store: PostgresStore) -> None:
    """Rows of different partitions share physical row ids; isolation tells them apart by partition too."""
    from datetime import date

    pg_store.execute("CREATE TABLE visits (id INTEGER, created DATE, PRIMARY KEY (created, id)) "
                     "PARTITION BY RANGE (created)")
    for month in (1, 2):
        pg_store.execute(f"CREATE TABLE visits_{month} PARTITION OF visits "
                         f"FOR VALUES FROM ('2024-0{month}-01') TO ('2024-0{month + 1}-01')")
    pg_store.insert("visits", [{"id": n, "created": date(2024, m, 5)} for m in (1, 2) for n in range(1, 6)])
    pg_store.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'kept'; END $$")
    pg_store.execute("CREATE TRIGGER refuse BEFORE DELETE ON visits_1 FOR EACH ROW WHEN (OLD.id = 3) "
                     "EXECUTE FUNCTION refuse()")
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(VISITS_RULE, clients=False)
    box.config.write_text(box.config.read_text().replace("batch_size = 2", "batch_size = 10"))
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    rule = json.loads(result.stdout)["rules"][0]
    assert (9, 1) == (rule["changed"], rule["blocked"]), rule["error"]
    assert [(date(2024, 1, 5), 3)] == [(r["created"], r["id"]) for r in pg_store.find("visits")]


def test_a_failed_batch_never_hides_the_batches_committed_before_it(tmp_path: Path, pg_store: PostgresStore) -> None:
    """Batch 3 fails on the statement itself (not a record's refusal): batches 1 and 2 are named, then the error."""
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=900 - n) for n in range(8)])  # ids in age order: 0 is oldest
    pg_store.execute("CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF OLD.id = 4 THEN EXECUTE 'SELECT * FROM no_such_table'; END IF; RETURN OLD; END $$")
    pg_store.execute("CREATE TRIGGER broken BEFORE DELETE ON cookie_events FOR EACH ROW EXECUTE FUNCTION broken()")
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 1 == result.exit_code, result.stdout + result.stderr
    rule = json.loads(result.stdout)["rules"][0]
    assert ("error", 4) == (rule["status"], rule["changed"]), rule
    assert [4, 5, 6, 7] == [row[0] for row in pg_store.query("SELECT id FROM cookie_events ORDER BY id")]
    sidecar = Path(json.loads(result.stdout)["audit_file"].replace(".jsonl", ".ids")).read_text().splitlines()
    assert 4 == len([line for line in sidecar if line.startswith("changed cookies ")])
