"""What only MongoDB has: schemaless values, nested documents, any BSON key, fields to drop."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bson import Decimal128, ObjectId

from retention import transforms
from retention.secrets import TRANSFORM_LABEL, derive
from tests.conftest import NOW
from tests.helpers import PSEUDONYM_KEY, Sandbox, make_sandbox
from tests.stores import MongoStore

OLD = NOW - timedelta(days=800)

EVENTS_RULE = """
[[rules]]
name = "events"
connector = "app"
collection = "events"
expire = { after = "24 months", field = "meta.seen_at" }
action = "delete"
max_fraction = 1.0
"""

PROFILE_RULE = """
[[rules]]
name = "profiles"
connector = "app"
collection = "profiles"
expire = { after = "24 months", field = "updated_at" }
action = "deidentify"
marker = "meta.deidentified_at"
transforms = { "contact.email" = "hmac", "contact.phone" = { mask = 2 }, "contact.ip" = "truncate_ip", notes = "drop", "seen.first" = { generalize_date = "month" } }
max_fraction = 1.0
"""  # noqa: E501


@pytest.fixture
def sandbox(tmp_path: Path, mongo_store: MongoStore) -> Sandbox:
    return make_sandbox(tmp_path / "sandbox", mongo_store)


def plan(sandbox: Sandbox) -> dict:
    result = sandbox.cli("plan", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    return json.loads(result.stdout)["rules"][0]


def test_only_bson_dates_are_timestamps(sandbox: Sandbox, mongo_store: MongoStore) -> None:
    """Missing, null, string, number, decimal and unreachable ages are unknown_age: counted, never touched."""
    events = mongo_store.database["events"]
    events.insert_many([
        {"_id": ObjectId(), "meta": {"seen_at": OLD}},
        {"_id": "text-key", "meta": {"seen_at": OLD}},
        {"_id": 7, "meta": {"seen_at": "2020-01-01T00:00:00Z"}},
        {"_id": 8, "meta": {"seen_at": 1577836800}},
        {"_id": 9, "meta": {"seen_at": Decimal128("1577836800")}},
        {"_id": 10, "meta": {"seen_at": None}},
        {"_id": 11, "meta": {}},
        {"_id": 12, "meta": "not a document"},
        {"_id": 13, "meta": {"seen_at": NOW - timedelta(days=1)}},
    ])
    sandbox.write(EVENTS_RULE, clients=False)
    rule = plan(sandbox)
    assert (2, 6) == (rule["matched"], rule["unknown_age"])
    result = sandbox.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert [7, 8, 9, 10, 11, 12, 13] == sorted(d["_id"] for d in events.find())


def test_nested_fields_are_transformed_dropped_and_marked(sandbox: Sandbox, mongo_store: MongoStore) -> None:
    """Dotted paths reach into documents: hmac, mask, truncate_ip, generalize_date, drop, and a nested marker."""
    profiles = mongo_store.database["profiles"]
    profiles.insert_many([
        {"_id": 1, "updated_at": OLD, "notes": "called about invoice",
         "contact": {"email": "ada@example.org", "phone": "5551234", "ip": "2001:db8:abcd:12::1", "name": "Ada"},
         "seen": {"first": datetime(2020, 5, 17, 8, 30, tzinfo=UTC)}},
        {"_id": 2, "updated_at": NOW, "notes": "recent", "contact": {"email": "bob@example.org"}},
    ])
    sandbox.write(PROFILE_RULE, clients=False)
    result = sandbox.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    old, recent = profiles.find_one({"_id": 1}), profiles.find_one({"_id": 2})
    key = derive(PSEUDONYM_KEY, TRANSFORM_LABEL)
    assert {"email": transforms.pseudonym(key, "ada@example.org"), "phone": "*****34", "ip": "2001:db8:abcd::",
            "name": "Ada"} == old["contact"]
    assert "notes" not in old
    assert datetime(2020, 5, 1, tzinfo=UTC) == old["seen"]["first"]
    assert old["meta"]["deidentified_at"] is not None
    assert {"email": "bob@example.org"} == recent["contact"] and "meta" not in recent
    assert 0 == plan(sandbox)["matched"]


def test_a_string_registry_and_key_types_mix(sandbox: Sandbox, mongo_store: MongoStore) -> None:
    """Client ids of any BSON type are matched as stored; an ObjectId key works as the record key."""
    database = mongo_store.database
    gone = ObjectId()
    database["clients"].insert_many([{"_id": gone, "status": "closed", "closed_at": NOW - timedelta(days=90)},
                                     {"_id": 42, "status": "active", "closed_at": None}])
    database["end_users"].insert_many([{"client_id": gone, "email": "x@example.org"},
                                       {"client_id": 42, "email": "y@example.org"}])
    sandbox.write("""
[[rules]]
name = "end-users"
connector = "app"
collection = "end_users"
expire = { client_field = "client_id", grace = "30 days" }
action = "delete"
max_fraction = 1.0
""")
    result = sandbox.cli("run", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert ["y@example.org"] == [d["email"] for d in database["end_users"].find()]


def test_filters_combine_flat_without_losing_a_condition() -> None:
    """Conjunctions merge into one document; repeated keys and nested $and are kept, never overwritten."""
    from connectors.mongodb_filters import all_of

    assert {"a": 1, "b": 2} == all_of({"a": 1}, {"b": 2})
    assert {"a": 1, "$and": [{"a": 2}, {"c": 3}, {"d": 4}]} == all_of({"a": 1}, {"a": 2, "$and": [{"c": 3}]},
                                                                    {"$and": [{"d": 4}]})


def test_operator_shaped_field_names_are_refused(sandbox: Sandbox, mongo_store: MongoStore) -> None:
    """A field named like an operator ($where, a.$b) is a check problem, never part of a filter."""
    mongo_store.database["events"].insert_one({"meta": {"seen_at": OLD}})
    sandbox.write(EVENTS_RULE.replace("meta.seen_at", "$where"), clients=False)
    result = sandbox.cli("run", "--format", "json")
    assert 1 == result.exit_code
    assert "may not start with $" in json.loads(result.stdout)["rules"][0]["error"]
    assert 1 == mongo_store.database["events"].count_documents({})


@pytest.mark.parametrize("action", ["delete", "anonymize"])
def test_a_key_value_read_from_a_document_never_acts_as_a_pattern(action: str, sandbox: Sandbox,
                                                                  mongo_store: MongoStore) -> None:
    """A regex stored in the key field changes its own document only: every change is counted and logged."""
    from bson.regex import Regex

    documents = [{"_id": i, "uid": f"u{i}", "email": f"user{i}@example.org", "at": OLD} for i in range(5)]
    fresh = [{"_id": 10 + i, "uid": f"u-fresh{i}", "email": "x", "at": NOW} for i in range(2)]
    mongo_store.database["visits"].insert_many([{"_id": 99, "uid": Regex("^u"), "email": "e", "at": OLD},
                                                *documents, *fresh])
    sandbox.write(f"""
[[rules]]
name = "visits"
connector = "app"
collection = "visits"
key = "uid"
expire = {{ after = "30 days", field = "at" }}
action = "{action}"
{'marker = "done_at"' + chr(10) + 'transforms = { email = "redact" }' if action == "anonymize" else ""}
max_fraction = 1.0
""", clients=False)
    sandbox.config.write_text(sandbox.config.read_text().replace("batch_size = 2", "batch_size = 1"))
    result = sandbox.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    report = json.loads(result.stdout)
    logged = sum(json.loads(line).get("count", 0) for line in Path(report["audit_file"]).read_text().splitlines()
                 if json.loads(line)["event"] == "batch_applied")
    changed = 6 - mongo_store.database["visits"].count_documents(
        {"done_at": {"$exists": False}} if action == "anonymize" else {"_id": {"$exists": True}}) + 2
    assert (6, 6, 6) == (report["rules"][0]["changed"], logged, changed)
    assert 2 == mongo_store.database["visits"].count_documents({"_id": {"$gte": 10}, "email": "x"})
