"""What names an S3 record, and what can be read from its key and metadata: client ids by pattern, ages.

Also what carries records from the count to the delete: the spool (bounded in memory, the rest in an anonymous
temporary file) and the cursor that looks them up again in a fresh listing.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

from retention.errors import ConnectorError
from retention.timeutil import parse_instant


@dataclass(frozen=True, slots=True)
class S3Record:
    """One object, or one version of an object on a versioned bucket, as a listing showed it."""

    key: str
    version_id: str | None
    last_modified: datetime
    etag: str | None = None
    settled: bool = False  # listed well after its last write: a rewrite since would show a later LastModified

    @property
    def identity(self) -> str:
        """What names the record in the audit sidecar (by keyed hash): the key, and its version if any."""
        return self.key if self.version_id is None else f"{self.key}?versionId={self.version_id}"


def address(bucket: str, record: S3Record) -> dict[str, str]:
    return {"Bucket": bucket, "Key": record.key, **({"VersionId": record.version_id} if record.version_id else {})}


def parse_age(value: str | None) -> datetime | None:
    """RFC 3339 or epoch seconds; anything else (or nothing) is an unknown age."""
    if value is None:
        return None
    text = value.strip()
    try:
        return datetime.fromtimestamp(float(text), UTC) if re.fullmatch(r"\d+(\.\d+)?", text) else parse_instant(text)
    except (ValueError, OverflowError, OSError):
        return None


def client_pattern(client_key: str, part: str = "client_id") -> re.Pattern[str]:
    """`clients/{client_id}/` as a regular expression anchored at the start of the key."""
    pattern = re.escape(client_key)
    for name in ("client_id", "subject_id"):
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>[^/]+)" if name == part else r"[^/]+")
    return re.compile(pattern)


def key_part(key_pattern: str | None, part: str, key: str) -> str | None:
    if not key_pattern:
        return None
    match = client_pattern(key_pattern, part).match(key)
    return match.group(part) if match and part in match.groupdict() else None


@dataclass(eq=False)
class RecordSpool:
    """Judged records in the order they were appended: the first `bound` in memory, the rest in a temporary file.

    The file is anonymous (`tempfile.TemporaryFile`: no name on disk, so nothing is left behind even if the process
    dies) and holds one JSON array per line; JSON escapes every control character, so a key with newlines is still
    one line. Appending ends once the spool is read.
    """

    bound: int
    memory: list[tuple[str, S3Record]] = field(default_factory=list)
    spilled: int = 0
    _file: IO[bytes] | None = None
    _sealed: bool = False

    def append(self, kind: str, record: S3Record) -> None:
        assert not self._sealed, "a spool is read only once it is complete"
        if len(self.memory) < self.bound:
            self.memory.append((kind, record))
            return
        if self._file is None:
            self._file = self._spill()
        self._file.write(json.dumps([kind, record.key, record.version_id, record.last_modified.isoformat(),
                                     record.etag, record.settled], separators=(",", ":")).encode("ascii") + b"\n")
        self.spilled += 1

    def _spill(self) -> IO[bytes]:
        return tempfile.TemporaryFile(prefix="retention-s3-")

    def __iter__(self) -> Iterator[tuple[str, S3Record]]:
        """Every record, in order (one reader at a time: the file has one position)."""
        self._sealed = True
        yield from list(self.memory)
        if self._file is None:
            return
        self._file.flush()
        self._file.seek(0)
        for _ in range(self.spilled):
            kind, key, version_id, last_modified, etag, settled = json.loads(self._file.readline())
            yield kind, S3Record(key, version_id, datetime.fromisoformat(last_modified), etag, settled)

    def close(self) -> None:
        self.memory, self.spilled, self._sealed = [], 0, True
        if self._file is not None:
            self._file.close()
            self._file = None


class ListingCursor:
    """Looks keys up, in ascending order, in a fresh listing read forward from just before each key asked for.

    `fetch(start_after)` lists the keys after `start_after` (all of them when None): a page of records in key order,
    and whether more follow. A page covers every key between its start and its last key (or the end, when none
    follow), so a key in that span that is not on the page is gone; runs of keys nobody asks about are jumped over.
    """

    def __init__(self, fetch: Callable[[str | None], tuple[list[S3Record], bool]]) -> None:
        self._fetch = fetch
        self._page: dict[str, S3Record] = {}
        self._span: tuple[str | None, str | None] | None = None  # (start after, last key; None: to the end)

    def get(self, key: str) -> S3Record | None:
        while not self._covers(key):
            start: str | None = key[:-1] or None  # a proper prefix sorts just before the key
            if self._span is not None and self._span[1] is not None and self._span[1] < key:
                start = max(start or "", self._span[1])  # never list again what the last page showed
            records, more = self._fetch(start)
            if more and not records:
                raise ConnectorError("an S3 listing page was empty but said more follow")
            self._page = {record.key: record for record in records}
            self._span = (start, records[-1].key if more else None)
        return self._page.get(key)

    def _covers(self, key: str) -> bool:
        if self._span is None:
            return False
        start, last = self._span
        return (start is None or key > start) and (last is None or key <= last)
