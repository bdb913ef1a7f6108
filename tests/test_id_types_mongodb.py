"""MongoDB ids of BSON types beyond text and numbers: a uuid stored as BSON UUID is the same client."""

from __future__ import annotations

import uuid
from pathlib import Path

from bson.binary import Binary, UuidRepresentation

from tests.conformance import seed_clients
from tests.conftest import NOW
from tests.helpers import make_sandbox
from tests.stores import MongoStore, PostgresStore

CLIENT = uuid.UUID("7d444840-9dc0-11d1-b245-5ffdce74fad2")


def test_a_request_is_never_done_while_its_uuid_keyed_documents_remain(tmp_path: Path, pg_store: PostgresStore,
                                                                       mongo_store: MongoStore) -> None:
    """Documents name their client by a BSON UUID (Binary subtype 4, how drivers store uuid.UUID).
    A client_instruction for that uuid must erase them, or stay pending/failed: never 'done' with them left."""
    pg_store.standard_schema()
    seed_clients(pg_store, NOW)
    pg_store.execute("CREATE TABLE erasure_requests (id TEXT PRIMARY KEY, client_id TEXT, subject_id TEXT, "
                     "reason TEXT, received_at TIMESTAMPTZ, status TEXT, result TEXT)")
    pg_store.insert("erasure_requests", [{"id": "r1", "client_id": str(CLIENT), "subject_id": None,
                                          "reason": "client_instruction", "received_at": NOW, "status": "pending",
                                          "result": None}])
    mongo_store.database["sessions"].insert_many([
        {"_id": i, "client": Binary.from_uuid(CLIENT, UuidRepresentation.STANDARD), "user": f"u{i}@example.org"}
        for i in range(3)])
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write("""
[[rules]]
name = "sessions"
connector = "events"
collection = "sessions"
expire = { client_field = "client", grace = "30 days" }
action = "delete"
max_fraction = 1.0
""", extra='[requests]\nconnector = "app"\ntable = "erasure_requests"\n'
           f'[connectors.events]\ntype = "mongodb"\nurl = "{mongo_store.url}"\n'
           f'database = "{mongo_store.database.name}"\n')
    box.cli("run", "--format", "json")
    left = mongo_store.database["sessions"].count_documents({})
    status = pg_store.scalar("SELECT status FROM erasure_requests WHERE id = 'r1'")
    assert not (left and status == "done"), f"request {status} while {left} documents remain"
