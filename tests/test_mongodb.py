"""What only MongoDB has: schemaless values, nested documents, any BSON key, fields to drop."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import bson
import pymongo
import pymongo.client_session
import pymongo.collection
import pytest
from bson import Decimal128, ObjectId
from bson.binary import Binary
from pymongo import monitoring
from pymongo.errors import AutoReconnect, OperationFailure

from retention import transforms
from retention.secrets import RECORD_ID_LABEL, TRANSFORM_LABEL, derive
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
    from retention.connectors.mongodb_filters import all_of

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


# -- batches by ranges ---------------------------------------------------------------------------------------------

MIXED_IDS: list[Any] = [-3, 2.5, 7, 10**12, Decimal128("8.5"), "", "a", "b\u00e9", ObjectId("0" * 23 + "1"),
                        ObjectId("f" * 24), Binary.from_uuid(UUID(int=1)), Binary.from_uuid(UUID(int=2**127)),
                        b"raw bytes", datetime(2001, 1, 1, tzinfo=UTC), True, None, {"k": 1}]
FRESH_IDS: list[Any] = [0, 5, 9, "aa", ObjectId("8" * 24), Binary.from_uuid(UUID(int=2**64)),
                        datetime(2002, 1, 1, tzinfo=UTC), False, {"k": 0}]

RULE = """
[[rules]]
name = "events"
connector = "app"
collection = "events"
expire = {{ after = "24 months", field = "at" }}
action = "{action}"
{extra}
max_fraction = 1.0
"""
ACTIONS = {"delete": "", "anonymize": 'marker = "done_at"\ntransforms = { email = "redact" }',
           "deidentify": 'marker = "done_at"\ntransforms = { email = "hmac", ip = "truncate_ip" }'}


def run_json(sandbox: Sandbox) -> dict[str, Any]:
    result = sandbox.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def named(report: dict[str, Any], kind: str = "changed") -> list[str]:
    """The sidecar's record names of this kind, sorted."""
    lines = Path(report["audit_file"].replace(".jsonl", ".ids")).read_text().splitlines()
    return sorted(line.split()[-1] for line in lines if line.startswith(f"{kind} "))


def batches(report: dict[str, Any]) -> list[int]:
    events = [json.loads(line) for line in Path(report["audit_file"]).read_text().splitlines()]
    return [e["count"] for e in events if e["event"] == "batch_applied"]


def names_of(documents: list[dict[str, Any]]) -> list[str]:
    """Each document's name in the sidecar: the keyed hash of its `_id`'s text, as the connector reads it."""
    key = derive(PSEUDONYM_KEY, RECORD_ID_LABEL)
    return sorted(transforms.pseudonym(key, transforms.record_text([d["_id"]])) or "" for d in documents)


def changed_documents(mongo_store: MongoStore, before: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    """The documents the run changed: gone (delete) or marked (anonymize, deidentify)."""
    after = {bson.encode({"_id": d["_id"]}): d for d in mongo_store.database["events"].find()}
    if action == "delete":
        return [d for d in before if bson.encode({"_id": d["_id"]}) not in after]
    return [d for d in before if after[bson.encode({"_id": d["_id"]})].get("done_at") is not None]


@pytest.mark.parametrize("indexed", [False, True], ids=["by-id", "by-age"])
@pytest.mark.parametrize("action", ACTIONS)
def test_ranges_of_mixed_id_types_change_exactly_the_expired_and_name_them(
        action: str, indexed: bool, sandbox: Sandbox, mongo_store: MongoStore) -> None:
    """`_id`s of every BSON type in one collection, expired ones sharing one age (one tie group bigger than a
    batch) between fresh ones of the same types: a range never spans two types, so none is missed and none
    wrongly included; what changed is exactly what the sidecar names, in batches of at most `batch_size`."""
    # a NaN `_id` too, for deletes: SecantusDB refuses to update a document whose `_id` is NaN (ImmutableField)
    expired = [*MIXED_IDS, float("nan")] if action == "delete" else MIXED_IDS
    events = mongo_store.database["events"]
    events.insert_many([{"_id": i, "at": OLD, "email": "x@example.org", "ip": "192.0.2.1"} for i in expired]
                       + [{"_id": i, "at": NOW, "email": "y@example.org"} for i in FRESH_IDS])
    if indexed:
        events.create_index("at")
    before = list(events.find())
    sandbox.write(RULE.format(action=action, extra=ACTIONS[action]), clients=False)
    report = run_json(sandbox)
    changed = changed_documents(mongo_store, before, action)
    assert len(expired) == len(changed) == report["rules"][0]["changed"]
    assert names_of([d for d in before if d["at"] == OLD]) == names_of(changed) == named(report)
    assert max(batches(report)) <= 2 and sum(batches(report)) == len(expired)
    untouched = [bson.encode({"_id": d["_id"]}) for d in events.find({"at": NOW, "done_at": None})]
    assert sorted(bson.encode({"_id": i}) for i in FRESH_IDS) == sorted(untouched)


@pytest.mark.parametrize("indexed", [False, True], ids=["by-id", "by-age"])
def test_a_tie_group_bigger_than_a_batch_is_split_into_whole_batches(indexed: bool, sandbox: Sandbox,
                                                                     mongo_store: MongoStore) -> None:
    """Seven documents with the same age, batch_size 2: four batches (2, 2, 2, 1), by age or by `_id`."""
    events = mongo_store.database["events"]
    events.insert_many([{"_id": i, "at": OLD} for i in range(7)] + [{"_id": 7, "at": NOW}])
    if indexed:
        events.create_index("at")
    sandbox.write(RULE.format(action="delete", extra=""), clients=False)
    report = run_json(sandbox)
    assert ([2, 2, 2, 1], [7]) == (sorted(batches(report), reverse=True), [d["_id"] for d in events.find()])


class CommandLog(monitoring.CommandListener):
    """The commands a client sends."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def listened(monkeypatch: pytest.MonkeyPatch) -> CommandLog:
    """Every command the connector's clients send from now on (the test's own client is left alone)."""
    log = CommandLog()
    client = pymongo.MongoClient

    def with_listener(*args: Any, **kwargs: Any) -> pymongo.MongoClient[Any]:
        return client(*args, event_listeners=[log], **kwargs)

    monkeypatch.setattr(pymongo, "MongoClient", with_listener)
    return log


def filters_sent(log: CommandLog, command: str) -> list[dict[str, Any]]:
    """The filters of every delete or update statement sent."""
    field = "deletes" if command == "delete" else "updates"
    return [statement["q"] for c in log.commands if command in c for statement in c[field]]


@pytest.mark.parametrize("indexed", [False, True], ids=["by-id", "by-age"])
@pytest.mark.parametrize("action", ["delete", "anonymize"])
def test_batches_are_written_as_ranges_never_as_key_lists(action: str, indexed: bool, sandbox: Sandbox,
                                                          mongo_store: MongoStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch's write names a range (`$gte` / `$lte` on `_id` or the age field) and the whole predicate,
    never a list of keys (`$in` costs O(batch x collection) on some servers)."""
    events = mongo_store.database["events"]
    events.insert_many([{"_id": i, "at": OLD + timedelta(minutes=i), "email": "x"} for i in range(9)])
    if indexed:
        events.create_index("at")
    sandbox.write(RULE.format(action=action, extra=ACTIONS[action]), clients=False)
    log = listened(monkeypatch)
    assert 9 == run_json(sandbox)["rules"][0]["changed"]
    sent = filters_sent(log, "delete" if action == "delete" else "update")
    assert len(sent) == 5
    field = "at" if indexed else "_id"
    assert all({"$gte", "$lte"} <= set(f[field]) and "$in" not in str(f) for f in sent), sent


def injector(mongo_store: MongoStore, document: dict[str, Any]) -> Callable[[], None]:
    """Makes `document` start matching (old age, no marker), once, from another connection."""
    done: list[bool] = []

    def inject() -> None:
        if not done:
            done.append(True)
            mongo_store.database["events"].update_one({"_id": document["_id"]}, {"$set": {"at": document["at"]}})

    return inject


@pytest.mark.parametrize("moment", ["before-the-write", "before-the-second-read"])
@pytest.mark.parametrize("indexed", [False, True], ids=["by-id", "by-age"])
@pytest.mark.parametrize("action", ["delete", "anonymize", "deidentify"])
def test_a_document_that_starts_matching_inside_a_batch_is_named_or_untouched(
        action: str, indexed: bool, moment: str, sandbox: Sandbox, mongo_store: MongoStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another client makes a document inside the first batch's range match while the batch runs: it is either
    changed and named in the sidecar, or left untouched; never changed unnamed."""
    events = mongo_store.database["events"]
    events.insert_many([{"_id": i, "at": OLD + timedelta(minutes=i) if i != 1 else NOW, "email": "x",
                         "ip": "192.0.2.1"} for i in range(6)])
    if indexed:
        events.create_index("at")
    before = [{**d, "at": OLD + timedelta(minutes=1)} if d["_id"] == 1 else d for d in events.find()]
    inject = injector(mongo_store, before[1])
    collection = pymongo.collection.Collection
    if moment == "before-the-write":
        for method in ("delete_many", "update_many", "bulk_write"):
            original = getattr(collection, method)

            def before_write(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                inject()
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(collection, method, before_write)
    else:
        find, reads = collection.find, []

        def before_read(self: Any, *args: Any, **kwargs: Any) -> Any:
            reads.append(1)
            if len(reads) == 2:
                inject()
            return find(self, *args, **kwargs)

        monkeypatch.setattr(collection, "find", before_read)
    sandbox.write(RULE.format(action=action, extra=ACTIONS[action]), clients=False)
    report = run_json(sandbox)
    changed = changed_documents(mongo_store, before, action)
    assert names_of(changed) == named(report)
    assert len(changed) >= 5  # a run changes at most what it counted: the newcomer may take a place


def test_records_changed_are_exactly_those_named_with_holds_unknown_ages_and_many_batches(
        sandbox: Sandbox, mongo_store: MongoStore) -> None:
    """A held client, unknown ages, fresh documents and expired ones over many batches: the sidecar names exactly
    the documents deleted (changed) and those kept by the hold (held)."""
    mongo_store.database["clients"].insert_many([{"_id": c, "status": "active"} for c in ("c-held", "c-other")])
    events = mongo_store.database["events"]
    events.insert_many([{"_id": i, "at": [OLD, NOW, "text", None][i % 4] if i % 7 else OLD,
                         "client": "c-held" if i % 5 == 0 else "c-other"} for i in range(60)])
    events.create_index("at")
    before = list(events.find())
    sandbox.write(RULE.format(action="delete", extra="").replace('field = "at"',
                                                                 'field = "at", client_field = "client"'),
                  extra='[[holds]]\nname = "lit"\nclient_ids = ["c-held"]\n')
    report = run_json(sandbox)
    changed = changed_documents(mongo_store, before, "delete")
    expired = [d for d in before if d["at"] == OLD]
    assert names_of([d for d in expired if d["client"] != "c-held"]) == names_of(changed) == named(report)
    assert names_of([d for d in expired if d["client"] == "c-held"]) == named(report, "held")


def test_a_server_without_transactions_still_names_exactly(sandbox: Sandbox, mongo_store: MongoStore,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A standalone server refuses transactions (IllegalOperation): batches are then written by `_id` list, and
    still change and name exactly the expired documents."""
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise OperationFailure("Transaction numbers are only allowed on a replica set member or mongos", 20)

    monkeypatch.setattr(pymongo.client_session.ClientSession, "with_transaction", refuse)
    monkeypatch.setattr(pymongo.client_session.ClientSession, "start_transaction", refuse)
    events = mongo_store.database["events"]
    events.insert_many([{"_id": i, "at": OLD if i % 2 else NOW} for i in range(9)])
    before = list(events.find())
    sandbox.write(RULE.format(action="delete", extra=""), clients=False)
    report = run_json(sandbox)
    assert names_of([d for d in before if d["at"] == OLD]) == names_of(
        changed_documents(mongo_store, before, "delete")) == named(report)


@pytest.mark.parametrize("indexed", [False, True], ids=["by-id", "by-age"])
def test_a_connection_lost_mid_run_reads_the_candidates_again(indexed: bool, sandbox: Sandbox,
                                                              mongo_store: MongoStore,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The second batch's write loses its connection: the batch is tried again from a new read of the candidates,
    and the run changes and names every expired document exactly once."""
    import retention.connectors.mongodb as module

    from retention.retry import retrying

    events = mongo_store.database["events"]
    events.insert_many([{"_id": i, "at": OLD + timedelta(minutes=i % 4)} for i in range(9)] + [{"_id": 9, "at": NOW}])
    if indexed:
        events.create_index("at")
    before = list(events.find())
    collection, original, calls = pymongo.collection.Collection, pymongo.collection.Collection.delete_many, []

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise AutoReconnect("connection reset")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(collection, "delete_many", flaky)
    monkeypatch.setattr(module, "retrying", lambda *a, **k: retrying(*a, **k, sleep=lambda _seconds: None))
    sandbox.write(RULE.format(action="delete", extra=""), clients=False)
    report = run_json(sandbox)
    assert [9] == [d["_id"] for d in events.find()]
    assert names_of(before[:9]) == named(report) and 9 == sum(batches(report))


@pytest.mark.parametrize("indexed", [False, True], ids=["by-id", "by-age"])
def test_write_conflicts_that_do_not_stop_leave_the_batch_to_its_ids(indexed: bool, sandbox: Sandbox,
                                                                      mongo_store: MongoStore,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another client writes to a document of the batch during every try of its transaction (a write conflict,
    each time): after a few tries the batch is written by `_id` list, and the run still names exactly."""
    from retention.connectors.mongodb_batches import TRANSACTION_ATTEMPTS

    events = mongo_store.database["events"]
    events.insert_many([{"_id": i, "at": OLD + timedelta(minutes=i)} for i in range(5)])
    if indexed:
        events.create_index("at")
    before = list(events.find())
    collection, original, conflicts = pymongo.collection.Collection, pymongo.collection.Collection.delete_many, []

    def conflicting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("session") is not None and kwargs["session"].in_transaction:
            conflicts.append(1)
            events.update_one({"_id": 0}, {"$inc": {"touched": 1}})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(collection, "delete_many", conflicting)
    sandbox.write(RULE.format(action="delete", extra=""), clients=False)
    report = run_json(sandbox)
    assert [] == list(events.find())
    # the first batch's transaction, tried TRANSACTION_ATTEMPTS times; the two others, once each
    assert names_of(before) == named(report) and TRANSACTION_ATTEMPTS + 2 == len(conflicts)


@pytest.mark.parametrize("own_grace", [False, True], ids=["rule-grace", "retention-field"])
def test_the_registry_is_read_again_for_every_batch(own_grace: bool, sandbox: Sandbox, mongo_store: MongoStore,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A client re-activated after the first batch keeps its documents; the first batch's client loses them; with
    clients' own grace periods (`retention_field`) too."""
    database = mongo_store.database
    database["clients"].insert_many([{"_id": c, "status": "closed", "closed_at": NOW - timedelta(days=90),
                                      **({"retention": "60 days"} if own_grace else {})} for c in ("c-a", "c-b")])
    database["end_users"].insert_many([{"_id": i, "client_id": "c-a" if i < 2 else "c-b"} for i in range(4)])
    collection, original = pymongo.collection.Collection, pymongo.collection.Collection.delete_many

    def reactivate_then_delete(self: Any, *args: Any, **kwargs: Any) -> Any:
        database["clients"].update_one({"_id": "c-b"}, {"$set": {"status": "active"}})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(collection, "delete_many", reactivate_then_delete)
    sandbox.write('[[rules]]\nname = "end-users"\nconnector = "app"\ncollection = "end_users"\n'
                  'expire = { client_field = "client_id", grace = "30 days" }\naction = "delete"\n'
                  'max_fraction = 1.0\n')
    if own_grace:
        sandbox.config.write_text(sandbox.config.read_text().replace(
            'ended_at_field = "closed_at"', 'ended_at_field = "closed_at"\nretention_field = "retention"'))
    assert 2 == run_json(sandbox)["rules"][0]["changed"]
    assert [2, 3] == [d["_id"] for d in database["end_users"].find()]


# -- the connector, called directly --------------------------------------------------------------------------------

def connector_for(mongo_store: MongoStore) -> Any:
    from retention.connectors.mongodb import MongoConnector

    return MongoConnector("app", {"url": mongo_store.url, "database": mongo_store.database.name})


def age_selection(target: str = "events") -> Any:
    from retention.model import AgeCondition, Selection

    return Selection(target, None, AgeCondition("at", NOW - timedelta(days=730)), None)


@pytest.mark.parametrize("indexed", [False, True], ids=["by-id", "by-age"])
def test_apply_stops_at_the_limit_and_when_asked(indexed: bool, mongo_store: MongoStore) -> None:
    """`limit` caps what a run changes; `should_stop` is heeded between batches."""
    from retention.model import Action

    events = mongo_store.database["events"]
    events.insert_many([{"_id": i, "at": OLD + timedelta(minutes=i % 3)} for i in range(10)])
    if indexed:
        events.create_index("at")
    connector = connector_for(mongo_store)
    try:
        limited = [b.count for b in connector.apply(age_selection(), Action("delete"), batch_size=2, limit=3,
                                                    id_key=None)]
        assert ([2, 1], 7) == (limited, events.count_documents({}))
        seen: list[int] = []
        stopped = [b.count for b in connector.apply(age_selection(), Action("delete"), batch_size=2, limit=100,
                                                    id_key=None, should_stop=lambda: bool(seen.append(1)) or
                                                    len(seen) > 1)]
        assert (1, 7 - stopped[0]) == (len(stopped), events.count_documents({}))
    finally:
        connector.close()


def test_a_large_collection_counts_its_total_by_estimate_never_below_its_classes(
        mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """At or above LARGE documents the total is the server's estimate (no full scan), but never less than the
    classes it holds; below it, the total is exact."""
    import retention.connectors.mongodb as module

    events = mongo_store.database["events"]
    events.insert_many([{"_id": 0, "at": NOW}, {"_id": 1, "at": "text"}] +
                       [{"_id": i, "at": OLD} for i in range(2, 5)])
    estimates: list[int] = []
    monkeypatch.setattr(pymongo.collection.Collection, "estimated_document_count", lambda *_a, **_k: estimates[-1])
    connector = connector_for(mongo_store)
    try:
        totals = []
        for large, estimate in ((100_000, 99_999), (3, 1_000_000), (3, 3)):
            monkeypatch.setattr(module, "LARGE", large)
            estimates.append(estimate)
            counts = connector.count(age_selection())
            assert (3, 0, 1) == (counts.matched, counts.held, counts.unknown_age)
            totals.append(counts.total)
        assert [5, 1_000_000, 4] == totals
    finally:
        connector.close()


def test_the_age_classes_are_range_filters_an_index_serves() -> None:
    """Expired is `$lt` the cutoff (type bracketing keeps it to dates) on no array; conjunctions on one field merge."""
    from retention.connectors.mongodb_filters import NOTHING, all_of, class_filters

    from retention.model import HeldScope

    selection = age_selection()
    filters = class_filters(selection, None)
    assert {"at": {"$lt": NOW - timedelta(days=730)}, "at.0": {"$exists": False}} == filters["matched"]
    assert {"at": {"$lt": NOW - timedelta(days=730)}} == class_filters(selection, None, exact=False)["matched"]
    assert NOTHING == filters["held"]
    assert {"$or": [{"at": {"$not": {"$type": "date"}}}, {"at.0": {"$exists": True}}]} == filters["unknown_age"]
    assert NOTHING == class_filters(replace(selection, held=HeldScope(everything=True)), None)["matched"]
    assert {"a": {"$lt": 5, "$gte": 1}} == all_of({"a": {"$lt": 5}}, {"a": {"$gte": 1}})
    assert {"a": {"$lt": 5}, "$and": [{"a": {"$lt": 1}}]} == all_of({"a": {"$lt": 5}}, {"a": {"$lt": 1}})
    assert {"a": {"$regex": "x"}, "$and": [{"a": {"$options": "i"}}]} == all_of({"a": {"$regex": "x"}},
                                                                                {"a": {"$options": "i"}})


def test_id_ranges_never_span_two_type_brackets() -> None:
    """A chunk of a stream sorted by `_id` stays within one bracket; odd `_id`s (null, booleans, documents, NaN,
    binData of another subtype or length) are chunks of their own, addressed by themselves."""
    from retention.connectors.mongodb_ranges import IdRanges

    ids: list[Any] = [None, float("nan"), -3, 2.5, Decimal128("8.5"), "", "a", {"k": 1}, b"ab", b"cd", b"xyz",
                      Binary.from_uuid(UUID(int=1)), Binary.from_uuid(UUID(int=2)), ObjectId("0" * 24), True,
                      datetime(2001, 1, 1, tzinfo=UTC), datetime(2002, 1, 1, tzinfo=UTC)]
    ranges = IdRanges([{"_id": i} for i in ids])
    bounds = []
    while (chunk := ranges.next(3)) is not None:
        bounds.append(chunk.bounds["_id"])
    assert [{"$in": [None]}, {"$in": [ids[1]]}, {"$gte": -3, "$lte": Decimal128("8.5")}, {"$gte": "", "$lte": "a"},
            {"$in": [{"k": 1}]}, {"$gte": b"ab", "$lte": b"cd"}, {"$gte": b"xyz", "$lte": b"xyz"},
            {"$gte": ids[11], "$lte": ids[12]}, {"$gte": ids[13], "$lte": ids[13]}, {"$in": [True]},
            {"$gte": ids[15], "$lte": ids[16]}] == bounds


def test_age_ranges_keep_equal_ages_together_and_split_larger_groups_by_id() -> None:
    """Chunks of a stream sorted by age hold whole groups of equal ages; a group larger than a chunk is read again
    in `_id` order and split in `_id` ranges; a document whose age is not one date is a chunk of its own."""
    from retention.connectors.mongodb_ranges import AgeRanges

    day = [OLD + timedelta(days=n) for n in range(4)]
    stream = [{"_id": 1, "at": day[0]}, {"_id": 2, "at": day[1]}, {"_id": 3, "at": day[1]},
              {"_id": 4, "at": [day[1], NOW]}, {"_id": 5, "at": day[2]}] + \
             [{"_id": 10 + n, "at": day[3]} for n in range(5)]
    reread: list[datetime] = []

    def group(age: datetime) -> list[dict[str, Any]]:
        reread.append(age)
        return [d for d in stream if d["at"] == age]

    ranges = AgeRanges(stream, "at", group)
    chunks = []
    while (chunk := ranges.next(2)) is not None:
        chunks.append(([d["_id"] for d in chunk.documents], chunk.bounds))
    assert [([1], {"at": {"$gte": day[0], "$lte": day[0]}}),
            ([2, 3], {"at": {"$gte": day[1], "$lte": day[1]}}),
            ([4], {"_id": {"$in": [4]}}),
            ([5], {"at": {"$gte": day[2], "$lte": day[2]}}),
            ([10, 11], {"at": {"$gte": day[3], "$lte": day[3]}, "_id": {"$gte": 10, "$lte": 11}}),
            ([12, 13], {"at": {"$gte": day[3], "$lte": day[3]}, "_id": {"$gte": 12, "$lte": 13}}),
            ([14], {"at": {"$gte": day[3], "$lte": day[3]}, "_id": {"$gte": 14, "$lte": 14}})] == chunks
    assert [day[3]] == reread
