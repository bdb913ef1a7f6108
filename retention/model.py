"""What a rule asks of a store, in store-neutral terms that each connector compiles to its own language."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from retention.timeutil import Duration

OptionValue = str | int | float | bool | None  # what a connector or rule option can be set to


@dataclass(frozen=True)
class Transform:
    """One field's fate under anonymize/deidentify: `kind` is null, redact, truncate_ip, mask, …"""

    field: str
    kind: str
    arg: str | int | None = None


@dataclass(frozen=True)
class ClientRegistry:
    """Where client accounts live and which statuses mean active or ended."""

    connector: str
    table: str
    id_field: str
    status_field: str
    ended_at_field: str
    active_statuses: tuple[str, ...]
    ended_statuses: tuple[str, ...]
    retention_field: str | None = None  # a client's own grace (a duration, or days), overriding the rule's

    @property
    def fields(self) -> list[str]:
        """The registry columns a verdict reads."""
        return [self.id_field, self.status_field, self.ended_at_field,
                *([self.retention_field] if self.retention_field else [])]


@dataclass(frozen=True)
class AgeCondition:
    """Expired when `field` holds a timestamp earlier than `cutoff`."""

    field: str
    cutoff: datetime


@dataclass(frozen=True)
class ClientStates:
    """Client ids whose records have expired, and ids in a usable state (active, or ended with a date)."""

    expired: frozenset[str]  # canonical ids (retention.ids)
    known: frozenset[str]


@dataclass(frozen=True)
class ClientCondition:
    """Expired when the owning client (by `field`) has ended before `ended_before`.

    `states` is the registry's verdict read by the run when the registry lives in another store; a store that
    holds the registry itself reads it at the moment of change instead.
    """

    field: str
    registry: ClientRegistry
    ended_before: datetime  # by the rule's grace
    states: ClientStates | None = None
    now: datetime | None = None  # for a client's own grace (registry.retention_field): its own ended_before


@dataclass(frozen=True)
class HeldScope:
    """Which expired records legal holds keep: all of them, or those of some clients."""

    everything: bool = False
    client_field: str | None = None
    client_ids: tuple[str, ...] = ()  # canonical ids (retention.ids)
    holds: tuple[str, ...] = ()
    problem: str | None = None  # a hold in scope that this rule cannot apply: the rule must not run
    clients_of: tuple[tuple[str, tuple[str, ...]], ...] = ()  # each hold's canonical client ids (none: all)

    def holding(self, client_id: str | None) -> tuple[str, ...]:
        """The holds that keep records of this client (all of them when no client is named)."""
        return tuple(name for name, clients in self.clients_of
                     if client_id is None or not clients or client_id in clients)

    @property
    def active(self) -> bool:
        return self.everything or bool(self.client_ids)


@dataclass(frozen=True)
class Erasure:
    """The records an erasure request names, whatever their age: one client's, or one end user's of a client."""

    request_id: str
    client_field: str
    client_id: str  # canonical ids (retention.ids)
    subject_field: str | None = None
    subject_id: str | None = None


@dataclass(frozen=True)
class Shard:
    """Part `index` of `of` of a rule's records, parts that never overlap: those whose `field` lies in [low, high),
    or on S3 those in some of the folders under the rule's prefix (and, for one shard, the keys beside them).

    The bounds are values of the store's own key (a column, `_id`, an S3 key): they never go into the audit log,
    which names a shard by its label alone.
    """

    index: int  # 1 ... of
    of: int
    field: str
    low: Any = None  # None: from the first record
    high: Any = None  # None: to the last
    folders: tuple[str, ...] = ()  # S3: these key prefixes, each listed on its own
    loose: bool = False  # S3: also the keys directly under the rule's prefix, in no folder

    @property
    def label(self) -> str:
        return f"{self.index}/{self.of}"

    def holds(self, value: Any) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value < self.high)


def shards_between(field: str, cuts: Sequence[Any]) -> list[Shard]:
    """The shards sorted, distinct cut values make: before the first cut, between each two, from the last on."""
    bounds = [None, *cuts, None]
    return [Shard(index + 1, len(bounds) - 1, field, low, high)
            for index, (low, high) in enumerate(itertools.pairwise(bounds))]


@dataclass(frozen=True)
class Selection:
    """The records one rule is about, evaluated by the store itself."""

    target: str
    key: tuple[str, ...] | None  # the fields that name a record; None: the store's own (primary key, `_id`)
    age: AgeCondition | None
    client: ClientCondition | None
    held: HeldScope = field(default_factory=HeldScope)
    marker: str | None = None  # records with a marker set were already processed
    scope: dict[str, OptionValue] = field(default_factory=dict)  # connector-specific target keys (S3: prefix)
    now: datetime | None = None  # the evaluation instant, for stores that judge locks themselves (S3)
    erasure: Erasure | None = None  # set: the records this request names are "expired", age and client aside
    shard: Shard | None = None  # set: only the records of this part (the rule's thresholds were judged whole)


@dataclass(frozen=True)
class Action:
    """What happens to a selected record."""

    kind: str  # delete | anonymize | deidentify
    marker: str | None = None
    transforms: tuple[Transform, ...] = ()
    marked_at: datetime | None = None
    hmac_key: bytes | None = None  # derived from secrets.pseudonym_key, only when a transform needs it


@dataclass(frozen=True)
class Counts:
    """How many records of a target fall in each class right now."""

    total: int
    matched: int
    held: int
    unknown_age: int
    oldest: datetime | None = None  # the age field's earliest value among matched records expired by age


@dataclass(frozen=True)
class Batch:
    """One committed batch: how many records changed, and their keyed hashes when asked for."""

    count: int
    ids: tuple[str, ...] = ()
    blocked: int = 0  # records the store refused to change, isolated (a foreign key, a trigger, a check)
    refusal: str | None = None  # what refused them, naming constraints and tables, never values
    unsettled: int = 0  # records of refused batches left untried this run (the isolation budget was spent)
    partition: str | None = None  # the batch was a whole partition, dropped (PostgreSQL, drop_partitions)


__all__ = ["Action", "AgeCondition", "Batch", "ClientCondition", "ClientRegistry", "ClientStates", "Counts", "Duration",
           "Erasure",
           "HeldScope", "Selection", "Transform"]
