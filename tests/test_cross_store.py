"""Client lifetimes across stores: the registry in PostgreSQL, records in PostgreSQL, MongoDB and S3."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import boto3
import pytest

from tests.conformance import CLIENTS, NOW_TEXT
from tests.conftest import NOW
from tests.helpers import make_sandbox
from tests.stores import MongoStore, PostgresStore, SqliteStore, SqlStore


@pytest.mark.parametrize("executor", ["serial", "threads", None, "dask"])
def test_one_registry_drives_three_stores(tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore,
                                         moto_url: str, executor: str | None, request: pytest.FixtureRequest) -> None:
    """Expired clients' records go everywhere; active, recent and unregistered clients' records stay.

    The same end state, counts and a verified audit log whichever way the units run (by default, a lane per store;
    "dask": on a real Dask scheduler with two workers, in processes of their own).
    """
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
    if executor == "dask":  # the workers have no APP_DATABASE_URL: the URL (no password in it) travels instead
        executor = request.getfixturevalue("dask_address")
        box.config.write_text(box.config.read_text().replace("${APP_DATABASE_URL}", pg_store.url))
    plan = json.loads(box.cli("plan", "--now", NOW_TEXT, "--format", "json").stdout)
    assert [(2, 1)] * 3 == [(r["matched"], r["unknown_age"]) for r in plan["rules"]]
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json", *(["--executor", executor] if executor else []))
    assert 0 == result.exit_code, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [("sql-users", 2), ("mongo-sessions", 2), ("s3-files", 2)] == [(r["name"], r["changed"])
                                                                          for r in report["rules"]]
    assert 0 == box.cli("audit", "verify").exit_code
    kept = ["c-active", "c-recent", "c-missing"]
    assert kept == [r["client_id"] for r in pg_store.find("end_users")]
    assert kept == [d["client"] for d in mongo_store.database["sessions"].find().sort("_id", 1)]
    assert sorted(f"clients/{c}/invoice.pdf" for c in kept) == sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])


@pytest.mark.parametrize("target", ["postgres", "sqlite"])
def test_a_large_registry_in_another_store_is_pushed_as_one_list(target: str, tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    """70,000 ended clients (more than a statement may bind one by one) reach the target as one list."""
    import sqlite3

    store: SqlStore = PostgresStore(request.getfixturevalue("pg_database")) if target == "postgres" \
        else SqliteStore(tmp_path / "app.db")

    registry = tmp_path / "registry.db"
    with sqlite3.connect(registry) as db:
        db.execute("CREATE TABLE clients (id TEXT PRIMARY KEY, status TEXT, closed_at DATETIME)")
        db.executemany("INSERT INTO clients VALUES (?, 'closed', '2020-01-01 00:00:00')",
                       [(f"c-{n}",) for n in range(70_000)])
        db.execute("INSERT INTO clients VALUES ('c-live', 'active', NULL)")
    store.standard_schema()
    store.insert("end_users", [{"id": 1, "client_id": "c-69999"}, {"id": 2, "client_id": "c-live"},
                                  {"id": 3, "client_id": "c-nobody"}])
    box = make_sandbox(tmp_path / "sandbox", store)
    box.write(f"""
[connectors.registry]
type = "sql"
url = "sqlite:///{registry}"

[[rules]]
name = "users"
connector = "app"
table = "end_users"
expire = {{ client_field = "client_id", grace = "30 days" }}
action = "delete"
max_fraction = 1.0
""")
    box.config.write_text(box.config.read_text().replace('[clients]\nconnector = "app"',
                                                          '[clients]\nconnector = "registry"'))
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    rule = json.loads(result.stdout)["rules"][0]
    assert (1, 1, 3) == (rule["changed"], rule["unknown_age"], rule["total"])
    assert [2, 3] == [r["id"] for r in store.find("end_users")]


def test_a_client_reactivated_within_its_grace_keeps_its_records(tmp_path: Path, pg_store: PostgresStore,
                                                                  mongo_store: MongoStore) -> None:
    """Closed ten days ago, then active again: nothing of it is deleted, before or after the grace period."""
    pg_store.standard_schema()
    pg_store.insert("clients", [{"id": "c-back", "status": "closed", "closed_at": NOW - timedelta(days=10)}])
    mongo_store.database["sessions"].insert_many([{"client": "c-back"}, {"client": "c-back"}])
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(f"""
[connectors.events]
type = "mongodb"
url = "{mongo_store.url}"
database = "{mongo_store.database.name}"

[[rules]]
name = "sessions"
connector = "events"
collection = "sessions"
expire = {{ client_field = "client", grace = "30 days" }}
action = "delete"
max_fraction = 1.0
""")
    assert 0 == json.loads(box.cli("plan", "--now", NOW_TEXT, "--format", "json").stdout)["rules"][0]["matched"]
    pg_store.update("clients", "c-back", {"status": "active"})
    later = (NOW + timedelta(days=60)).isoformat()
    rule = json.loads(box.cli("plan", "--now", later, "--format", "json").stdout)["rules"][0]
    assert (0, 0) == (rule["matched"], rule["unknown_age"])
    assert 2 == mongo_store.database["sessions"].count_documents({})
