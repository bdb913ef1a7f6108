"""S3's own expiry: the bucket's lifecycle rules that can remove objects under a rule's prefix.

A lifecycle counts days from an object's creation (its LastModified; a noncurrent version's from when it became
noncurrent, never before its own LastModified) and rounds up to the next midnight UTC, so `Days` is the earliest it
deletes. Object Lock keeps locked versions from it; this job's legal holds are not Object Lock, and it ignores them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from retention.connector import Deletes, NativeRule

KIND = "lifecycle rule"


def lifecycle_rules(rules: Sequence[Mapping[str, Any]], prefix: str, versioning: str | None) -> list[NativeRule]:
    """The enabled expirations of `rules` (GetBucketLifecycleConfiguration's) whose filter overlaps `prefix`.

    `versioning` is the bucket's status: None (never versioned), "Enabled" or "Suspended". Transitions,
    incomplete uploads and the sweeping of expired delete markers remove no record's data and are left out.
    """
    found: list[NativeRule] = []
    for rule in rules:
        if rule.get("Status") != "Enabled":
            continue
        scope = _scope(rule, prefix)
        if scope is None:
            continue
        name = str(rule.get("ID", ""))
        expiration = rule.get("Expiration") or {}
        if "Days" in expiration or "Date" in expiration:
            # versioning on: the current version gets a delete marker, its data stays; suspended, the `null`
            # version (the current one written since) goes for good
            deletes = Deletes.NOTHING if versioning == "Enabled" else Deletes.OBJECTS
            after = timedelta(days=_days(expiration["Days"])) if "Days" in expiration else None
            found.append(NativeRule(KIND, name, deletes, after, "LastModified", on=_date(expiration.get("Date")),
                                    narrowed=scope))
        noncurrent = rule.get("NoncurrentVersionExpiration") or {}
        if "NoncurrentDays" in noncurrent and versioning is not None:  # never versioned: no noncurrent version
            kept = noncurrent.get("NewerNoncurrentVersions")
            narrowed = (*scope, f"beyond the newest {kept} noncurrent versions of a key") if kept else scope
            found.append(NativeRule(KIND, name, Deletes.NONCURRENT, timedelta(days=_days(noncurrent["NoncurrentDays"])),
                                    "LastModified", narrowed=narrowed))
    return found


def _scope(rule: Mapping[str, Any], prefix: str) -> tuple[str, ...] | None:
    """What narrows the lifecycle rule within the rule's prefix (empty: all of it); None when the two never meet.

    Tags and sizes cannot be told from the prefix alone: such a rule may apply, and is judged as if it did."""
    terms = rule.get("Filter")
    if terms is None:  # the older form: a Prefix beside the rule's actions
        terms = {"Prefix": rule.get("Prefix", "")}
    terms = terms.get("And") or terms  # an empty Filter covers the whole bucket
    theirs = str(terms.get("Prefix") or "")
    if not (prefix.startswith(theirs) or theirs.startswith(prefix)):
        return None
    narrower = (f"keys under {theirs!r}",) if not prefix.startswith(theirs) else ()
    return (*narrower, *_narrowing(terms))


def _narrowing(terms: Mapping[str, Any]) -> Iterator[str]:
    tags = list(terms.get("Tags") or ([terms["Tag"]] if terms.get("Tag") else []))
    if tags:
        yield f"objects tagged {', '.join(repr(str(tag.get('Key', ''))) for tag in tags)}"
    if "ObjectSizeGreaterThan" in terms:
        yield f"objects over {terms['ObjectSizeGreaterThan']} bytes"
    if "ObjectSizeLessThan" in terms:
        yield f"objects under {terms['ObjectSizeLessThan']} bytes"


def _days(value: object) -> int:
    """A lifecycle's day count; anything odd is taken as 0, the earliest it could mean."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000 else 0


def _date(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return None
