"""What only SQL stores have: typed timestamp columns (with and without zone, and DATE) read as the SPEC says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, END_USER_RULE, NOW_TEXT, seed_clients
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import PostgresStore, SqlStore

RULE = COOKIE_RULE.replace("{target}", "table")


@pytest.fixture
def sandbox(tmp_path: Path, store: SqlStore) -> Sandbox:
    store.standard_schema()
    return make_sandbox(tmp_path / "sandbox", store)


def run(sandbox: Sandbox) -> dict:
    result = sandbox.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_offsets_are_honoured(sandbox: Sandbox, store: SqlStore) -> None:
    """04:30+02:00 is 02:30Z, before a 03:00Z cutoff; 03:30Z is after it."""
    late = "'2024-11-29T03:30:00+00:00'" if store.type_name == "postgres" else "'2024-11-29T03:30:00Z'"
    store.execute(f"INSERT INTO cookie_events (id, collected_at) VALUES (1, '2024-11-29T04:30:00+02:00'), (2, {late})")
    sandbox.write(RULE)
    run(sandbox)
    assert [(2,)] == store.query("SELECT id FROM cookie_events")


def test_naive_timestamps_are_read_as_utc(sandbox: Sandbox, store: SqlStore) -> None:
    """A `timestamp without time zone` is UTC, whatever the session or database time zone says."""
    store.execute("CREATE TABLE visits (id INTEGER PRIMARY KEY, seen_at TIMESTAMP)")
    store.execute("INSERT INTO visits VALUES (1, '2024-11-29 02:59:00'), (2, '2024-11-29 03:01:00')")
    if store.type_name == "postgres":
        database = store.url.rsplit("/", 1)[1]
        store.execute(f"ALTER DATABASE \"{database}\" SET timezone = 'Pacific/Kiritimati'")
    sandbox.write(RULE.replace("cookie_events", "visits").replace("collected_at", "seen_at"))
    run(sandbox)
    assert [(2,)] == store.query("SELECT id FROM visits")


def test_date_columns_expire_by_their_midnight(sandbox: Sandbox, store: SqlStore) -> None:
    """A DATE is the UTC midnight that starts it: 2024-11-29 is before a 03:00Z cutoff that day, 11-30 is not."""
    store.execute("CREATE TABLE signups (id INTEGER PRIMARY KEY, day DATE)")
    store.execute("INSERT INTO signups VALUES (1, '2024-11-29'), (2, '2024-11-30'), (3, NULL)")
    sandbox.write(RULE.replace("cookie_events", "signups").replace("collected_at", "day"))
    result = sandbox.cli("plan", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    rule = json.loads(result.stdout)["rules"][0]
    assert (1, 1) == (rule["matched"], rule["unknown_age"])


def test_ill_typed_sqlite_timestamps_are_unknown_age(tmp_path: Path) -> None:
    """SQLite stores anything anywhere: numbers and junk text in a DATETIME column are never touched."""
    from tests.stores import SqliteStore

    store = SqliteStore(tmp_path / "app.db")
    store.standard_schema()
    store.execute("INSERT INTO cookie_events (id, collected_at) VALUES (1, 1234567890), (2, 'yesterday'), "
                  "(3, '2020-01-01 00:00:00')")
    box = make_sandbox(tmp_path / "sandbox", store)
    box.write(RULE)
    rule = json.loads(box.cli("plan", "--now", "2026-11-29T03:00:00Z", "--format", "json").stdout)["rules"][0]
    assert (1, 2) == (rule["matched"], rule["unknown_age"])


def test_a_client_with_an_active_duplicate_row_is_kept(sandbox: Sandbox, store: SqlStore) -> None:
    """A registry without a unique id: one ended row does not expire a client that another row says is active."""
    from datetime import timedelta

    from tests.conftest import NOW

    store.execute(f"CREATE TABLE accounts (id TEXT, status TEXT, closed_at {store.timestamptz})")
    store.insert("accounts", [{"id": "c-dup", "status": "closed", "closed_at": NOW - timedelta(days=90)},
                              {"id": "c-dup", "status": "active", "closed_at": None},
                              {"id": "c-only", "status": "closed", "closed_at": NOW - timedelta(days=90)}])
    store.insert("end_users", [{"id": 1, "client_id": "c-dup"}, {"id": 2, "client_id": "c-only"}])
    sandbox.write("""
[[rules]]
name = "users"
connector = "app"
table = "end_users"
expire = { client_field = "client_id", grace = "30 days" }
action = "delete"
max_fraction = 1.0
""")
    sandbox.config.write_text(sandbox.config.read_text().replace('table = "clients"', 'table = "accounts"'))
    assert 1 == run(sandbox)["rules"][0]["changed"]
    assert [1] == [row["id"] for row in store.find("end_users")]


def test_database_errors_name_identifiers_never_values(tmp_path: Path, pg_store: PostgresStore) -> None:
    """A foreign key names its constraint and tables; a trigger quoting a value is reported without the value."""
    pg_store.standard_schema()
    seed_clients(pg_store, NOW)
    pg_store.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, "
                     "client_id TEXT CONSTRAINT orders_client_fk REFERENCES clients(id))")
    pg_store.insert("orders", [{"id": 1, "client_id": "c-gone"}])
    pg_store.execute("UPDATE end_users SET email = '\"jane doe\"@example.com'")
    pg_store.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'refusing %', OLD.email; END $$")
    pg_store.execute("CREATE TRIGGER refuse BEFORE UPDATE ON end_users FOR EACH ROW EXECUTE FUNCTION refuse()")
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(END_USER_RULE + """
[[rules]]
name = "closed-clients"
connector = "app"
table = "clients"
expire = { after = "1 day", field = "closed_at" }
action = "delete"
max_fraction = 1.0
""")
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 1 == result.exit_code
    errors = {r["name"]: r["error"] for r in json.loads(result.stdout)["rules"]}
    assert "orders_client_fk" in errors["closed-clients"] and "orders" in errors["closed-clients"]
    assert "RaiseException" in errors["end-users"]
    evidence = result.stdout + result.stderr + "".join(p.read_text() for p in box.audit_dir.glob("*.jsonl"))
    assert "jane" not in evidence and "example.com" not in evidence
