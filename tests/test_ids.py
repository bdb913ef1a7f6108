"""Client ids across stores: one rule (canonical text), the same verdict and the same holds on every pair of stores."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from retention.ids import NotAnId, canonical_id
from tests.conformance import NOW_TEXT
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import MongoStore, PostgresStore

REGISTRIES = ["pg-bigint", "pg-text", "mongo-int", "mongo-str"]
TARGETS = ["pg-bigint", "pg-text", "mongo-int", "mongo-str", "s3"]
CLIENT_IDS = (1041, 1042, 1043)  # ended long ago, ended long ago but held, active


def test_canonical_text_of_ids() -> None:
    """Integers, their text, uuids in either case and integral decimals compare equal; structures are no ids."""
    text = "5f0e0c8e-1a2b-4c3d-8e9f-00000000000a"
    assert ["1042", "1042", "1042", "c-1", text, text, "007", "-0", None, None] == [
        canonical_id(v) for v in (1042, "1042", Decimal("1042"), "c-1", uuid.UUID(text), text.upper(), "007", "-0",
                                  None, "")]
    for value in ({"$exists": True}, ["1"], True, 1.5, b"1"):
        with pytest.raises(NotAnId):
            canonical_id(value)


def _value(kind: str, client: int) -> Any:
    return client if kind.endswith(("bigint", "int")) else str(client)


def _other(kind: str, client: int) -> Any:
    """The same id in the other type: the hold names ids the way the target does not store them."""
    return str(client) if kind.endswith(("bigint", "int")) else client


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("registry", REGISTRIES)
def test_ids_compare_by_text_on_every_pair_of_stores(registry: str, target: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest, moto_url: str) -> None:
    """1041's records go, 1042's are held (the hold names it in the other type), 1043's stay: on every pair."""
    pg = PostgresStore(request.getfixturevalue("pg_database")) if "pg" in registry + target else None
    mongo: MongoStore | None = request.getfixturevalue("mongo_store") if "mongo" in registry + target else None
    ended = NOW - timedelta(days=400)
    statuses = [("closed", ended), ("closed", ended), ("active", None)]
    if registry.startswith("pg"):
        assert pg is not None
        id_type = "BIGINT" if registry == "pg-bigint" else "TEXT"
        # a DATE column for ended_at: a registry in another store must read it too
        pg.execute(f"CREATE TABLE clients (id {id_type} PRIMARY KEY, status TEXT, closed_at DATE)")
        pg.insert("clients", [{"id": _value(registry, c), "status": s, "closed_at": e.date() if e else None}
                              for c, (s, e) in zip(CLIENT_IDS, statuses, strict=True)])
        registry_connector = "pg"
    else:
        assert mongo is not None
        mongo.database["clients"].insert_many([{"id": _value(registry, c), "status": s, "closed_at": e}
                                               for c, (s, e) in zip(CLIENT_IDS, statuses, strict=True)])
        registry_connector = "mongo"
    if target.startswith("pg"):
        assert pg is not None
        id_type = "BIGINT" if target == "pg-bigint" else "TEXT"
        pg.execute(f"CREATE TABLE records (id INTEGER PRIMARY KEY, client_id {id_type})")
        pg.insert("records", [{"id": n, "client_id": _value(target, c)} for n, c in enumerate(CLIENT_IDS)])
        rule = 'connector = "pg"\ntable = "records"\nexpire = { client_field = "client_id", grace = "30 days" }'
    elif target.startswith("mongo"):
        assert mongo is not None
        mongo.database["records"].insert_many([{"_id": n, "client_id": _value(target, c)}
                                               for n, c in enumerate(CLIENT_IDS)])
        rule = 'connector = "mongo"\ncollection = "records"\nexpire = { client_field = "client_id", grace = "30 days" }'
    else:
        s3 = boto3.client("s3", endpoint_url=moto_url)
        bucket = f"records-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        for c in CLIENT_IDS:
            s3.put_object(Bucket=bucket, Key=f"clients/{c}/file.txt", Body=b"x")
        rule = (f'connector = "s3"\nbucket = "{bucket}"\nclient_key = "clients/{{client_id}}/"\n'
                'expire = { grace = "30 days" }')
    held = json.dumps(_other(target if target != "s3" else "s3-int", 1042))
    box = make_sandbox(tmp_path / "box", pg or mongo)  # type: ignore[arg-type]
    box.config.write_text(f"""
[job]
state_dir = "{box.root}/state"
batch_size = 2

[audit]
dir = "{box.audit_dir}"
signing_key = "${{RETENTION_AUDIT_KEY}}"

{f'[connectors.pg]{chr(10)}type = "postgres"{chr(10)}url = "{pg.url}"' if pg else ""}
{f'[connectors.mongo]{chr(10)}type = "mongodb"{chr(10)}url = "{mongo.url}"{chr(10)}database = "{mongo.database.name}"'
 if mongo else ""}
[connectors.s3]
type = "s3"
endpoint_url = "{moto_url}"

[clients]
connector = "{registry_connector}"
{"table" if registry_connector == "pg" else "collection"} = "clients"
id_field = "id"
status_field = "status"
ended_at_field = "closed_at"
active_statuses = ["active"]
ended_statuses = ["closed"]

[[holds]]
name = "lit-1042"
client_ids = [{held}]

[[rules]]
name = "records"
{rule}
action = "delete"
max_fraction = 1.0
""")
    plan = json.loads(box.cli("plan", "--now", NOW_TEXT, "--format", "json").stdout)["rules"][0]
    assert (1, 1, 0, None) == (plan["matched"], plan["held"], plan["unknown_age"], plan["error"])
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert (1, 1) == (json.loads(result.stdout)["rules"][0]["changed"], json.loads(result.stdout)["rules"][0]["held"])
    if target.startswith("pg"):
        assert pg is not None
        left = [row["client_id"] for row in pg.find("records")]
    elif target.startswith("mongo"):
        assert mongo is not None
        left = [d["client_id"] for d in mongo.database["records"].find().sort("_id", 1)]
    else:
        left = sorted(o["Key"].split("/")[1] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert [_value(target, 1042), _value(target, 1043)] == left


def test_a_date_registry_column_counts_as_ended() -> None:
    """A DATE `ended_at` is the midnight UTC that starts it, whichever store holds the records."""
    from retention.clients import judge
    from retention.model import ClientCondition, ClientRegistry

    registry = ClientRegistry("app", "clients", "id", "status", "closed_at", ("active",), ("closed",))
    states = judge([{"id": 7, "status": "closed", "closed_at": date(2026, 1, 1)}],
                   ClientCondition("client_id", registry, datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)))
    assert (frozenset({"7"}), frozenset({"7"})) == (states.expired, states.known)


UUID_CLIENT = uuid.UUID("6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b")


def _uuid_box(tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore, extra: str = "") -> Sandbox:
    """A client as a PostgreSQL uuid and as MongoDB text: one client, two stores."""
    pg_store.execute("CREATE TABLE clients (id UUID PRIMARY KEY, status TEXT, closed_at TIMESTAMPTZ)")
    pg_store.execute("CREATE TABLE end_users (id INTEGER PRIMARY KEY, client_id UUID, email TEXT)")
    pg_store.insert("clients", [{"id": UUID_CLIENT, "status": "closed", "closed_at": NOW - timedelta(days=60)}])
    pg_store.insert("end_users", [{"id": 1, "client_id": UUID_CLIENT, "email": "ada@example.org"}])
    mongo_store.database["sessions"].insert_many([{"_id": 1, "client": str(UUID_CLIENT)}])
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write("""
[[rules]]
name = "end-users"
connector = "app"
table = "end_users"
expire = { client_field = "client_id", grace = "30 days" }
action = "delete"
max_fraction = 1.0

[[rules]]
name = "sessions"
connector = "events"
collection = "sessions"
expire = { client_field = "client", grace = "30 days" }
action = "delete"
max_fraction = 1.0
""" + extra, extra=f'[connectors.events]\ntype = "mongodb"\nurl = "{mongo_store.url}"\n'
                   f'database = "{mongo_store.database.name}"\n')
    return box


def test_a_uuid_in_upper_case_is_the_same_client_on_every_store(tmp_path: Path, pg_store: PostgresStore,
                                                                 mongo_store: MongoStore) -> None:
    """A hold naming a uuid in capitals holds the uuid column and the text field alike."""
    hold = f'\n[[holds]]\nname = "lit-uuid"\nclient_ids = ["{str(UUID_CLIENT).upper()}"]\n'
    box = _uuid_box(tmp_path, pg_store, mongo_store, hold)
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert [1, 1] == [r["held"] for r in json.loads(result.stdout)["rules"]]
    assert (1, 1) == (len(pg_store.find("end_users")), mongo_store.database["sessions"].count_documents({}))


@pytest.mark.parametrize("held", ["-0", "007", "3000000000"])
def test_integer_spellings_name_the_same_clients_on_every_store(held: str, tmp_path: Path, pg_store: PostgresStore,
                                                                 moto_url: str) -> None:
    """ "-0" and "007" are not the integers 0 and 7 anywhere; an id too big for the column names nothing there."""
    pg_store.execute("CREATE TABLE clients (id INTEGER PRIMARY KEY, status TEXT, closed_at TIMESTAMPTZ)")
    pg_store.execute("CREATE TABLE end_users (id INTEGER PRIMARY KEY, client_id INTEGER)")
    pg_store.insert("clients", [{"id": c, "status": "closed", "closed_at": NOW - timedelta(days=60)} for c in (0, 7)])
    pg_store.insert("end_users", [{"id": 1, "client_id": 0}, {"id": 2, "client_id": 7}])
    s3 = boto3.client("s3", endpoint_url=moto_url)
    bucket = f"files-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for client in (0, 7):
        s3.put_object(Bucket=bucket, Key=f"clients/{client}/photo.jpg", Body=b"jpg")
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(f"""
[[rules]]
name = "end-users"
connector = "app"
table = "end_users"
expire = {{ client_field = "client_id", grace = "30 days" }}
action = "delete"
max_fraction = 1.0

[[rules]]
name = "photos"
connector = "files"
bucket = "{bucket}"
client_key = "clients/{{client_id}}/"
expire = {{ grace = "30 days" }}
action = "delete"
max_fraction = 1.0

[[holds]]
name = "lit"
client_ids = ["{held}", "7"]
""", extra=f'[connectors.files]\ntype = "s3"\nendpoint_url = "{moto_url}"\n')
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert [(1, 1), (1, 1)] == [(r["changed"], r["held"]) for r in json.loads(result.stdout)["rules"]]
    assert [7] == [r["client_id"] for r in pg_store.find("end_users")]
    assert ["clients/7/photo.jpg"] == [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
