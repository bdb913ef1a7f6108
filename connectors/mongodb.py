"""MongoDB connector: server-side filters, batched delete_many / update_many with the predicate re-checked."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import pymongo
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import ConfigurationError, ConnectionFailure, InvalidURI, OperationFailure, PyMongoError

from connectors.mongodb_filters import Filter, all_of, class_filters
from connectors.mongodb_updates import CLIENT_SIDE, client_side_values, get_path, pipeline
from retention.clients import judge
from retention.connector import ConnectorDefaults, Option
from retention.errors import ConfigError, ConnectorError, TargetMissing
from retention.ids import canonical_ids, mongo_values
from retention.model import Action, Batch, ClientRegistry, ClientStates, Counts, OptionValue, Selection
from retention.retry import retrying
from retention.transforms import KeyedHasher, record_text


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

    # -- registry ---------------------------------------------------------------------------------------------

    def _client_states(self, selection: Selection, client_ids: Iterable[str] | None = None) -> ClientStates | None:
        """The registry's verdict on clients (all of them, or just these canonical ids), read now."""
        if selection.client is None:
            return None
        if selection.client.states is not None:  # the registry lives in another store; the run read it
            return selection.client.states
        registry: ClientRegistry = selection.client.registry
        query: Filter = {registry.id_field: {"$in": mongo_values(client_ids)}} if client_ids is not None else {}
        # "_id" first, so an id_field of "_id" switches it back on
        projection = {"_id": 0, registry.id_field: 1, registry.status_field: 1, registry.ended_at_field: 1}
        rows = self._collection(registry.table).find(query, projection)
        return judge(rows, registry, selection.client.ended_before)

    # -- counting and changing -------------------------------------------------------------------------------

    def count(self, selection: Selection) -> Counts:
        collection = self._collection(selection.target)
        filters = class_filters(selection, self._client_states(selection))
        try:
            return Counts(total=collection.count_documents({}),
                          **{name: collection.count_documents(f) for name, f in filters.items()})
        except PyMongoError as exc:
            raise ConnectorError(f"count failed: {_summary(exc)}") from None

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
        matched = {"$and": [{"_id": {"$in": "<batch _ids>"}}, filters["matched"]]}
        if action.kind == "delete":
            return f"db.{selection.target}.deleteMany({matched!r})"
        return f"db.{selection.target}.updateMany({matched!r}, {pipeline(action, {})!r})"

    def apply(self, selection: Selection, action: Action, *, batch_size: int, limit: int,
              id_key: bytes | None, should_stop: Callable[[], bool] = lambda: False) -> Iterator[Batch]:
        key = selection.key or ("_id",)
        collection = self._collection(selection.target)
        hasher = KeyedHasher(id_key) if id_key else None
        remaining = limit
        # candidates are picked with the registry as read once here; each change re-reads its own clients
        try:
            candidates = class_filters(selection, self._client_states(selection))["matched"]
        except PyMongoError as exc:
            raise ConnectorError(f"cannot read the client registry: {_summary(exc)}") from None
        while remaining > 0 and not should_stop():
            try:
                size = min(batch_size, remaining)
                batch = retrying(lambda: self._apply_batch(collection, selection, action, key, size,  # noqa: B023
                                                           candidates),
                                 lambda e: isinstance(e, ConnectionFailure), what=f"batch on {selection.target}")
            except PyMongoError as exc:
                raise ConnectorError(f"batch failed: {_summary(exc)}") from None
            if not batch:
                return
            remaining -= len(batch)
            yield Batch(len(batch), tuple(map(hasher, batch)) if hasher else ())

    def _apply_batch(self, collection: Collection[dict[str, Any]], selection: Selection, action: Action,
                     key: tuple[str, ...], size: int, matching: Filter) -> list[str]:
        """Pick up to `size` documents `matching`, re-judge their clients now, change those still matching.

        Documents are addressed by `_id`, never by the rule's key: a key value read from a document is untrusted
        (a stored regex inside `$in` is a pattern), while MongoDB allows no regex, array or undefined `_id`.
        Returns the key texts (transforms.record_text) of the documents really changed, to name them in the audit.
        """
        fields = {t.field: 1 for t in action.transforms if t.kind in CLIENT_SIDE}
        client_field = selection.client.field if selection.client else None
        projection = {"_id": 1, **dict.fromkeys(key, 1), **fields, **({client_field: 1} if client_field else {})}
        candidates = list(collection.find(matching, projection).limit(size))
        if not candidates:
            return []
        named = {_identity(d["_id"]): record_text([get_path(d, f) for f in key]) for d in candidates}
        ids = [d["_id"] for d in candidates]
        clients = None
        if client_field:  # the registry read again, just before the change, for these clients only
            clients = self._client_states(selection, canonical_ids(get_path(d, client_field) for d in candidates))
        still_matching = class_filters(selection, clients)["matched"]
        chosen = all_of({"_id": {"$in": ids}}, still_matching)  # `_id` first: servers look those up by index
        if action.kind == "delete":
            changed = collection.delete_many(chosen).deleted_count
            if changed == len(ids):
                return list(named.values())
            left = {_identity(d["_id"]) for d in collection.find({"_id": {"$in": ids}}, {"_id": 1})}
            return [value for identity, value in named.items() if identity not in left]
        if fields:
            requests = [UpdateOne(all_of({"_id": d["_id"]}, still_matching),
                                  pipeline(action, client_side_values(action, d))) for d in candidates]
            changed = collection.bulk_write(requests, ordered=False).modified_count
        else:
            changed = collection.update_many(chosen, pipeline(action, {})).modified_count
        if changed == len(ids):
            return list(named.values())
        assert action.marker is not None
        marked = collection.find({"_id": {"$in": ids}, action.marker: action.marked_at}, {"_id": 1})
        return [named[_identity(d["_id"])] for d in marked]

def _identity(value: Any) -> str:
    """A hashable stand-in for an `_id` of any BSON type (documents included), to match documents up."""
    return repr(value)


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
