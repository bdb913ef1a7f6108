"""S3 lists a prefix once: the count keeps what it matched (spilling past a bound), the delete uses it, safely.

Safety does not rest on the count being recent: a version is deleted by its VersionId (it never changes); an object
of an unversioned bucket is deleted only if a fresh listing still shows the LastModified and ETag the count saw
(else it is judged afresh); tags and Object Lock, which change without a new version, are read again.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from retention.connectors.s3 import S3Connector
from retention.connectors.s3_records import ListingCursor, RecordSpool, S3Record

from retention.errors import ConnectorError
from retention.model import (
    Action,
    AgeCondition,
    ClientCondition,
    ClientRegistry,
    ClientStates,
    HeldScope,
    Selection,
)
from retention.transforms import pseudonym
from tests.test_s3 import OLD, RULE, S3Sandbox

KEY = b"k" * 32
DELETE = Action("delete")
REGISTRY = ClientRegistry("registry", "clients", "id", "status", "closed_at", ("active",), ("closed",))
CLIENT_KEY = "uploads/clients/{client_id}/"
ODD_KEYS = ("uploads/clients/c-x/tab\there", "uploads/clients/c-x/line\u2028sep", 'uploads/clients/c-x/q"\'\\',
            "uploads/clients/c-x/🙂 smile", "uploads/clients/c-x/a&<b>")


class Calls:
    """Every S3 call a client makes, by operation, with its parameters (a botocore event hook)."""

    def __init__(self, client: Any) -> None:
        self.made: list[tuple[str, dict[str, Any]]] = []
        client.meta.events.register("before-parameter-build.s3", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.made.append((model.name, dict(params)))

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.made if name == operation]

    def clear(self) -> None:
        self.made.clear()


def listed_an_hour_later(connector: S3Connector) -> None:
    """Listing pages say the server sent them an hour after the objects were written (no test sleeps)."""

    def later(parsed: dict[str, Any], **_: Any) -> None:
        headers = parsed.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        headers["date"] = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)

    for operation in ("ListObjectsV2", "ListObjectVersions"):
        connector.client.meta.events.register(f"after-call.s3.{operation}", later)


@pytest.fixture
def moto(tmp_path: Path, moto_url: str) -> S3Sandbox:
    return S3Sandbox(tmp_path / "sandbox", moto_url)


@pytest.fixture
def connector(moto_url: str) -> Iterator[S3Connector]:
    opened = S3Connector("files", {"endpoint_url": moto_url, "region": "us-east-1"})
    yield opened
    opened.close()


def age_selection(bucket: str, field: str = "metadata:collected-at", **changes: Any) -> Selection:
    now = datetime.now(UTC)
    return Selection(bucket, None, AgeCondition(field, now - timedelta(days=730)), None,
                     scope={"prefix": "uploads/"}, now=now, **changes)


def client_selection(bucket: str, *, age: bool = False, held: tuple[str, ...] = ()) -> Selection:
    """Records of ended client c-x expire (by key); c-held's expire by age but a legal hold keeps them."""
    now = datetime.now(UTC)
    states = ClientStates(expired=frozenset({"c-x"}), known=frozenset({"c-x", "c-held"}))
    return Selection(bucket, None, AgeCondition("metadata:collected-at", now - timedelta(days=730)) if age else None,
                     ClientCondition(CLIENT_KEY, REGISTRY, now, states),
                     HeldScope(client_field=CLIENT_KEY, client_ids=held, holds=("h",) if held else ()),
                     scope={"prefix": "uploads/"}, now=now)


def deleted(connector: S3Connector, selection: Selection, limit: int = 1000) -> tuple[int, set[str]]:
    """Apply the selection; how many records were deleted and their keyed hashes."""
    count, ids = 0, set()
    for batch in connector.apply(selection, DELETE, batch_size=1000, limit=limit, id_key=KEY):
        count += batch.count
        ids |= set(batch.ids)
    return count, ids


def hashed(*identities: str) -> set[str]:
    return {pseudonym(KEY, identity) for identity in identities}


# -- one listing ---------------------------------------------------------------------------------------------------


def test_an_unversioned_bucket_is_listed_again_only_where_matched_records_are_and_not_read_again(
        moto: S3Sandbox, connector: S3Connector) -> None:
    """Metadata ages are read once (at the count); the delete re-lists only from the first matched key on."""
    for n in range(5):
        moto.put(f"uploads/a-fresh-{n}", collected_at=datetime.now(UTC).isoformat())
    for n in range(3):
        moto.put(f"uploads/b-old-{n}", collected_at=OLD)
    listed_an_hour_later(connector)
    selection = age_selection(moto.bucket)
    assert 3 == connector.count(selection).matched
    calls = Calls(connector.client)
    assert (3, hashed("uploads/b-old-0", "uploads/b-old-1", "uploads/b-old-2")) == deleted(connector, selection)
    assert [] == calls.of("HeadObject")
    listings = calls.of("ListObjectsV2")
    assert 1 == len(listings) and listings[0]["StartAfter"] > "uploads/a-fresh-4"
    assert 5 == len(moto.keys())


def test_a_versioned_bucket_deletes_the_counted_versions_without_listing_or_reading_them_again(
        tmp_path: Path, moto_url: str, connector: S3Connector) -> None:
    """A version never changes: deleted by its VersionId, it needs no second look (only the marker sweep lists)."""
    box = S3Sandbox(tmp_path / "sandbox", moto_url, versioned=True)
    old = box.put("uploads/doc", collected_at=OLD)
    box.put("uploads/other", collected_at=OLD)
    selection = age_selection(box.bucket)
    assert 2 == connector.count(selection).matched
    fresh = box.put("uploads/doc", collected_at=datetime.now(UTC).isoformat())  # a new version after the count
    calls = Calls(connector.client)
    assert 2 == deleted(connector, selection)[0]
    assert ([], 1) == (calls.of("HeadObject"), len(calls.of("ListObjectVersions")))
    versions = box.s3.list_object_versions(Bucket=box.bucket)["Versions"]
    assert [("uploads/doc", fresh)] == [(v["Key"], v["VersionId"]) for v in versions]
    assert fresh != old


def test_rules_by_key_alone_delete_what_the_count_found_without_listing_again(
        moto: S3Sandbox, connector: S3Connector) -> None:
    """A client's end (or an erasure request) names records by key: a rewrite cannot change that verdict."""
    for name in ("a", "b", "c"):
        moto.put(f"uploads/clients/c-x/{name}")
    moto.put("uploads/clients/c-held/d")
    selection = client_selection(moto.bucket)
    assert 3 == connector.count(selection).matched
    calls = Calls(connector.client)
    assert 3 == deleted(connector, selection)[0]
    assert ([], []) == (calls.of("ListObjectsV2"), calls.of("HeadObject"))
    assert ["uploads/clients/c-held/d"] == moto.keys()


# -- what may change between the count and the delete ---------------------------------------------------------------


def test_an_object_rewritten_after_the_count_is_judged_afresh_not_deleted(
        moto: S3Sandbox, connector: S3Connector) -> None:
    """Unversioned: an object rewritten since the count (new body, or new metadata within the same second) is kept.

    S3 has no delete conditional on LastModified for ordinary buckets, and an ETag is the same for the same body,
    so the count's observation is checked against a fresh listing; an object the listing cannot vouch for (written
    in the second it was listed) is read again.
    """
    for name in ("a", "b", "c", "d"):
        moto.put(f"uploads/{name}", collected_at=OLD)
    selection = age_selection(moto.bucket)
    assert 4 == connector.count(selection).matched
    fresh = datetime.now(UTC).isoformat()
    moto.put("uploads/b", collected_at=fresh)  # same body, new metadata: same ETag, likely the same second
    moto.s3.put_object(Bucket=moto.bucket, Key="uploads/c", Body=b"new body", Metadata={"collected-at": fresh})
    moto.s3.put_object(Bucket=moto.bucket, Key="uploads/d", Body=b"rewritten, still old",
                       Metadata={"collected-at": OLD})
    assert (2, hashed("uploads/a", "uploads/d")) == deleted(connector, selection)
    assert ["uploads/b", "uploads/c"] == moto.keys()


def test_a_rewrite_shows_in_the_fresh_listing_when_the_count_was_long_after_the_write(
        moto: S3Sandbox, connector: S3Connector) -> None:
    """Objects listed well after their last write: only those whose LastModified or ETag changed are read again."""
    for name in ("a", "b", "c"):
        moto.put(f"uploads/{name}", collected_at=OLD)
    listed_an_hour_later(connector)
    selection = age_selection(moto.bucket)
    assert 3 == connector.count(selection).matched
    moto.s3.put_object(Bucket=moto.bucket, Key="uploads/b", Body=b"new body",
                       Metadata={"collected-at": datetime.now(UTC).isoformat()})
    calls = Calls(connector.client)
    assert (2, hashed("uploads/a", "uploads/c")) == deleted(connector, selection)
    assert ["uploads/b"] == [params["Key"] for params in calls.of("HeadObject")]
    assert ["uploads/b"] == moto.keys()


def test_an_object_gone_since_the_count_is_not_reported_deleted(moto: S3Sandbox, connector: S3Connector) -> None:
    """The evidence names only what this run deleted."""
    for name in ("a", "b"):
        moto.put(f"uploads/{name}", collected_at=OLD)
    selection = age_selection(moto.bucket)
    assert 2 == connector.count(selection).matched
    moto.s3.delete_object(Bucket=moto.bucket, Key="uploads/a")
    assert (1, hashed("uploads/b")) == deleted(connector, selection)


def test_a_version_gone_since_the_count_is_skipped_not_an_error(
        tmp_path: Path, moto_url: str, connector: S3Connector) -> None:
    """A version deleted by someone else after the count: its tags cannot be read again; it is simply not there."""
    box = S3Sandbox(tmp_path / "sandbox", moto_url, versioned=True)
    gone = box.put("uploads/a", tag=OLD)
    kept = box.put("uploads/b", tag=OLD)
    selection = age_selection(box.bucket, "tag:collected-at")
    assert 2 == connector.count(selection).matched
    box.s3.delete_object(Bucket=box.bucket, Key="uploads/a", VersionId=gone)
    assert (1, hashed(f"uploads/b?versionId={kept}")) == deleted(connector, selection)
    assert ([], []) == box.versions()


def test_a_tag_changed_after_the_count_is_read_again(tmp_path: Path, moto_url: str, connector: S3Connector) -> None:
    """Tags change without a new version or LastModified: tag ages are read again before the delete."""
    for versioned in (False, True):
        box = S3Sandbox(tmp_path / f"sandbox-{versioned}", moto_url, versioned=versioned)
        box.put("uploads/a", tag=OLD)
        box.put("uploads/b", tag=OLD)
        selection = age_selection(box.bucket, "tag:collected-at")
        assert 2 == connector.count(selection).matched
        box.s3.put_object_tagging(Bucket=box.bucket, Key="uploads/b", Tagging={"TagSet": [
            {"Key": "collected-at", "Value": datetime.now(UTC).isoformat()}]})
        assert 1 == deleted(connector, selection)[0]
        assert ["uploads/b"] == box.keys()


def test_a_null_version_replaced_after_the_count_is_judged_afresh(moto: S3Sandbox, connector: S3Connector) -> None:
    """With versioning suspended a write replaces the `null` version: its VersionId alone does not name it.

    (Versioning is enabled again before the delete: moto answers a HEAD of a version on a suspended bucket with 400.)
    """
    moto.put("uploads/null", collected_at=OLD)  # before versioning: the `null` version
    moto.s3.put_bucket_versioning(Bucket=moto.bucket, VersioningConfiguration={"Status": "Enabled"})
    moto.put("uploads/real", collected_at=OLD)
    selection = age_selection(moto.bucket)
    assert 2 == connector.count(selection).matched
    moto.s3.put_bucket_versioning(Bucket=moto.bucket, VersioningConfiguration={"Status": "Suspended"})
    moto.put("uploads/null", collected_at=datetime.now(UTC).isoformat())  # replaces the `null` version
    moto.s3.put_bucket_versioning(Bucket=moto.bucket, VersioningConfiguration={"Status": "Enabled"})
    assert 1 == deleted(connector, selection)[0]
    assert (["uploads/null"], []) == moto.versions()


def test_a_legal_hold_set_after_the_count_holds_the_version(tmp_path: Path, seaweedfs_url: str) -> None:
    """Object Lock changes without a new version: it is checked again, and the version is held, not an error."""
    box = S3Sandbox(tmp_path / "sandbox", seaweedfs_url, locked=True)
    held = box.put("uploads/a", collected_at=OLD)
    box.put("uploads/b", collected_at=OLD)
    connector = S3Connector("files", {"endpoint_url": seaweedfs_url, "region": "us-east-1"})
    try:
        selection = age_selection(box.bucket)
        counts = connector.count(selection)
        assert (2, 0) == (counts.matched, counts.held)
        box.s3.put_object_legal_hold(Bucket=box.bucket, Key="uploads/a", VersionId=held, LegalHold={"Status": "ON"})
        assert 1 == deleted(connector, selection)[0]
        assert [hashed(f"uploads/a?versionId={held}")] == [set(c) for c in connector.held_ids(selection, 10, KEY)]
    finally:
        connector.close()
        box.s3.put_object_legal_hold(Bucket=box.bucket, Key="uploads/a", VersionId=held, LegalHold={"Status": "OFF"})
    assert ["uploads/a"] == box.versions()[0]


# -- which count a delete may use ----------------------------------------------------------------------------------


def test_a_delete_without_its_own_count_lists(moto: S3Sandbox, connector: S3Connector) -> None:
    """Another Selection (even an equal one), a second apply, or no count at all: the delete lists afresh."""
    for name in ("a", "b", "c"):
        moto.put(f"uploads/{name}", collected_at=OLD)
    counted = age_selection(moto.bucket)
    connector.count(counted)
    other = Selection(**{name: getattr(counted, name) for name in counted.__dataclass_fields__})
    assert other == counted and other is not counted
    calls = Calls(connector.client)
    assert 1 == deleted(connector, other, limit=1)[0]
    assert 1 == len(calls.of("ListObjectsV2")) and 3 == len(calls.of("HeadObject"))  # judged from scratch
    assert 2 == deleted(connector, counted)[0]  # its own count: the two left are re-verified, then deleted
    calls.clear()
    assert 0 == deleted(connector, counted)[0]  # used once; a second apply lists again and finds nothing
    assert 1 == len(calls.of("ListObjectsV2"))


def test_limit_and_an_interrupted_count(moto: S3Sandbox, connector: S3Connector) -> None:
    """`limit` caps the records deleted; a count that fails keeps nothing, so the delete lists afresh."""
    from retention.errors import ConnectorError

    for n in range(6):
        moto.put(f"uploads/{n}", collected_at=OLD)
    selection = age_selection(moto.bucket)
    assert 6 == connector.count(selection).matched
    assert 2 == deleted(connector, selection, limit=2)[0]
    assert 4 == len(moto.keys())

    heads = [0]

    def fail_the_third_head(**_: Any) -> Any:
        heads[0] += 1
        if heads[0] != 3:
            return None
        from types import SimpleNamespace
        return SimpleNamespace(status_code=500), {"Error": {"Code": "InternalError", "Message": "injected"},
                                                  "ResponseMetadata": {"HTTPStatusCode": 500}}

    connector.client.meta.events.register("before-call.s3.HeadObject", fail_the_third_head)
    selection = age_selection(moto.bucket)
    with pytest.raises(ConnectorError, match="InternalError"):
        connector.count(selection)
    assert connector._collection is None
    calls = Calls(connector.client)
    assert 4 == deleted(connector, selection)[0]
    assert 1 == len(calls.of("ListObjectsV2"))


# -- memory stays flat ---------------------------------------------------------------------------------------------


def test_the_count_keeps_a_bounded_number_in_memory_and_spills_the_rest(
        moto: S3Sandbox, connector: S3Connector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 3 records in memory, the other matched and held records go to a temporary file; all are deleted or named."""
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spill_dir))
    matched = [f"uploads/clients/c-x/{n:02}" for n in range(8)] + list(ODD_KEYS)
    held = [f"uploads/clients/c-held/{n:02}" for n in range(4)]
    for key in matched + held:
        moto.put(key, collected_at=OLD)
    moto.put("uploads/clients/c-held/fresh", collected_at=datetime.now(UTC).isoformat())
    connector.memory_bound = 3
    selection = client_selection(moto.bucket, age=True, held=("c-held",))
    counts = connector.count(selection)
    assert (len(matched), len(held), len(matched) + len(held) + 1) == (counts.matched, counts.held, counts.total)
    records = connector._collection.records if connector._collection else None
    assert records is not None and 3 == len(records.memory)
    assert len(matched) + len(held) - 3 == records.spilled
    assert [] == list(spill_dir.iterdir())  # the spill file has no name: nothing can be left behind
    assert (len(matched), hashed(*matched)) == deleted(connector, selection)
    assert hashed(*held) == {i for chunk in connector.held_ids(selection, 2, KEY) for i in chunk}
    assert sorted([*held, "uploads/clients/c-held/fresh"]) == moto.keys()
    spill = records._file
    assert spill is not None and not spill.closed
    connector.close()
    assert spill.closed and connector._collection is None


def test_a_plan_leaves_no_spill_file(moto: S3Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`plan` counts (and so collects) but never deletes: its spill file is closed with the connector, nameless."""
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spill_dir))
    monkeypatch.setattr(S3Connector, "memory_bound", 1)
    opened: list[Any] = []
    real = RecordSpool._spill

    def spill(self: RecordSpool) -> Any:
        opened.append(real(self))
        return opened[-1]

    monkeypatch.setattr(RecordSpool, "_spill", spill)
    for n in range(4):
        moto.put(f"uploads/{n}", collected_at=OLD)
    moto.write(RULE.format(bucket=moto.bucket, field="metadata:collected-at"))
    assert 4 == moto.plan()["matched"]
    assert 1 == len(opened) and opened[0].closed
    assert [] == list(spill_dir.iterdir())
    assert 4 == len(moto.keys())


def test_the_spool_keeps_any_key_intact_and_in_order(tmp_path: Path) -> None:
    """Keys may hold newlines, carriage returns, control characters, quotes, anything: one JSON line each."""
    keys = ["plain", "new\nline", "cr\rlf\r\n", "ctl\x00\x01\x1f", "sep\u2028\u2029", 'q"\'\\', "🙂", "[\"m\", 1]"]
    when = datetime(2020, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)
    records = [S3Record(key, None if n % 2 else f"v{n}", when + timedelta(seconds=n), f'"etag{n}"', n % 3 == 0)
               for n, key in enumerate(keys)]
    spool = RecordSpool(bound=2)
    for n, record in enumerate(records):
        spool.append("held" if n % 4 == 3 else "matched", record)
    assert (2, len(keys) - 2) == (len(spool.memory), spool.spilled)
    expected = [("held" if n % 4 == 3 else "matched", record) for n, record in enumerate(records)]
    assert expected == list(spool)
    assert expected == list(spool)  # read again: the same
    spool.close()
    assert [] == list(spool)


def test_the_listing_cursor_jumps_to_the_keys_asked_for() -> None:
    """A fresh listing read forward from just before each key asked for; a key not there is gone."""
    store = sorted(f"k{n:03}" for n in range(0, 300, 3))  # k000, k003, ...
    starts: list[str | None] = []

    def fetch(after: str | None) -> tuple[list[S3Record], bool]:
        starts.append(after)
        page = [key for key in store if after is None or key > after][:10]
        return [S3Record(key, None, datetime(2020, 1, 1, tzinfo=UTC)) for key in page], page[-1:] != store[-1:]

    cursor = ListingCursor(fetch)
    found = [cursor.get(key) for key in ("k000", "k003", "k004", "k027", "k150", "k153", "k297", "k298")]
    assert ["k000", "k003", None, "k027", "k150", "k153", "k297", None] == [r.key if r else None for r in found]
    assert ["k00", "k15", "k29"] == starts  # one page per region asked about, never the keys between


def test_a_run_spills_and_deletes_every_matched_object(moto: S3Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end, with 2 records in memory: every expired object is deleted and named in the sidecar."""
    from retention.secrets import RECORD_ID_LABEL, derive
    from tests.helpers import PSEUDONYM_KEY

    monkeypatch.setattr(S3Connector, "memory_bound", 2)
    keys = [f"uploads/{n:02}" for n in range(7)]
    for key in keys:
        moto.put(key, collected_at=OLD)
    moto.put("uploads/keep", collected_at=datetime.now(UTC).isoformat())
    moto.write(RULE.format(bucket=moto.bucket, field="metadata:collected-at"))
    report = moto.run()
    assert (7, 7) == (report["rules"][0]["matched"], report["rules"][0]["changed"])
    assert ["uploads/keep"] == moto.keys()
    sidecar = Path(report["audit_file"].replace(".jsonl", ".ids")).read_text().splitlines()
    record_key = derive(PSEUDONYM_KEY, RECORD_ID_LABEL)
    assert {f"changed uploads {pseudonym(record_key, key)}" for key in keys} == set(sidecar)


def test_listed_times_share_one_utc_zone(moto: S3Sandbox, connector: S3Connector) -> None:
    """botocore gives each LastModified a tzlocal() of its own where the local zone is UTC (about 400 bytes each:
    40 MB for the 100,000 records a count keeps); the records hold the one shared UTC instead."""
    moto.put("uploads/one")
    moto.put("uploads/two")
    records = [record for page in connector._pages(moto.bucket, "uploads/", False) for record in page]
    assert [UTC, UTC] == [record.last_modified.tzinfo for record in records]
    assert all(record.last_modified.tzinfo is UTC for record in records)


@pytest.mark.parametrize("operation", ["HeadBucket", "GetBucketVersioning", "GetObjectLockConfiguration",
                                       "ListObjectsV2", "HeadObject", "DeleteObjects"])
def test_s3_going_away_at_any_call_is_a_named_connector_error(moto: S3Sandbox, connector: S3Connector,
                                                              operation: str) -> None:
    """Whichever call finds the server gone, the rule fails with "cannot reach S3", never an unexpected error."""
    from botocore.exceptions import EndpointConnectionError

    moto.put("uploads/old", collected_at=OLD)

    def gone(**_: Any) -> None:
        raise EndpointConnectionError(endpoint_url=moto.endpoint)

    connector.client.meta.events.register(f"before-send.s3.{operation}", gone)
    selection = age_selection(moto.bucket)

    def rule() -> None:  # what a run asks of the connector, in order
        connector.check(selection, DELETE)
        connector.count(selection)
        deleted(connector, selection)
        raise AssertionError(f"{operation} was never called")

    with pytest.raises(ConnectorError, match="cannot reach S3: EndpointConnectionError"):
        rule()


def test_s3_going_away_while_delete_markers_are_swept_is_a_named_connector_error(
        tmp_path: Path, moto_url: str, connector: S3Connector) -> None:
    from botocore.exceptions import EndpointConnectionError

    versioned = S3Sandbox(tmp_path / "versioned", moto_url, versioned=True)
    versioned.put("uploads/old", collected_at=OLD)
    selection = age_selection(versioned.bucket)
    assert 1 == connector.count(selection).matched

    def gone(**_: Any) -> None:
        raise EndpointConnectionError(endpoint_url=moto_url)

    connector.client.meta.events.register("before-send.s3.ListObjectVersions", gone)
    with pytest.raises(ConnectorError, match="cannot reach S3: EndpointConnectionError"):
        deleted(connector, selection)
