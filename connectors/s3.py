"""S3 connector: streams the listing page by page, judges each object (or version), deletes in bulk.

S3 cannot evaluate a predicate, so the "statement" is a listing predicate evaluated here, page by page, and
DeleteObjects calls of up to 1,000 keys, several in flight. On a versioned bucket each version is a record,
deleted by its VersionId (exact: a version never changes), and a key's delete markers are removed once no
version of it remains. Object Lock (retention or legal hold) is never bypassed: such versions count as held.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any, ClassVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from connectors.s3_records import S3Record, address, client_pattern, key_part, parse_age
from retention.connector import ConnectorDefaults, ObjectClient, Option
from retention.errors import ConnectorError, TargetMissing
from retention.ids import canonical_id
from retention.model import Action, Batch, Counts, OptionValue, Selection
from retention.transforms import KeyedHasher

DELETE_CAP = 1000  # S3 takes at most 1,000 keys per DeleteObjects call
IN_FLIGHT = 4  # DeleteObjects calls running at once
LOOKUPS = 16  # concurrent HEAD / GetObjectTagging calls when metadata, tags or locks must be read


class S3Connector(ConnectorDefaults):
    """S3 and S3-compatible stores (boto3; the usual credential chain)."""

    type_name: ClassVar[str] = "s3"
    description: ClassVar[str] = "S3 and S3-compatible stores (boto3); versions, Object Lock, bulk deletes"
    options: ClassVar[tuple[Option, ...]] = (
        Option("endpoint_url", help="for S3-compatible stores, e.g. http://127.0.0.1:8333"),
        Option("region", help="e.g. us-west-2"),
    )
    target_key: ClassVar[str] = "bucket"
    transforms: ClassVar[frozenset[str]] = frozenset()
    actions: ClassVar[frozenset[str]] = frozenset({"delete"})
    actions_note: ClassVar[str] = ("S3 objects are deleted, not rewritten: anonymizing would mean downloading, "
                                   "transforming and re-uploading every object, and on a versioned bucket the "
                                   "original would survive as an older version")
    rule_options: ClassVar[tuple[Option, ...]] = (
        Option("prefix", default="", help="only keys under this prefix"),
        Option("client_key", help='where the client id sits in the key, e.g. "clients/{client_id}/"'),
        Option("subject_key", help='where an end user\'s id sits, e.g. "clients/{client_id}/users/{subject_id}/"'),
    )
    default_age_field: ClassVar[str | None] = "LastModified"

    def __init__(self, name: str, options: Mapping[str, OptionValue]) -> None:
        self.name = name
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=options.get("endpoint_url") or None, region_name=options.get("region") or None,
            config=BotoConfig(max_pool_connections=LOOKUPS + IN_FLIGHT, retries={"max_attempts": 5,
                                                                                  "mode": "standard"}))
        self._pool = ThreadPoolExecutor(max_workers=LOOKUPS, thread_name_prefix=f"s3-{name}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def object_client(self) -> ObjectClient:
        """The boto3 client, for the WORM copy of the audit log."""
        client: ObjectClient = self.client
        return client

    # -- targets ---------------------------------------------------------------------------------------------

    def check(self, selection: Selection, action: Action) -> list[str]:
        try:
            self._call(self.client.head_bucket, Bucket=selection.target)
        except TargetMissing as exc:
            return [str(exc)]
        return []

    def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        """One S3 call, its errors named by code (never by key: keys may hold personal data)."""
        try:
            return method(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            if code in ("NoSuchBucket", "404") and "Bucket" in kwargs and "Key" not in kwargs:
                raise TargetMissing(f"bucket {kwargs['Bucket']} does not exist") from None
            raise ConnectorError(f"S3 {method.__name__} failed: {code}") from None
        except BotoCoreError as exc:
            raise ConnectorError(f"cannot reach S3: {type(exc).__name__}") from None

    def _versioned(self, bucket: str) -> bool:
        status = self._call(self.client.get_bucket_versioning, Bucket=bucket).get("Status")
        return status in ("Enabled", "Suspended")

    def _lock_enabled(self, bucket: str) -> bool:
        try:
            configuration = self.client.get_object_lock_configuration(Bucket=bucket)
        except ClientError:
            return False  # ObjectLockConfigurationNotFoundError: the bucket has no Object Lock
        return bool(configuration.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")

    def _pages(self, bucket: str, prefix: str, versioned: bool) -> Iterator[list[S3Record]]:
        """The bucket's records under `prefix`, one listing page at a time (memory stays flat)."""
        if versioned:
            paginator = self.client.get_paginator("list_object_versions")
            field, version = "Versions", "VersionId"
        else:
            paginator = self.client.get_paginator("list_objects_v2")
            field, version = "Contents", None
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                yield [S3Record(item["Key"], item[version] if version else None, item["LastModified"])
                       for item in page.get(field, [])]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            if code == "NoSuchBucket":
                raise TargetMissing(f"bucket {bucket} does not exist") from None
            raise ConnectorError(f"S3 listing failed: {code}") from None

    # -- judging ---------------------------------------------------------------------------------------------

    def _judged(self, selection: Selection) -> Iterator[list[tuple[S3Record, str]]]:
        """Each page's records with their class: matched, held, unknown_age or kept (not expired)."""
        bucket, prefix = selection.target, str(selection.scope.get("prefix") or "")
        versioned, locked = self._versioned(bucket), self._lock_enabled(bucket)
        pattern = client_pattern(selection.client.field) if selection.client else None
        for page in self._pages(bucket, prefix, versioned):
            ages = self._ages(bucket, selection, page)
            judged = [(record, self._class(selection, record, age, pattern)) for record, age in zip(page, ages,
                                                                                                   strict=True)]
            if locked:
                judged = self._apply_locks(bucket, selection, judged)
            yield judged

    def _ages(self, bucket: str, selection: Selection, page: list[S3Record]) -> list[datetime | None]:
        if selection.age is None:
            return [None] * len(page)
        field = selection.age.field
        if field == "LastModified":
            return [record.last_modified for record in page]
        source, _, name = field.partition(":")
        read = self._metadata_age if source == "metadata" else self._tag_age
        return list(self._pool.map(lambda record: read(bucket, record, name), page))

    def _metadata_age(self, bucket: str, record: S3Record, name: str) -> datetime | None:
        head = self._call(self.client.head_object, **address(bucket, record))
        return parse_age(head.get("Metadata", {}).get(name.lower()))

    def _tag_age(self, bucket: str, record: S3Record, name: str) -> datetime | None:
        tags = self._call(self.client.get_object_tagging, **address(bucket, record)).get("TagSet", [])
        return parse_age(next((tag["Value"] for tag in tags if tag["Key"] == name), None))

    def _class(self, selection: Selection, record: S3Record, age: datetime | None, pattern: re.Pattern[str] | None
               ) -> str:
        if selection.erasure:
            return self._erasure_class(selection, record)
        expired, unknown = False, False
        if selection.age:
            expired = age is not None and age < selection.age.cutoff
            unknown = age is None
        client_id = None
        if selection.client and pattern:
            match = pattern.match(record.key)
            client_id = canonical_id(match.group("client_id")) if match else None
            states = selection.client.states
            client_expired = states is not None and client_id in states.expired
            expired = expired or client_expired
            unknown = unknown or states is None or client_id not in states.known
        if not expired:
            return "unknown_age" if unknown else "kept"
        held = selection.held
        if held.everything or (client_id is not None and client_id in held.client_ids):
            return "held"
        return "matched"

    def _erasure_class(self, selection: Selection, record: S3Record) -> str:
        """An erasure request names keys by their client (and subject) parts; holds and locks still apply."""
        erasure = selection.erasure
        assert erasure is not None
        client = canonical_id(key_part(erasure.client_field, "client_id", record.key))
        subject = canonical_id(key_part(erasure.subject_field, "subject_id", record.key)) \
            if erasure.subject_field else None
        named = client == erasure.client_id and (not erasure.subject_field or subject == erasure.subject_id)
        if not named:
            return "kept"
        held = selection.held
        if held.everything or client in held.client_ids:
            return "held"
        return "matched"

    def _apply_locks(self, bucket: str, selection: Selection, judged: list[tuple[S3Record, str]]
                     ) -> list[tuple[S3Record, str]]:
        """Versions under Object Lock retention or legal hold are held: never deleted, never bypassed."""
        now = selection.now or datetime.now(UTC)
        candidates = [record for record, kind in judged if kind == "matched"]
        locked = set(r.identity for r, is_locked in zip(
            candidates, self._pool.map(lambda r: self._is_locked(bucket, r, now), candidates), strict=True)
            if is_locked)
        return [(record, "held" if record.identity in locked else kind) for record, kind in judged]

    def _is_locked(self, bucket: str, record: S3Record, now: datetime) -> bool:
        # GetObjectRetention is not implemented everywhere (moto answers 500); HEAD carries the same facts
        head = self._call(self.client.head_object, **address(bucket, record))
        until = head.get("ObjectLockRetainUntilDate")
        return head.get("ObjectLockLegalHoldStatus") == "ON" or (until is not None and until > now)

    # -- counting and deleting -------------------------------------------------------------------------------

    def count(self, selection: Selection) -> Counts:
        tally = {"matched": 0, "held": 0, "unknown_age": 0, "kept": 0}
        for page in self._judged(selection):
            for _, kind in page:
                tally[kind] += 1
        return Counts(total=sum(tally.values()), matched=tally["matched"], held=tally["held"],
                      unknown_age=tally["unknown_age"])

    def held_ids(self, selection: Selection, batch_size: int, id_key: bytes) -> Iterator[tuple[str, ...]]:
        hasher = KeyedHasher(id_key)
        for page in self._judged(selection):
            held = tuple(hasher(record.identity) for record, kind in page if kind == "held")
            if held:
                yield held

    def statement(self, selection: Selection, action: Action) -> str:
        field = selection.age.field if selection.age else "client_key"
        return (f"list s3://{selection.target}/{selection.scope.get('prefix') or ''} (versions when versioned); "
                f"keep records whose {field} is expired, not held, not under Object Lock; "
                f"DeleteObjects up to {DELETE_CAP} keys (by VersionId when versioned), {IN_FLIGHT} calls in flight")

    def apply(self, selection: Selection, action: Action, *, batch_size: int, limit: int,
              id_key: bytes | None, should_stop: Callable[[], bool] = lambda: False) -> Iterator[Batch]:
        """Delete matched records as the listing streams by, at most `limit`; per-key errors fail the rule."""
        bucket = selection.target
        versioned = self._versioned(bucket)
        hasher = KeyedHasher(id_key) if id_key else None
        size = max(1, min(batch_size, DELETE_CAP))
        errors: dict[str, int] = {}
        failures: list[ConnectorError] = []  # a call that failed outright; the calls beside it are still reported
        in_flight: set[Future[tuple[list[S3Record], dict[str, int]]]] = set()
        chunk: list[S3Record] = []
        submitted = 0
        with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix=f"s3-delete-{self.name}") as deleters:

            def finished(block: bool) -> Iterator[Batch]:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED) if block else (
                    {f for f in in_flight if f.done()}, None)
                for future in done:
                    in_flight.discard(future)
                    try:
                        deleted, failed = future.result()
                    except ConnectorError as exc:
                        failures.append(exc)
                        continue
                    for code, count in failed.items():
                        errors[code] = errors.get(code, 0) + count
                    if deleted:
                        yield Batch(len(deleted), tuple(hasher(r.identity) for r in deleted) if hasher else ())

            def halted() -> bool:
                return bool(failures) or should_stop()

            for page in self._judged(selection):
                if submitted >= limit or halted():
                    break  # all that the count found is on its way (or a stop was asked for): list no more
                for record, kind in page:
                    if kind != "matched" or submitted >= limit:
                        continue
                    chunk.append(record)
                    submitted += 1
                    if len(chunk) == size:
                        if halted():
                            break
                        if len(in_flight) >= IN_FLIGHT:
                            yield from finished(block=True)
                        in_flight.add(deleters.submit(self._delete, bucket, chunk))
                        chunk = []
                yield from finished(block=False)
            if chunk and not halted():  # after a stop or a failure, a chunk not yet sent stays unsent
                in_flight.add(deleters.submit(self._delete, bucket, chunk))
            while in_flight:  # every call sent is accounted for before anything is raised
                yield from finished(block=True)
        if failures:
            raise failures[0]
        if versioned and submitted:
            self._remove_orphan_markers(bucket, str(selection.scope.get("prefix") or ""))
        if errors:
            summary = ", ".join(f"{count} x {code}" for code, count in sorted(errors.items()))
            raise ConnectorError(f"{sum(errors.values())} objects could not be deleted ({summary})")

    def _delete(self, bucket: str, records: list[S3Record]) -> tuple[list[S3Record], dict[str, int]]:
        """One DeleteObjects call; what it really removed, and its per-key errors by code."""
        objects = [{"Key": r.key, **({"VersionId": r.version_id} if r.version_id else {})} for r in records]
        response = self._call(self.client.delete_objects, Bucket=bucket, Delete={"Objects": objects, "Quiet": False})
        by_address = {(r.key, r.version_id): r for r in records}
        deleted: list[S3Record] = []
        failed: dict[str, int] = {}
        for item in response.get("Deleted", []):
            record = by_address.get((item["Key"], item.get("VersionId")))
            if record is None or (item.get("DeleteMarker") and record.version_id is None):
                failed["OnlyDeleteMarker"] = failed.get("OnlyDeleteMarker", 0) + 1  # still recoverable
            else:
                deleted.append(record)
        for item in response.get("Errors", []):
            failed[item.get("Code", "Unknown")] = failed.get(item.get("Code", "Unknown"), 0) + 1
        return deleted, failed

    def _remove_orphan_markers(self, bucket: str, prefix: str) -> None:
        """Delete markers whose key has no version left hide nothing: remove them, so nothing lingers."""
        paginator = self.client.get_paginator("list_object_versions")
        orphans: list[dict[str, str]] = []
        versions_of: dict[str, int] = {}
        markers: list[tuple[str, str]] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for version in page.get("Versions", []):
                versions_of[version["Key"]] = versions_of.get(version["Key"], 0) + 1
            markers += [(m["Key"], m["VersionId"]) for m in page.get("DeleteMarkers", [])]
        orphans = [{"Key": key, "VersionId": vid} for key, vid in markers if not versions_of.get(key)]
        for start in range(0, len(orphans), DELETE_CAP):
            self._call(self.client.delete_objects, Bucket=bucket,
                       Delete={"Objects": orphans[start:start + DELETE_CAP], "Quiet": True})
