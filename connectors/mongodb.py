"""MongoDB connector: server-side filters, batches written over ranges with the predicate re-checked."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar

import pymongo
import structlog
from bson import ObjectId
from pymongo.collection import Collection
from pymongo.errors import ConfigurationError, ConnectionFailure, InvalidURI, OperationFailure, PyMongoError

from retention.clients import judge
from retention.connector import ConnectorDefaults, NativeRule, Option
from retention.errors import ConfigError, ConnectorError, TargetMissing
from retention.ids import mongo_values
from retention.model import (
    Action,
    Batch,
    ClientRegistry,
    ClientStates,
    Counts,
    OptionValue,
    Selection,
    Shard,
    shards_between,
)
from retention.retry import retrying
from retention.timeutil import stored_instant
from retention.transforms import KeyedHasher, record_text

from .mongodb_batches import Batches
from .mongodb_expiry import collection_ttl, ttl_indexes
from .mongodb_filters import NOTHING, Filter, all_of, class_filters
from .mongodb_lag import majority_commit_lag
from .mongodb_updates import get_path, pipeline

SHARDABLE_IDS = (int, str, ObjectId)  # `_id` types a range of one type covers (never bool: True is no id)
LARGE = 100_000  # documents: from here on the total is the server's estimate, and each class its own count

log = structlog.get_logger("retention")


class MongoConnector(ConnectorDefaults):
    """MongoDB collections; only BSON dates count as timestamps."""

    type_name: ClassVar[str] = "mongodb"
    description: ClassVar[str] = "MongoDB (pymongo); filters and updates run server-side"
    options: ClassVar[tuple[Option, ...]] = (
        Option("url", required=True, help="a MongoDB URI, e.g. mongodb://retention@db:27017/"),
        Option("database", required=True, help="the database that holds the collections"),
    )
    target_key: ClassVar[str] = "collection"
    transforms: ClassVar[frozenset[str]] = frozenset(
        {"null", "redact", "truncate_ip", "generalize_date", "mask", "hmac", "drop", "keep"})

    def __init__(self, name: str, options: Mapping[str, OptionValue]) -> None:
        self.name = name
        try:
            url = str(options["url"])
            # a timeout in the URI wins; otherwise ten seconds, not pymongo's thirty, before a rule gives up
            timeout: dict[str, Any] = {} if "serverselectiontimeoutms" in url.lower() else {
                "serverSelectionTimeoutMS": 10_000}
            self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                url, tz_aware=True, connect=False, **timeout)
        except (ConfigurationError, InvalidURI):
            raise ConfigError("is not a valid MongoDB URI", key=f"connectors.{name}.url") from None
        self.database = self.client[str(options["database"])]

    def close(self) -> None:
        self.client.close()

    def replica_lag(self) -> float | None:
        """Seconds the replica set's majority commit point trails the last write (`hello`); None standalone."""
        try:
            return majority_commit_lag(self.client.admin.command("hello"))
        except PyMongoError as exc:
            log.warning("replica_lag_unknown", error=_summary(exc))
            return None

    # -- targets ---------------------------------------------------------------------------------------------

    def _collection(self, name: str) -> Collection[dict[str, Any]]:
        try:
            names = self.database.list_collection_names(filter={"name": name})
        except PyMongoError as exc:
            raise ConnectorError(f"cannot reach MongoDB: {_summary(exc)}") from None
        if not names:
            raise TargetMissing(f"collection {name} does not exist in database {self.database.name}")
        return self.database[name]

    def read_rows(self, table: str, fields: Sequence[str]) -> Iterator[Mapping[str, Any]]:
        # "_id" first, so a field "_id" switches it back on
        projection = {"_id": 0, **dict.fromkeys(fields, 1)}
        for document in self._collection(table).find({}, projection):
            yield {field: get_path(document, field) for field in fields}

    def update_row(self, table: str, key_field: str, key: Any, values: Mapping[str, Any]) -> None:
        if isinstance(key, Mapping | list):  # a document as the key would be read as query operators
            raise ConnectorError(f"update of {table} refused: its {key_field} is not a scalar id")
        try:
            self._collection(table).update_one({key_field: key}, {"$set": dict(values)})
        except PyMongoError as exc:
            raise ConnectorError(f"update of {table} failed: {_summary(exc)}") from None

    def check(self, selection: Selection, action: Action) -> list[str]:
        fields = [*(selection.key or ()), selection.marker, selection.age.field if selection.age else None,
                  selection.client.field if selection.client else None, *(t.field for t in action.transforms),
                  *((selection.erasure.client_field, selection.erasure.subject_field) if selection.erasure else ())]
        hostile = [f for f in fields if f and (f.startswith("$") or ".$" in f or "\0" in f)]
        if hostile:  # a field name that MongoDB would read as an operator
            return [f"field names may not start with $ or contain .$ or NUL: {', '.join(map(repr, hostile))}"]
        try:
            self._collection(selection.target)
            if selection.client and selection.client.registry.connector == self.name:
                self._collection(selection.client.registry.table)
        except TargetMissing as exc:
            return [str(exc)]
        return []  # documents have no schema to check fields against; odd values are unknown_age

    def native_expiry(self, selection: Selection) -> list[NativeRule]:
        """The TTL indexes of the rule's collection, and its own expiry (time-series, clustered): MongoDB deletes by
        them whatever the rules and holds say."""
        collection = self._collection(selection.target)
        try:
            return ttl_indexes(collection.index_information()) + collection_ttl(collection.options())
        except PyMongoError as exc:
            raise ConnectorError(f"cannot list the indexes of {collection.name}: {_summary(exc)}") from None

    # -- registry ---------------------------------------------------------------------------------------------

    def _client_states(self, selection: Selection, client_ids: Iterable[str] | None = None) -> ClientStates | None:
        """The registry's verdict on clients (all of them, or just these canonical ids), read now."""
        if selection.client is None:
            return None
        if selection.client.registry.connector != self.name:  # the registry lives in another store; the run read it
            return selection.client.states
        registry: ClientRegistry = selection.client.registry
        query: Filter = {registry.id_field: {"$in": mongo_values(client_ids)}} if client_ids is not None else {}
        # "_id" first, so an id_field of "_id" switches it back on
        projection = {"_id": 0, **dict.fromkeys(registry.fields, 1)}
        rows = self._collection(registry.table).find(query, projection)
        return judge(rows, selection.client)

    # -- counting and changing -------------------------------------------------------------------------------

    def count(self, selection: Selection) -> Counts:
        """Each class's count. Below LARGE documents, one pass counts them all and the total exactly; above, the
        total is the server's estimate (from its metadata, no scan; never less than the classes it holds) and each
        class is one count whose filter leads with the age field's range, for its index to serve."""
        collection = self._collection(selection.target)
        filters = class_filters(selection, self._client_states(selection))
        try:
            estimate = collection.estimated_document_count()
            if estimate < LARGE:
                counts = _count_in_one_pass(collection, filters)
            else:
                classes = {name: 0 if f == NOTHING else collection.count_documents(f) for name, f in filters.items()}
                counts = Counts(max(estimate, sum(classes.values())), classes["matched"], classes["held"],
                                classes["unknown_age"])
            return replace(counts, oldest=_oldest(collection, selection, filters["matched"])) if counts.matched \
                else counts
        except PyMongoError as exc:
            raise ConnectorError(f"count failed: {_summary(exc)}") from None

    def backlog(self, selection: Selection) -> tuple[int, datetime | None]:
        """The matched documents alone (one count the age field's index serves), and the oldest of them."""
        collection = self._collection(selection.target)
        try:
            matched = class_filters(selection, self._client_states(selection))["matched"]
            if matched == NOTHING:
                return 0, None
            count = collection.count_documents(matched)
            return count, _oldest(collection, selection, matched) if count else None
        except PyMongoError as exc:
            raise ConnectorError(f"count failed: {_summary(exc)}") from None

    def shards(self, selection: Selection, parts: int) -> list[Shard]:
        """Ranges of `_id` holding about as many matching documents each. Only where every matching `_id` is a
        scalar of one type (MongoDB compares a range's bound with values of its own type alone, so a range of
        integers would never reach a string `_id`), and the bounds are such scalars: no document becomes a filter."""
        if parts < 2:
            return []
        collection = self._collection(selection.target)
        matched = class_filters(selection, self._client_states(selection))["matched"]
        try:
            first, last = _first_id(collection, matched, 1), _first_id(collection, matched, -1)
            if type(first) not in SHARDABLE_IDS or type(first) is not type(last):
                return []
            total = collection.count_documents(matched)
            cuts = [_first_id(collection, matched, 1, skip=total * index // parts) for index in range(1, parts)]
        except PyMongoError as exc:
            raise ConnectorError(f"sharding failed: {_summary(exc)}") from None
        return shards_between("_id", sorted({cut for cut in cuts if type(cut) is type(first)}))

    def held_ids(self, selection: Selection, batch_size: int, id_key: bytes) -> Iterator[tuple[str, ...]]:
        key = selection.key or ("_id",)
        collection = self._collection(selection.target)
        held = class_filters(selection, self._client_states(selection))["held"]
        hasher = KeyedHasher(id_key)
        cursor = collection.find(held, dict.fromkeys(key, 1), batch_size=batch_size).sort([(f, 1) for f in key])
        chunk: list[str] = []
        for document in cursor:
            chunk.append(hasher(record_text([get_path(document, f) for f in key])))
            if len(chunk) == batch_size:
                yield tuple(chunk)
                chunk = []
        if chunk:
            yield tuple(chunk)

    def statement(self, selection: Selection, action: Action) -> str:
        filters = class_filters(selection, ClientStates(frozenset({"<expired client ids>"}),
                                                        frozenset({"<known client ids>"})))
        by_age = self._age_field(self._collection(selection.target), selection)
        field = by_age or "_id"
        what = "age" if by_age else "_id"
        batch = {field: {"$gte": f"<the batch's first {what}>", "$lte": f"<the batch's last {what}>"}}
        matched = all_of(filters["matched"], batch)
        if action.kind == "delete":
            return f"db.{selection.target}.deleteMany({matched!r})"
        return f"db.{selection.target}.updateMany({matched!r}, {pipeline(action, {})!r})"

    def apply(self, selection: Selection, action: Action, *, batch_size: int, limit: int,
              id_key: bytes | None, should_stop: Callable[..., bool] = lambda wait=True: False) -> Iterator[Batch]:
        """Batch by batch: the next candidates in `_id` order (or the indexed age field's), then one write over
        their range with the whole predicate (see `retention.connectors.mongodb_batches`). Each batch reads the registry
        again for its clients."""
        collection = self._collection(selection.target)
        hasher = KeyedHasher(id_key) if id_key else None
        remaining = limit
        # candidates are picked with the registry as read once here; each change re-reads its own clients
        try:
            candidates = class_filters(selection, self._client_states(selection), exact=False)["matched"]
        except PyMongoError as exc:
            raise ConnectorError(f"cannot read the client registry: {_summary(exc)}") from None
        if candidates == NOTHING:
            return
        batches = Batches(collection, selection, action, candidates=candidates,
                          by_age=self._age_field(collection, selection), named=hasher is not None,
                          batch_size=batch_size, clients=lambda ids: self._client_states(selection, ids))
        try:
            while remaining > 0 and not should_stop():
                size = min(batch_size, remaining)
                try:
                    batch = retrying(lambda: batches.next(size),  # noqa: B023
                                     lambda e: isinstance(e, ConnectionFailure), what=f"batch on {selection.target}")
                except PyMongoError as exc:
                    raise ConnectorError(f"batch failed: {_summary(exc)}") from None
                if batch is None:
                    return
                changed, names = batch
                if hasher:  # the audit counts the names it is given
                    changed = len(names)
                if changed:
                    remaining -= changed
                    yield Batch(changed, tuple(map(hasher, names)) if hasher else ())
        finally:
            with contextlib.suppress(PyMongoError):
                batches.close()

    def _age_field(self, collection: Collection[dict[str, Any]], selection: Selection) -> str | None:
        """The age field, when batches may be ranges of it: the rule expires by age alone and an index leads with
        that field (without one, a range of it would scan the collection; `_id` always has its index)."""
        if selection.age is None or selection.client is not None or selection.erasure is not None:
            return None
        field = selection.age.field
        try:
            indexes = collection.index_information()
        except PyMongoError as exc:
            raise ConnectorError(f"cannot list the indexes of {collection.name}: {_summary(exc)}") from None
        leading = {index["key"][0] for index in indexes.values() if index.get("key")}
        return field if (field, 1) in leading or (field, -1) in leading else None


def _count_in_one_pass(collection: Collection[dict[str, Any]], filters: dict[str, Filter]) -> Counts:
    """The total and every class, exactly, in one aggregation (one pass over the collection)."""
    facets: dict[str, Any] = {"total": [{"$count": "n"}]}
    facets.update({name: [{"$match": f}, {"$count": "n"}] for name, f in filters.items() if f != NOTHING})
    row = next(iter(collection.aggregate([{"$facet": facets}])), {})
    counted = {name: (row.get(name) or [{"n": 0}])[0]["n"] for name in ("total", *filters)}
    return Counts(**counted)


def _oldest(collection: Collection[dict[str, Any]], selection: Selection, matched: Filter) -> datetime | None:
    """The earliest date among matched documents expired by age (a date bound matches dates only): one index probe."""
    age = selection.age
    if age is None or selection.erasure is not None:
        return None
    aged = all_of(matched, {age.field: {"$lt": age.cutoff}})
    found = next(iter(collection.find(aged, {age.field: 1}).sort(age.field, 1).limit(1)), None)
    return None if found is None else stored_instant(get_path(found, age.field))


def _summary(error: PyMongoError) -> str:
    """A driver error in words that name identifiers and never a value (write errors quote the document)."""
    name = type(error).__name__
    if isinstance(error, OperationFailure):
        details = error.details or {}
        return f"{name}: {details.get('codeName') or 'error'} (code {error.code})"
    if isinstance(error, ConnectionFailure):
        lines = str(error).splitlines()  # hosts and ports
        return f"{name}: {lines[0]}" if lines else name
    return name


def _first_id(collection: Collection[dict[str, Any]], query: Filter, order: int, skip: int = 0) -> Any:
    """The `_id` of the first matching document in `_id` order (after `skip` of them); None when there is none."""
    found = next(iter(collection.find(query, {"_id": 1}).sort("_id", order).skip(skip).limit(1)), None)
    return None if found is None else found["_id"]
