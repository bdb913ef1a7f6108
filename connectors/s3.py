"""S3 connector: streams the listing page by page, judges each object (or version), deletes in bulk.

S3 cannot evaluate a predicate, so the "statement" is a listing predicate evaluated here, page by page, and
DeleteObjects calls of up to 1,000 keys, several in flight. On a versioned bucket each version is a record,
deleted by its VersionId (exact: a version never changes), and a key's delete markers are removed once no
version of it remains. Object Lock (retention or legal hold) is never bypassed: such versions count as held.

The prefix is listed once. `count` keeps the records it matched or held (the first `memory_bound` in memory, the
rest in an anonymous temporary file); `apply` and `held_ids` of the same Selection object use them, anything else
lists afresh. What may have changed since the count is looked at again, and only that:

- a version (a VersionId other than `null`): nothing that a LastModified or metadata age, a key pattern or a
  hold reads can change, and DeleteObjects by VersionId removes exactly that version; it is deleted unread.
- an object of an unversioned bucket (or a `null` version, which a write replaces when versioning is
  suspended): it may have been rewritten under the same key, and S3 offers no delete conditional on what the
  verdict read for ordinary buckets. DeleteObject's `If-Match` and DeleteObjects' per-object `ETag` compare
  ETags only (the LastModifiedTime and Size conditions are for directory buckets); an ETag stays the same when
  the same body is written again, so a rewrite that renews only LastModified or metadata would pass, and not
  every store applies the condition (moto ignores the per-object ETag and deletes; SeaweedFS applies it). So the
  object is looked up in a fresh listing (read forward from just before the keys counted, never over the
  runs of keys between them) and deleted only if its LastModified and ETag are those the count saw; one that
  changed is judged afresh (metadata and tags read again), one that is gone is skipped. LastModified has
  one-second resolution: for a metadata age, an object the count listed within SETTLE of its last write is
  always read again (a rewrite of the same body in that second would show no difference).
  Rules that judge by key alone (a client's end, an erasure request) need none of this: a rewrite keeps the key.
- tags and Object Lock change without a new version or LastModified: tag ages are read again, and on a bucket
  with Object Lock each version is checked again (the server refuses to delete a locked version regardless).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from retention.connector import ConnectorDefaults, NativeRule, ObjectClient, Option
from retention.errors import ConnectorError, TargetMissing
from retention.model import Action, Batch, Counts, OptionValue, Selection, Shard
from retention.transforms import KeyedHasher

from .s3_access import IN_FLIGHT
from .s3_judging import S3Judging
from .s3_lifecycle import lifecycle_rules
from .s3_records import (
    ListingCursor,
    RecordSpool,
    S3Record,
)

DELETE_CAP = 1000  # S3 takes at most 1,000 keys per DeleteObjects call
MEMORY_RECORDS = 100_000  # matched and held records a count keeps in memory; the rest go to a temporary file



@dataclass
class _Collection:
    """What one count matched and held, for the `apply` and `held_ids` of the same Selection object."""

    selection: Selection
    records: RecordSpool
    applied: bool = False  # used once: a second apply lists afresh
    held_changed: bool = False  # a record turned held since the count: held_ids lists afresh to name it


class S3Connector(S3Judging, ConnectorDefaults):
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
    memory_bound: int = MEMORY_RECORDS

    def __init__(self, name: str, options: Mapping[str, OptionValue]) -> None:
        super().__init__(name, options)
        # what each thread's last count kept for its apply: rules run side by side on lanes of their own, and one
        # rule's count must never take away what another rule's apply is reading
        self._counted = threading.local()
        self._open: set[RecordSpool] = set()
        self._open_lock = threading.Lock()

    @property
    def _collection(self) -> _Collection | None:
        return getattr(self._counted, "collection", None)

    def close(self) -> None:
        with self._open_lock:
            for records in self._open:
                records.close()
            self._open.clear()
            self._counted = threading.local()
        super().close()

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

    def native_expiry(self, selection: Selection) -> list[NativeRule]:
        """The bucket's lifecycle expirations over the rule's prefix: S3 applies them, whatever rules and holds say."""
        rules = self._lifecycle(selection.target)
        if not rules:
            return []
        versioning = self._call(self.client.get_bucket_versioning, Bucket=selection.target).get("Status")
        return lifecycle_rules(rules, str(selection.scope.get("prefix") or ""), versioning)

    # -- counting and deleting -------------------------------------------------------------------------------

    def count(self, selection: Selection) -> Counts:
        """Count by class, keeping the matched and held records for this selection's apply and held_ids."""
        self._release()
        tally = {"matched": 0, "held": 0, "unknown_age": 0, "kept": 0}
        records = RecordSpool(self.memory_bound)
        cutoff = selection.age.cutoff if selection.age and selection.erasure is None else None
        oldest: datetime | None = None
        try:
            for page in self._judged(selection):
                for record, kind, age in page:
                    if kind == "gone":
                        continue  # deleted between its listing and its reading: not there to count
                    tally[kind] += 1
                    if kind in ("matched", "held"):
                        records.append(kind, record)
                    if kind == "matched" and cutoff and age and age < cutoff and (oldest is None or age < oldest):
                        oldest = age
        except BaseException:
            records.close()  # a count cut short keeps nothing: an apply would list afresh
            raise
        self._counted.collection = _Collection(selection, records)
        with self._open_lock:
            self._open.add(records)
        return Counts(total=sum(tally.values()), matched=tally["matched"], held=tally["held"],
                      unknown_age=tally["unknown_age"], oldest=oldest)

    def _collection_of(self, selection: Selection) -> _Collection | None:
        collection = self._collection
        return collection if collection is not None and collection.selection is selection else None

    def _release(self) -> None:
        """Close this thread's last count (its apply and held ids are done: a thread runs one rule at a time)."""
        collection = self._collection
        if collection is not None:
            collection.records.close()
            self._counted.collection = None
            with self._open_lock:
                self._open.discard(collection.records)

    def held_ids(self, selection: Selection, batch_size: int, id_key: bytes) -> Iterator[tuple[str, ...]]:
        hasher = KeyedHasher(id_key)
        collection = self._collection_of(selection)
        if collection is not None and not collection.held_changed:
            names = (hasher(record.identity) for kind, record in collection.records if kind == "held")
            while chunk := tuple(itertools.islice(names, max(1, batch_size))):
                yield chunk
            return
        for page in self._judged(selection):
            held = tuple(hasher(record.identity) for record, kind, _ in page if kind == "held")
            if held:
                yield held

    def shards(self, selection: Selection, parts: int) -> list[Shard]:
        """The folders under the rule's prefix (`Delimiter="/"`: one cheap listing of folders, not of objects), about
        as many to each shard; the first shard also takes the keys beside them. A prefix without two folders stays
        whole."""
        if parts < 2:
            return []
        prefix = str(selection.scope.get("prefix") or "")
        folders = [common["Prefix"] for page in self._listing("list_objects_v2", selection.target, prefix,
                                                               Delimiter="/")
                   for common in page.get("CommonPrefixes", [])]
        if len(folders) < 2:
            return []
        parts = min(parts, len(folders))
        groups = [tuple(folders[len(folders) * index // parts:len(folders) * (index + 1) // parts])
                  for index in range(parts)]
        return [Shard(index + 1, parts, "Key", folders=group, loose=index == 0) for index, group in enumerate(groups)]

    def statement(self, selection: Selection, action: Action) -> str:
        field = selection.age.field if selection.age else "client_key"
        return (f"list s3://{selection.target}/{selection.scope.get('prefix') or ''} (versions when versioned); "
                f"keep records whose {field} is expired, not held, not under Object Lock; "
                f"DeleteObjects up to {DELETE_CAP} keys (by VersionId when versioned; unversioned objects only if "
                f"a fresh listing shows them unchanged since the count), {IN_FLIGHT} calls in flight")

    def apply(self, selection: Selection, action: Action, *, batch_size: int, limit: int,
              id_key: bytes | None, should_stop: Callable[..., bool] = lambda wait=True: False) -> Iterator[Batch]:
        """Delete matched records, at most `limit`: those the count of this selection kept, each still matching,
        else as the listing streams by. Per-key errors fail the rule."""
        bucket = selection.target
        versioned = self._versioned(bucket)
        collection = self._collection_of(selection)
        if collection is not None and not collection.applied:
            collection.applied = True
            candidates = self._recounted(selection, collection)
        else:
            candidates = self._listed(selection)
        hasher = KeyedHasher(id_key) if id_key else None
        size = max(1, min(batch_size, DELETE_CAP))
        errors: dict[str, int] = {}
        failures: list[ConnectorError] = []  # a call that failed outright; the calls beside it are still reported
        in_flight: set[Future[tuple[list[S3Record], dict[str, int]]]] = set()
        chunk: list[S3Record] = []
        submitted = 0
        with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix=f"s3-delete-{self.name}") as deleters, \
                closing(candidates):

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

            for page in candidates:
                if submitted >= limit or halted():
                    break  # all that the count found is on its way (or a stop was asked for): look no further
                for record in page:
                    if submitted >= limit:
                        break
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
            self._remove_orphan_markers(bucket, str(selection.scope.get("prefix") or ""), selection.shard)
        if errors:
            summary = ", ".join(f"{count} x {code}" for code, count in sorted(errors.items()))
            raise ConnectorError(f"{sum(errors.values())} objects could not be deleted ({summary})")

    def _listed(self, selection: Selection) -> Generator[list[S3Record], None, None]:
        """Without a count of this selection: each listing page's matched records, judged as they come."""
        for page in self._judged(selection):
            yield [record for record, kind, _ in page if kind == "matched"]

    def _recounted(self, selection: Selection, collection: _Collection) -> Generator[list[S3Record], None, None]:
        """The count's matched records, a chunk at a time, each one that still matches (see the module's note)."""
        bucket, prefix = selection.target, str(selection.scope.get("prefix") or "")
        locked = self._lock_enabled(bucket)
        cursor = ListingCursor(lambda after: self._listing_page(bucket, prefix, after))
        matched = (record for kind, record in collection.records if kind == "matched")
        while chunk := list(itertools.islice(matched, DELETE_CAP)):
            judged = self._rejudged(selection, chunk, cursor, locked)
            collection.held_changed |= any(kind == "held" for _, kind in judged)
            yield [record for record, kind in judged if kind == "matched"]

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

    def _remove_orphan_markers(self, bucket: str, prefix: str, shard: Shard | None) -> None:
        """Delete markers whose key has no version left hide nothing: remove them, so nothing lingers."""
        orphans: list[dict[str, str]] = []
        versions_of: dict[str, int] = {}
        markers: list[tuple[str, str]] = []
        for page in self._listing("list_object_versions", bucket, prefix, shard):
            for version in page.get("Versions", []):
                versions_of[version["Key"]] = versions_of.get(version["Key"], 0) + 1
            markers += [(m["Key"], m["VersionId"]) for m in page.get("DeleteMarkers", [])]
        orphans = [{"Key": key, "VersionId": vid} for key, vid in markers if not versions_of.get(key)]
        for start in range(0, len(orphans), DELETE_CAP):
            self._call(self.client.delete_objects, Bucket=bucket,
                       Delete={"Objects": orphans[start:start + DELETE_CAP], "Quiet": True})

