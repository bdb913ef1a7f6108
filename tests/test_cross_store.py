"""Client lifetimes across stores: the registry in PostgreSQL, records in PostgreSQL, MongoDB and S3."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import boto3

from tests.conformance import CLIENTS, NOW_TEXT
from tests.conftest import NOW
from tests.helpers import make_sandbox
from tests.stores import MongoStore, PostgresStore


def test_one_registry_drives_three_stores(tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore,
                                         moto_url: str) -> None:
    """Expired clients' records go everywhere; active, recent and unregistered clients' records stay."""
    pg_store.standard_schema()
    pg_store.insert("clients", [{"id": c, "status": s, "closed_at": NOW - timedelta(days=d) if d else None}
                                for c, s, d in CLIENTS])
    owners = ["c-active", "c-gone", "c-recent", "c-asked", "c-missing"]
    pg_store.insert("end_users", [{"id": i, "client_id": c} for i, c in enumerate(owners)])
    mongo_store.database["sessions"].insert_many([{"_id": i, "client": c} for i, c in enumerate(owners)])
    s3 = boto3.client("s3", endpoint_url=moto_url)
    bucket = f"files-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for c in owners:
        s3.put_object(Bucket=bucket, Key=f"clients/{c}/invoice.pdf", Body=b"%PDF")
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(f"""
[connectors.events]
type = "mongodb"
url = "{mongo_store.url}"
database = "{mongo_store.database.name}"

[connectors.files]
type = "s3"
endpoint_url = "{moto_url}"

[[rules]]
name = "sql-users"
connector = "app"
table = "end_users"
expire = {{ client_field = "client_id", grace = "30 days" }}
action = "delete"
max_fraction = 1.0

[[rules]]
name = "mongo-sessions"
connector = "events"
collection = "sessions"
expire = {{ client_field = "client", grace = "30 days" }}
action = "delete"
max_fraction = 1.0

[[rules]]
name = "s3-files"
connector = "files"
bucket = "{bucket}"
prefix = "clients/"
client_key = "clients/{{client_id}}/"
expire = {{ grace = "30 days" }}
action = "delete"
max_fraction = 1.0
""")
    plan = json.loads(box.cli("plan", "--now", NOW_TEXT, "--format", "json").stdout)
    assert [(2, 1)] * 3 == [(r["matched"], r["unknown_age"]) for r in plan["rules"]]
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    kept = ["c-active", "c-recent", "c-missing"]
    assert kept == [r["client_id"] for r in pg_store.find("end_users")]
    assert kept == [d["client"] for d in mongo_store.database["sessions"].find().sort("_id", 1)]
    assert sorted(f"clients/{c}/invoice.pdf" for c in kept) == sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
