"""Erasure requests: processed on the next run across stores, blocked by holds, confirmed before and after."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conformance import END_USER_RULE, seed_clients
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import MongoStore, PostgresStore

REQUESTS = '[requests]\nconnector = "app"\ntable = "erasure_requests"\n'


@pytest.fixture
def sandbox(tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore, moto_url: str) -> Sandbox:
    pg_store.standard_schema()
    pg_store.execute("CREATE TABLE erasure_requests (id TEXT PRIMARY KEY, client_id TEXT, subject_id TEXT, "
                     "reason TEXT, received_at TIMESTAMPTZ, status TEXT, result TEXT)")
    seed_clients(pg_store, NOW)
    mongo_store.database["sessions"].insert_many([
        {"_id": i, "client": "c-active", "user": f"user{i}@example.org"} for i in range(3)])
    s3 = boto3.client("s3", endpoint_url=moto_url)
    bucket = f"files-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"clients/c-active/users/user{i}@example.org/photo.jpg", Body=b"jpg")
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.bucket, box.s3 = bucket, s3  # type: ignore[attr-defined]
    box.write(END_USER_RULE.replace('marker = "anonymized_at"', 'marker = "anonymized_at"\nsubject_field = "email"')
              + f"""
[[rules]]
name = "sessions"
connector = "events"
collection = "sessions"
expire = {{ client_field = "client", grace = "30 days" }}
subject_field = "user"
action = "delete"
max_fraction = 1.0

[[rules]]
name = "photos"
connector = "files"
bucket = "{bucket}"
prefix = "clients/"
client_key = "clients/{{client_id}}/"
subject_key = "clients/{{client_id}}/users/{{subject_id}}/"
expire = {{ grace = "30 days" }}
action = "delete"
max_fraction = 1.0
""", extra=REQUESTS + f'[connectors.events]\ntype = "mongodb"\nurl = "{mongo_store.url}"\n'
                      f'database = "{mongo_store.database.name}"\n'
                      f'[connectors.files]\ntype = "s3"\nendpoint_url = "{moto_url}"\n')
    return box


def request(store: PostgresStore, rid: str, client: str, subject: str | None, reason: str) -> None:
    store.insert("erasure_requests", [{"id": rid, "client_id": client, "subject_id": subject, "reason": reason,
                                       "received_at": NOW, "status": "pending", "result": None}])


def run(sandbox: Sandbox) -> dict[str, Any]:
    result = sandbox.cli("run", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_child_data_request_is_completed_on_the_next_run(sandbox: Sandbox, pg_store: PostgresStore,
                                                           mongo_store: MongoStore) -> None:
    """One end user's records go from every store, deleted (not anonymized), and the request is marked done."""
    request(pg_store, "r-1", "c-active", "user0@example.org", "child_data")
    report = run(sandbox)
    outcome = report["requests"][0]
    assert ("r-1", "done") == (outcome["id"], outcome["status"])
    assert {"end-users": 1, "sessions": 1, "photos": 1} == {r["rule"]: r["changed"] for r in outcome["rules"]}
    assert "delete" == next(r["action"] for r in outcome["rules"] if r["rule"] == "end-users")
    assert 0 == len([r for r in pg_store.find("end_users") if r["email"] == "user0@example.org"])
    assert [1, 2] == [d["_id"] for d in mongo_store.database["sessions"].find().sort("_id", 1)]
    keys = [o["Key"] for o in sandbox.s3.list_objects_v2(Bucket=sandbox.bucket)["Contents"]]  # type: ignore[attr-defined]
    assert not any("user0@" in key for key in keys) and 2 == len(keys)
    row = pg_store.find("erasure_requests")[0]
    assert ("done", report["audit_file"]) == (row["status"], json.loads(row["result"])["audit_file"])
    audit = Path(report["audit_file"]).read_text()
    assert '"request":"r-1"' in audit and "user0@example.org" not in audit and "c-active" not in audit
    assert 0 == sandbox.cli("audit", "verify").exit_code


def test_a_request_blocked_by_a_hold_stays_pending(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """A client's instruction under a legal hold changes nothing and stays pending, saying which hold."""
    request(pg_store, "r-2", "c-active", None, "client_instruction")
    config = sandbox.config.read_text() + '\n[[holds]]\nname = "lit-9"\nclient_ids = ["c-active"]\n'
    sandbox.config.write_text(config)
    report = run(sandbox)
    outcome = report["requests"][0]
    assert ("pending", ["lit-9"]) == (outcome["status"], outcome["held_by"])
    assert 0 == sum(r["changed"] for r in outcome["rules"])
    assert "pending" == pg_store.find("erasure_requests")[0]["status"]
    assert "user0@example.org" in [r["email"] for r in pg_store.find("end_users")]


def test_requests_show_confirms_before_and_after(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """Before the run it says what would change per rule; after, what changed and the audit file proving it."""
    request(pg_store, "r-3", "c-active", None, "client_instruction")
    before = json.loads(sandbox.cli("requests", "show", "r-3", "--format", "json").stdout)
    assert {"end-users": 1, "sessions": 3, "photos": 3} == {r["rule"]: r["would_change"] for r in before["before"]}
    assert before["after"] is None
    report = run(sandbox)
    after = json.loads(sandbox.cli("requests", "show", "r-3", "--format", "json").stdout)
    assert ("done", report["audit_file"]) == (after["after"]["status"], after["after"]["audit_file"])
    assert {"end-users": 1, "sessions": 3, "photos": 3} == {r["rule"]: r["changed"] for r in after["after"]["rules"]}
    text = sandbox.cli("requests", "show", "r-3").stdout
    assert "Before (now):" in text and "After (run" in text and report["audit_file"] in text


def test_a_text_subject_names_an_integer_key(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """Request tables hold ids as text; "0" still names end user 0 of an INTEGER column."""
    sandbox.config.write_text(sandbox.config.read_text().replace('subject_field = "email"', 'subject_field = "id"'))
    request(pg_store, "r-4", "c-active", "0", "end_user_request")
    outcome = run(sandbox)["requests"][0]
    assert ("done", 1) == (outcome["status"], next(r["changed"] for r in outcome["rules"] if r["rule"] == "end-users"))
