"""The connector extension point: a small protocol, found through the `retention.connectors` entry points."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

from retention.errors import ConfigError
from retention.model import Action, Batch, Counts, OptionValue, Selection, Shard

ENTRY_POINT_GROUP = "retention.connectors"


@dataclass(frozen=True)
class Option:
    """One key a connector accepts in its `[connectors.NAME]` table."""

    name: str
    kind: type = str
    required: bool = False
    default: OptionValue = None
    help: str = ""


@runtime_checkable
class Connector(Protocol):
    """A store that can count and change the records a `Selection` describes, in batches, server-side."""

    type_name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]]
    target_key: ClassVar[str]  # the rule key that names a target: "table", "collection" or "bucket"
    transforms: ClassVar[frozenset[str]]  # transform kinds this store can apply
    description: ClassVar[str]
    actions: ClassVar[frozenset[str]]  # delete, anonymize, deidentify: what this store can do to a record
    actions_note: ClassVar[str]  # why an action is missing, for the config error
    rule_options: ClassVar[tuple[Option, ...]]  # extra rule keys for the target, e.g. S3's prefix
    default_age_field: ClassVar[str | None]  # the age field when a rule names none (S3: LastModified)

    def close(self) -> None: ...

    def check(self, selection: Selection, action: Action) -> list[str]:
        """Problems that would stop the rule: missing target or field, unusable type. Empty when fine."""
        ...

    def count(self, selection: Selection) -> Counts: ...

    def held_ids(self, selection: Selection, batch_size: int, id_key: bytes) -> Iterator[tuple[str, ...]]:
        """Keyed hashes (`transforms.pseudonym(id_key, key)`) of the records legal holds keep, in chunks."""
        ...

    def statement(self, selection: Selection, action: Action) -> str:
        """The statement `apply` runs per batch, for `plan` to show and tests to read."""
        ...

    def apply(self, selection: Selection, action: Action, *, batch_size: int, limit: int,
              id_key: bytes | None, should_stop: Callable[..., bool] = ...) -> Iterator[Batch]:
        """Change at most `limit` selected records, one committed batch at a time, re-checking the predicate.

        With `id_key`, each Batch also names its records by keyed hash. `should_stop()` is asked before each new
        batch starts, and only while records are left to change (the run may wait in it, for lagging replicas);
        once it is true no new batch starts, and batches already under way finish and are yielded. A store that
        starts a batch before it has yielded the one before may ask `should_stop(wait=False)`, which never waits:
        true means "not now" (a stop, or replicas to wait for), and it must then yield first and ask again.
        """
        ...


# -- capabilities: optional abilities a connector type declares by having the methods; checked at config load ----


@runtime_checkable
class ReplicaLag(Protocol):
    """A store with replicas that can tell how far behind the slowest one is, so a run can wait for it."""

    def replica_lag(self) -> float | None:
        """Seconds the slowest replica is behind this run's writes; None when there is none to ask."""
        ...


@runtime_checkable
class Sharding(Protocol):
    """A store that can split a rule's records into parts that never overlap, to run side by side."""

    def shards(self, selection: Selection, parts: int) -> list[Shard]:
        """At most `parts` shards that together cover every record of the selection (one or none: do not split).

        Each shard's records are exactly those `Shard.holds` admits by the value of `Shard.field`, and the store's
        count and apply honour `selection.shard`.
        """
        ...


@runtime_checkable
class Backlog(Protocol):
    """A store that can count what a rule left (its matched records, and the oldest of them) more cheaply than a whole
    count of every class and the total."""

    def backlog(self, selection: Selection) -> tuple[int, datetime | None]:
        """How many records the selection matches now, and the oldest of them by age (`Counts.oldest`)."""
        ...


@runtime_checkable
class ScanAdvice(Protocol):
    """A store that can tell, for `check`, when a rule's statements would have to read a whole target."""

    def scan_warnings(self, selection: Selection) -> list[str]:
        """Why each run would read the whole target (no index on the age field, say); empty when all is well."""
        ...


class Deletes(StrEnum):
    """What a native expiry removes."""

    DOCUMENTS = "documents"
    OBJECTS = "objects"  # current objects (on a bucket with versioning suspended, the `null` version for good)
    NONCURRENT = "noncurrent versions"
    NOTHING = "nothing"  # S3 Expiration on a versioned bucket: a delete marker hides the object, its data stays


@dataclass(frozen=True)
class NativeRule:
    """An expiry the store applies by itself, ignoring the rules and their holds: a TTL index, a lifecycle rule."""

    kind: str  # "TTL index" | "lifecycle rule"
    name: str  # the index name or lifecycle rule ID as the store gave it: untrusted text, shown repr'd
    deletes: Deletes
    after: timedelta | None  # this long after `field` (the earliest it can delete); None: from `on` on
    field: str  # what it ages by: a TTL index's field; S3 lifecycle: LastModified (the object's creation)
    on: datetime | None = None  # S3 Expiration.Date: everything it covers from this date on, whatever its age
    narrowed: tuple[str, ...] = ()  # what limits it to part of the target (partial filter, tags): it may apply


@runtime_checkable
class NativeExpiry(Protocol):
    """A store that deletes by itself on a schedule of its own (TTL indexes, lifecycle rules), which `check` compares
    with the rules."""

    def native_expiry(self, selection: Selection) -> list[NativeRule]:
        """Every enabled native expiry that can remove records of the selection's target (and S3 prefix).

        Raises a RetentionError when the store will not tell (no right to read its configuration)."""
        ...


@runtime_checkable
class RowTables(Protocol):
    """A store that holds small tables of rows: the client registry, legal holds, erasure requests."""

    def read_rows(self, table: str, fields: Sequence[str]) -> Iterator[Mapping[str, Any]]:
        """Every row of a small table of this store, as `fields` -> value."""
        ...

    def update_row(self, table: str, key_field: str, key: Any, values: Mapping[str, Any]) -> None:
        """Set `values` on the row whose `key_field` is `key` (an erasure request's status and result)."""
        ...


@runtime_checkable
class HostLock(Protocol):
    """A store that can hold a lock for the whole run across hosts, released when its holder dies."""

    def advisory_lock(self, key: int) -> AbstractContextManager[None]: ...


@runtime_checkable
class ObjectStore(Protocol):
    """A store the WORM copy of the audit log can be written to (an S3 client, with Object Lock)."""

    def object_client(self) -> ObjectClient: ...


class ObjectClient(Protocol):
    """The S3 calls the WORM copy makes (boto3's client has them)."""

    def get_paginator(self, operation_name: str) -> Any: ...

    def get_object(self, **request: Any) -> Any: ...

    def put_object(self, **request: Any) -> Any: ...


def capable(kind: object, capability: type) -> bool:
    """Whether a connector type (a class) has a capability: every method the protocol names."""
    return isinstance(kind, type) and issubclass(kind, capability)


class ConnectorType(Protocol):
    type_name: str
    options: tuple[Option, ...]
    target_key: str
    transforms: frozenset[str]
    description: str
    actions: frozenset[str]
    actions_note: str
    rule_options: tuple[Option, ...]
    default_age_field: str | None

    def __call__(self, name: str, options: Mapping[str, OptionValue]) -> Connector: ...


class ConnectorDefaults:
    """Class-level defaults a connector may inherit: every action, no extra rule keys, no default age field."""

    actions: ClassVar[frozenset[str]] = frozenset({"delete", "anonymize", "deidentify"})
    actions_note: ClassVar[str] = ""
    rule_options: ClassVar[tuple[Option, ...]] = ()
    default_age_field: ClassVar[str | None] = None


@cache  # scanning installed distributions is slow, and they do not change while we run
def connector_types() -> dict[str, ConnectorType]:
    """Every installed connector type by its `type` name, built-ins included."""
    found: dict[str, ConnectorType] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry.load()
    return found


@cache
def connector_type(name: str, *, source: str = "", key: str = "") -> ConnectorType:
    """One connector type; only its module is imported (a PostgreSQL job never loads boto3 or pymongo)."""
    entries = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in entries:
        raise ConfigError(f"unknown connector type {name!r}; known types: {', '.join(sorted(entries))}",
                          source=source, key=key)
    loaded: ConnectorType = entries[name].load()
    return loaded
