"""Judging S3 records: each one matched, held, of unknown age or kept, from its key, its age and Object Lock."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

from retention.ids import canonical_id
from retention.model import Selection

from .s3_access import Missing, S3Access
from .s3_records import ListingCursor, S3Record, address, client_pattern, key_part, parse_age

Verdict = tuple[S3Record, str, datetime | None]  # a record, its class, its age (when the rule has one and it is set)


class S3Judging(S3Access):
    """The verdict on each record; S3 evaluates no predicate, so it is reached here, page by page."""

    def _judged(self, selection: Selection) -> Iterator[list[Verdict]]:
        """Each page's records with their class (matched, held, unknown_age or kept: not expired) and their age."""
        bucket, prefix = selection.target, str(selection.scope.get("prefix") or "")
        versioned, locked = self._versioned(bucket), self._lock_enabled(bucket)
        for page in self._pages(bucket, prefix, versioned, selection.shard):
            yield self._verdicts(selection, page, locked)

    def _verdicts(self, selection: Selection, records: list[S3Record], locked: bool) -> list[Verdict]:
        pattern = client_pattern(selection.client.field) if selection.client else None
        ages = self._ages(selection.target, selection, records)
        judged = [(record, self._class(selection, record, age, pattern)) for record, age in zip(records, ages,
                                                                                               strict=True)]
        if locked:
            judged = self._apply_locks(selection.target, selection, judged)
        return [(record, kind, age if isinstance(age, datetime) else None)
                for (record, kind), age in zip(judged, ages, strict=True)]

    def _judge(self, selection: Selection, records: list[S3Record], locked: bool) -> list[tuple[S3Record, str]]:
        return [(record, kind) for record, kind, _ in self._verdicts(selection, records, locked)]

    def _ages(self, bucket: str, selection: Selection, page: list[S3Record]) -> list[datetime | Missing | None]:
        if selection.age is None:
            return [None] * len(page)
        field = selection.age.field
        if field == "LastModified":
            return [record.last_modified for record in page]
        source, _, name = field.partition(":")
        read = self._metadata_age if source == "metadata" else self._tag_age
        return list(self._pool.map(lambda record: read(bucket, record, name), page))

    def _metadata_age(self, bucket: str, record: S3Record, name: str) -> datetime | Missing | None:
        head = self._lookup(self.client.head_object, **address(bucket, record))
        return Missing.GONE if head is None else parse_age(head.get("Metadata", {}).get(name.lower()))

    def _tag_age(self, bucket: str, record: S3Record, name: str) -> datetime | Missing | None:
        response = self._lookup(self.client.get_object_tagging, **address(bucket, record))
        if response is None:
            return Missing.GONE
        return parse_age(next((tag["Value"] for tag in response.get("TagSet", []) if tag["Key"] == name), None))

    def _class(self, selection: Selection, record: S3Record, age: datetime | Missing | None,
               pattern: re.Pattern[str] | None) -> str:
        if age is Missing.GONE:
            return "gone"
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
        found = {r.identity: "gone" if state is Missing.GONE else "held" for r, state in zip(
            candidates, self._pool.map(lambda r: self._is_locked(bucket, r, now), candidates), strict=True) if state}
        return [(record, found.get(record.identity, kind)) for record, kind in judged]

    def _is_locked(self, bucket: str, record: S3Record, now: datetime) -> bool | Missing:
        # GetObjectRetention is not implemented everywhere (moto answers 500); HEAD carries the same facts
        head = self._lookup(self.client.head_object, **address(bucket, record))
        if head is None:
            return Missing.GONE
        until = head.get("ObjectLockRetainUntilDate")
        return head.get("ObjectLockLegalHoldStatus") == "ON" or (until is not None and until > now)

    def _rejudged(self, selection: Selection, records: list[S3Record], cursor: ListingCursor, locked: bool
                  ) -> list[tuple[S3Record, str]]:
        """Records the count matched, judged again where something may have changed since; the gone left out."""
        age = selection.age if selection.erasure is None else None  # an erasure names records whatever their age
        source = age.field.partition(":")[0] if age else None  # LastModified, metadata or tag
        unchanged: list[S3Record] = []
        again: list[S3Record] = []
        for record in records:
            if age is None or record.version_id not in (None, "null"):
                unchanged.append(record)  # judged by key alone, or a version: nothing the verdict read can change
                continue
            fresh = cursor.get(record.key) if record.version_id is None else self._head_record(selection.target,
                                                                                                  record)
            if fresh is None:
                continue  # gone since the count: nothing to delete, nothing to report
            if (fresh.last_modified == record.last_modified and fresh.etag == record.etag
                    and (record.settled or source != "metadata")):
                unchanged.append(record)
            else:
                again.append(fresh)  # rewritten (or too recent to tell): judged as the object it is now
        if source == "tag":
            again, unchanged = again + unchanged, []  # a tag changes without a new version or LastModified
        judged = self._judge(selection, again, locked) if again else []
        kept = [(record, "matched") for record in unchanged]
        return judged + (self._apply_locks(selection.target, selection, kept) if locked and kept else kept)
