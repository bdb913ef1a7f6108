"""`check` compares the stores' own expiry (MongoDB TTL indexes, S3 lifecycle rules) with the rules: one that deletes
earlier than its rule, or deletes records legal holds keep, fails the check (exit 1).

The collections hold no documents: SecantusDB's TTL sweeper really deletes, once a minute.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from tests.helpers import Sandbox, make_sandbox
from tests.stores import MongoStore
from tests.test_s3 import RULE, S3Sandbox

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


def check(box: Sandbox | S3Sandbox, expect: int) -> str:
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


# -- S3 lifecycle rules -----------------------------------------------------------------------------------------------


def lifecycle(box: S3Sandbox, *rules: dict[str, Any]) -> None:
    box.s3.put_bucket_lifecycle_configuration(Bucket=box.bucket, LifecycleConfiguration={"Rules": list(rules)})


def expiring(rule_id: str, days: int, prefix: str | None = "", status: str = "Enabled") -> dict[str, Any]:
    return {"ID": rule_id, "Status": status, "Filter": {"Prefix": prefix} if prefix is not None else {},
            "Expiration": {"Days": days}}


def uploads(box: S3Sandbox, field: str = "LastModified", bucket: str | None = None, name: str = "uploads") -> str:
    return RULE.format(bucket=bucket or box.bucket, field=field).replace('name = "uploads"', f'name = "{name}"')


@pytest.fixture
def moto(tmp_path: Path, moto_url: str) -> S3Sandbox:
    return S3Sandbox(tmp_path / "sandbox", moto_url)


@pytest.fixture(params=["moto", "seaweedfs"])
def s3(request: pytest.FixtureRequest, tmp_path: Path) -> S3Sandbox:
    """A fresh bucket on moto, then on SeaweedFS: both store and return lifecycle configurations."""
    return S3Sandbox(tmp_path / "sandbox", request.getfixturevalue(f"{request.param}_url"))


def test_a_lifecycle_shorter_than_an_age_rule_fails_check(s3: S3Sandbox) -> None:
    """Expiration after 30 days, over the whole bucket, under a 24-month rule on LastModified: exit 1, ID named."""
    lifecycle(s3, expiring("purge-30", 30, prefix=None))
    s3.write(uploads(s3))
    out = check(s3, 1)
    assert "- uploads: lifecycle rule 'purge-30': objects 30 days after they were written" in out
    assert "earlier than the rule: 30 days is shorter than the rule's 24 months (at most 731 days)" in out


def test_a_lifecycle_on_another_prefix_or_disabled_is_ignored(s3: S3Sandbox) -> None:
    """Only enabled lifecycle rules whose prefix meets the rule's count: here just the one that is later."""
    lifecycle(s3, expiring("elsewhere", 1, prefix="logs/"), expiring("switched-off", 1, status="Disabled"),
              expiring("later", 800, prefix="uploads/2024/"))
    s3.write(uploads(s3))
    out = check(s3, 0)
    assert ["uploads"] == native_rows(out)
    assert "lifecycle rule 'later': objects 800 days after they were written (only keys under 'uploads/2024/')" in out
    assert "'elsewhere'" not in out and "'switched-off'" not in out


def test_a_lifecycle_cannot_be_compared_with_a_metadata_age(s3: S3Sandbox) -> None:
    """A lifecycle counts from the object's creation; the rule ages by a metadata date: taken as earlier, exit 1."""
    lifecycle(s3, expiring("later", 800))
    s3.write(uploads(s3, field="metadata:collected-at"))
    assert "it ages by 'LastModified', the rule by 'metadata:collected-at': they cannot be compared" in check(s3, 1)


def test_a_lifecycle_on_a_date_deletes_whatever_the_age(s3: S3Sandbox) -> None:
    """Expiration.Date removes every object it covers from that date on, however new: exit 1."""
    lifecycle(s3, {"ID": "cutover", "Status": "Enabled", "Filter": {"Prefix": "uploads/"},
                   "Expiration": {"Date": datetime(2040, 1, 1, tzinfo=UTC)}})
    s3.write(uploads(s3))
    out = check(s3, 1)
    assert "lifecycle rule 'cutover': objects from 2040-01-01T00:00:00Z on" in out
    assert "from 2040-01-01T00:00:00Z on it deletes whatever the age" in out


def test_a_tag_filter_may_apply_and_is_judged(s3: S3Sandbox) -> None:
    """A lifecycle limited to tagged objects may reach the rule's: judged as applying, the tag key named."""
    lifecycle(s3, {"ID": "tagged", "Status": "Enabled", "Filter": {"Tag": {"Key": "tier", "Value": "scratch"}},
                   "Expiration": {"Days": 7}})
    s3.write(uploads(s3))
    out = check(s3, 1)
    assert "lifecycle rule 'tagged': objects 7 days after they were written (only objects tagged 'tier')" in out


def test_expiration_on_a_versioned_bucket_only_adds_delete_markers(tmp_path: Path, moto_url: str) -> None:
    """With versioning on, Expiration hides the object behind a delete marker and deletes nothing: a note, exit 0."""
    box = S3Sandbox(tmp_path / "sandbox", moto_url, versioned=True)
    lifecycle(box, expiring("hide", 1))
    box.write(uploads(box))
    out = check(box, 0)
    assert "lifecycle rule 'hide': current versions (a delete marker) 1 day after they were written" in out
    assert "deletes nothing: on a versioned bucket it only adds a delete marker: the data stays as a noncurrent " \
           "version" in out


def test_noncurrent_version_expiration_shorter_than_the_rule_fails_check(tmp_path: Path, moto_url: str) -> None:
    """Noncurrent versions may go 30 days after they were written (overwritten at once): earlier, exit 1."""
    box = S3Sandbox(tmp_path / "sandbox", moto_url, versioned=True)
    lifecycle(box, {"ID": "old-versions", "Status": "Enabled", "Filter": {},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 30}})
    box.write(uploads(box))
    out = check(box, 1)
    assert "lifecycle rule 'old-versions': noncurrent versions 30 days after they become noncurrent" in out
    assert "earlier than the rule: 30 days is shorter" in out


def test_a_lifecycle_later_than_the_rule_puts_held_records_at_risk(moto: S3Sandbox) -> None:
    """S3 knows nothing of this job's holds: a later lifecycle still deletes what a hold on the rule keeps."""
    lifecycle(moto, expiring("later", 800))
    moto.write(uploads(moto), extra=HOLD.format(name="audit-2026", rules='"uploads"'))
    assert "held records at risk: 800 days is at least the rule's 24 months" in check(moto, 1)


def test_a_bucket_without_lifecycle_says_nothing(tmp_path: Path, moto: S3Sandbox) -> None:
    """Of two buckets, only the one with a lifecycle configuration is reported."""
    bare = S3Sandbox(tmp_path / "bare", moto.endpoint)
    lifecycle(moto, expiring("later", 800))
    moto.write(uploads(moto) + uploads(moto, bucket=bare.bucket, name="bare"))
    assert ["uploads"] == native_rows(check(moto, 0))


def test_an_unreadable_lifecycle_is_not_checked_and_says_so(moto: S3Sandbox) -> None:
    """AccessDenied on the lifecycle configuration: a finding that it could not be read, not a failure."""
    from types import SimpleNamespace

    from retention.connectors.s3 import S3Connector

    from retention.config import load_config
    from retention.expiry import NOT_CHECKED, native_findings
    from retention.units import compile_rule

    moto.write(uploads(moto))
    config = load_config(moto.root / "retention.toml")
    work = compile_rule(config, config.rules[0], datetime.now(UTC), None)
    connector = S3Connector("files", {"endpoint_url": moto.endpoint, "region": "us-east-1"})

    def denied(**_: object) -> object:
        return SimpleNamespace(status_code=403), {"Error": {"Code": "AccessDenied", "Message": "denied"},
                                                  "ResponseMetadata": {"HTTPStatusCode": 403}}

    connector.client.meta.events.register("before-call.s3.GetBucketLifecycleConfiguration", denied)
    try:
        [finding] = native_findings(config, config.rules[0], connector, work.selection, datetime.now(UTC))
    finally:
        connector.close()
    assert (NOT_CHECKED, False) == (finding.verdict, finding.problem)
    assert f"cannot read the lifecycle configuration of bucket {moto.bucket}: AccessDenied" in finding.detail
