"""`check` compares the stores' own expiry (MongoDB TTL indexes, S3 lifecycle rules) with the rules: one that deletes
earlier than its rule, or deletes records legal holds keep, fails the check (exit 1).

The collections hold no documents: SecantusDB's TTL sweeper really deletes, once a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from tests.helpers import Sandbox, make_sandbox
from tests.stores import MongoStore

DAY = 86400
SESSIONS = """
[[rules]]
name = "sessions"
connector = "app"
collection = "sessions"
expire = { after = "24 months", field = "started_at" }
action = "delete"
"""
CLIENT_SESSIONS = """
[[rules]]
name = "sessions"
connector = "app"
collection = "sessions"
expire = { client_field = "client_id", grace = "30 days" }
action = "delete"
"""
HOLD = '[[holds]]\nname = "{name}"\nrules = [{rules}]\n'


def check(box: Sandbox, expect: int) -> str:
    result: Result = box.cli("check")
    assert expect == result.exit_code, result.stdout + result.stderr
    return result.stdout


def native_rows(out: str) -> list[str]:
    """The rule named by each entry of check's native-expiry list."""
    return [line[2:].split(":", 1)[0] for line in out.splitlines() if line.startswith("- ")]


# -- MongoDB TTL indexes ----------------------------------------------------------------------------------------------


@pytest.fixture
def mongo(tmp_path: Path, mongo_store: MongoStore) -> Sandbox:
    mongo_store.database.create_collection("sessions")
    mongo_store.database.create_collection("clients")
    return make_sandbox(tmp_path / "sandbox", mongo_store)


def ttl(store: Any, seconds: int, field: str = "started_at", **options: Any) -> None:
    store.database["sessions"].create_index(field, expireAfterSeconds=seconds, **options)


def test_a_ttl_shorter_than_the_rule_fails_check_naming_the_index(mongo: Sandbox, mongo_store: MongoStore) -> None:
    """A TTL of 30 days under a 24-month rule deletes what the rule keeps: exit 1, the index named."""
    ttl(mongo_store, 30 * DAY, name="sessions_ttl")
    mongo.write(SESSIONS)
    out = check(mongo, 1)
    assert "TTL index 'sessions_ttl': documents 30 days after 'started_at'" in out
    assert "earlier than the rule: 30 days is shorter than the rule's 24 months (at most 731 days)" in out
    assert "exit 1: a native expiry deletes earlier than its rule or deletes held records" in out


@pytest.mark.parametrize(("days", "expect", "verdict"), [(730, 1, "earlier than the rule"),
                                                         (731, 0, "later than the rule")])
def test_months_are_compared_at_their_longest(mongo: Sandbox, mongo_store: MongoStore, days: int, expect: int,
                                              verdict: str) -> None:
    """24 months last up to 731 days (across a 29 February): a TTL of 730 days deletes first on some dates."""
    ttl(mongo_store, days * DAY)
    mongo.write(SESSIONS)
    assert f"  {verdict}: " in check(mongo, expect)


def test_a_ttl_longer_than_the_rule_puts_held_records_at_risk(mongo: Sandbox, mongo_store: MongoStore) -> None:
    """The rule deletes first, but the TTL ignores legal holds: with a hold on the rule, exit 1."""
    ttl(mongo_store, 800 * DAY)
    mongo.write(SESSIONS, extra=HOLD.format(name="litigation-2026-017", rules='"sessions"'))
    out = check(mongo, 1)
    assert "held records at risk: 800 days is at least the rule's 24 months (at most 731 days), but it deletes " \
           "records legal holds keep: 'litigation-2026-017'" in out


def test_a_holds_table_puts_held_records_at_risk(mongo: Sandbox, mongo_store: MongoStore) -> None:
    """Legal may add a hold to [holds_source] at any time, and the TTL would ignore it: exit 1, even while empty."""
    mongo_store.database.create_collection("legal_holds")
    ttl(mongo_store, 800 * DAY)
    mongo.write(SESSIONS, extra='[holds_source]\nconnector = "app"\ncollection = "legal_holds"\n')
    assert "any hold in [holds_source] app:legal_holds" in check(mongo, 1)


def test_a_ttl_longer_than_the_rule_without_holds_is_a_note(mongo: Sandbox, mongo_store: MongoStore) -> None:
    """No hold can apply (the only one has ended, another names another rule): exit 0, the TTL shown as later."""
    ttl(mongo_store, 800 * DAY)
    mongo_store.database.create_collection("other")
    mongo.write(SESSIONS + SESSIONS.replace('"sessions"', '"other"'),
                extra=HOLD.format(name="ended", rules='"sessions"') + 'until = "2020-01-01"\n'
                + HOLD.format(name="elsewhere", rules='"other"'))
    out = check(mongo, 0)
    assert ["sessions"] == native_rows(out)
    assert "later than the rule: 800 days is at least the rule's 24 months (at most 731 days), so the rule acts " \
           "first" in out


def test_a_ttl_on_another_field_cannot_be_compared(mongo: Sandbox, mongo_store: MongoStore) -> None:
    """A TTL on created_at says nothing about started_at: taken as earlier, exit 1."""
    ttl(mongo_store, 800 * DAY, field="created_at")
    mongo.write(SESSIONS)
    assert "it ages by 'created_at', the rule by 'started_at': they cannot be compared" in check(mongo, 1)


def test_any_ttl_is_earlier_than_a_client_lifetime_rule(mongo: Sandbox, mongo_store: MongoStore) -> None:
    """A client-lifetime rule keeps records while the client is active; a TTL deletes them by age: exit 1."""
    ttl(mongo_store, 3650 * DAY)
    mongo.write(CLIENT_SESSIONS)
    assert "the rule expires records when their client has left; this deletes by age" in check(mongo, 1)


def test_a_partial_ttl_is_judged_and_says_what_narrows_it(mongo: Sandbox, mongo_store: MongoStore) -> None:
    """A partial filter narrows the index: its fields are named (never its values), and it is judged as applying."""
    ttl(mongo_store, DAY, partialFilterExpression={"status": {"$eq": "c-secret-value"}})
    mongo.write(SESSIONS)
    out = check(mongo, 1)
    assert "(only documents matching a partial filter on 'status')" in out
    assert "c-secret-value" not in out


def test_hostile_index_names_cannot_break_the_table(mongo: Sandbox, mongo_store: MongoStore) -> None:
    """An index name with a newline that would forge an entry is shown escaped, on its own line."""
    ttl(mongo_store, DAY, name="evil\n- other: TTL index 'x'")
    mongo.write(SESSIONS)
    out = check(mongo, 1)
    assert "- sessions: TTL index \"evil\\n- other: TTL index 'x'\"" in out
    assert ["sessions"] == native_rows(out)


def test_indexes_without_ttl_say_nothing(mongo: Sandbox, mongo_store: MongoStore) -> None:
    """Plain indexes, and a compound one (where MongoDB ignores expireAfterSeconds), are no native expiry."""
    mongo_store.database["sessions"].create_index("started_at")
    mongo_store.database["sessions"].create_index([("client_id", 1), ("started_at", 1)], expireAfterSeconds=1)
    mongo_store.database.create_collection("visits")
    mongo_store.database["visits"].create_index("started_at", expireAfterSeconds=DAY)
    mongo.write(SESSIONS + SESSIONS.replace('"sessions"', '"visits"'))
    assert ["visits"] == native_rows(check(mongo, 1))

