"""Ids in PostgreSQL columns of every type compare by canonical text: no truncation, no false done."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conformance import seed_clients
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import MongoStore, PostgresStore

REQUESTS = '[requests]\nconnector = "app"\ntable = "erasure_requests"\n'

RULE = """
[[rules]]
name = "events"
policy = "s.5"
connector = "app"
table = "events"
expire = { client_field = "client_id", grace = "30 days" }
action = "delete"
max_fraction = 1.0
"""


def _sandbox(tmp_path: Path, pg_store: PostgresStore, client_type: str) -> Sandbox:
    pg_store.standard_schema()
    seed_clients(pg_store, NOW)
    pg_store.execute("CREATE TABLE erasure_requests (id TEXT PRIMARY KEY, client_id TEXT, subject_id TEXT, "
                     "reason TEXT, received_at TIMESTAMPTZ, status TEXT, result TEXT)")
    pg_store.execute(f"CREATE TABLE events (id SERIAL PRIMARY KEY, client_id {client_type}, note TEXT)")
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(RULE, extra=REQUESTS)
    return box


def test_a_request_for_a_longer_id_never_erases_another_clients_varchar_records(tmp_path: Path,
                                                                                 pg_store: PostgresStore) -> None:
    """Client 'c-active' is active; a request for client 'c-active-2' must not touch its records.

    The rule's client column is VARCHAR(8): the request's id is longer than the column.
    """
    box = _sandbox(tmp_path, pg_store, "VARCHAR(8)")
    pg_store.execute("INSERT INTO events (client_id, note) VALUES ('c-active', 'a'), ('c-active', 'b')")
    pg_store.insert("erasure_requests", [{"id": "r1", "client_id": "c-active-2", "subject_id": None,
                                          "reason": "client_instruction", "received_at": NOW, "status": "pending",
                                          "result": None}])
    result = box.cli("run", "--format", "json")
    assert 2 == pg_store.scalar("SELECT count(*) FROM events"), result.stdout


def test_plan_never_counts_another_clients_varchar_records_as_held(tmp_path: Path, pg_store: PostgresStore) -> None:
    """A hold on 'c-gone-long' must not keep client 'c-gone's expired records (9 > 6 characters)."""
    box = _sandbox(tmp_path, pg_store, "VARCHAR(6)")
    pg_store.execute("INSERT INTO events (client_id, note) VALUES ('c-gone', 'a'), ('c-gone', 'b')")
    box.write(RULE + '\n[[holds]]\nname = "other"\nclient_ids = ["c-gone-long"]\nrules = ["events"]\n')
    planned = json.loads(box.cli("plan", "--format", "json").stdout)["rules"][0]
    assert (0, 2) == (planned["held"], planned["matched"]), planned


def test_a_numeric_client_id_is_found_by_its_canonical_text(tmp_path: Path, pg_store: PostgresStore) -> None:
    """NUMERIC(12,2) 1042.00 is the integral number 1042: canonical text "1042". A request for 1042 must erase it,
    or at least never be marked done while the record is still there."""
    box = _sandbox(tmp_path, pg_store, "NUMERIC(12,2)")
    pg_store.execute("INSERT INTO events (client_id, note) VALUES (1042, 'a')")
    pg_store.insert("erasure_requests", [{"id": "r1", "client_id": "1042", "subject_id": None,
                                          "reason": "client_instruction", "received_at": NOW, "status": "pending",
                                          "result": None}])
    box.cli("run", "--format", "json")
    left = pg_store.scalar("SELECT count(*) FROM events")
    status = pg_store.scalar("SELECT status FROM erasure_requests WHERE id = 'r1'")
    assert not (left == 1 and status == "done"), f"request marked {status} while {left} record remains"


def test_an_ended_client_in_another_store_never_expires_an_active_clients_varchar_records(
        tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore) -> None:
    """Registry in MongoDB: 'c-active' is active, 'c-active-2' closed long ago. Records in PostgreSQL VARCHAR(8)."""
    from datetime import timedelta

    mongo_store.database["clients"].insert_many([
        {"_id": "c-active", "status": "active", "closed_at": None},
        {"_id": "c-active-2", "status": "closed", "closed_at": NOW - timedelta(days=90)}])
    pg_store.execute("CREATE TABLE events (id SERIAL PRIMARY KEY, client_id VARCHAR(8), note TEXT)")
    pg_store.execute("INSERT INTO events (client_id, note) VALUES ('c-active', 'a'), ('c-active', 'b'), "
                     "('c-other', 'c')")
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(RULE, clients=False, extra=f"""
[connectors.reg]
type = "mongodb"
url = "{mongo_store.url}"
database = "{mongo_store.database.name}"

[clients]
connector = "reg"
collection = "clients"
id_field = "_id"
status_field = "status"
ended_at_field = "closed_at"
""")
    box.cli("run", "--format", "json")
    assert ["c-active", "c-active", "c-other"] == [r[0] for r in pg_store.query(
        "SELECT client_id FROM events ORDER BY id")]
