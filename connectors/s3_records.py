"""What names an S3 record, and what can be read from its key and metadata: client ids by pattern, ages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from retention.timeutil import parse_instant


@dataclass(frozen=True)
class S3Record:
    """One object, or one version of an object on a versioned bucket."""

    key: str
    version_id: str | None
    last_modified: datetime

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
