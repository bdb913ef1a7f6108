"""MongoDB connector: server-side filters, batched delete_many / update_many with the predicate re-checked."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import pymongo
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import ConfigurationError, ConnectionFailure, InvalidURI, OperationFailure, PyMongoError

from retention import transforms as reference
from retention.clients import judge
from retention.connector import ConnectorDefaults, Option
from retention.errors import ConfigError, ConnectorError, TargetMissing
from retention.ids import canonical_ids, mongo_values
from retention.model import Action, Batch, ClientRegistry, ClientStates, Counts, Selection, Transform
from retention.retry import retrying
from retention.transforms import KeyedHasher, record_text

Filter = dict[str, Any]
NOTHING: Filter = {"_id": {"$in": []}}  # a filter no document matches
CLIENT_SIDE = frozenset({"hmac", "truncate_ip"})  # computed here, written back in bulk_write batches


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

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
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
            yield {field: _get(document, field) for field in fields}

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

    # -- filters ---------------------------------------------------------------------------------------------

    def _filters(self, selection: Selection, clients: ClientStates | None) -> dict[str, Filter]:
        """Server-side filters for each class of document; `clients` comes from the registry."""
        expired: list[Filter] = []
        unknown: list[Filter] = []
        if selection.age:
            field = selection.age.field
            expired.append({field: {"$type": "date", "$lt": selection.age.cutoff}})
            unknown.append({field: {"$not": {"$type": "date"}}})  # missing, null, strings, numbers
        if selection.client and clients is not None:
            field = selection.client.field
            expired.append({field: {"$in": mongo_values(clients.expired)}})
            unknown.append({field: {"$nin": mongo_values(clients.known)}})
        if selection.erasure:  # an erasure request: its records, whatever their age
            erasure = selection.erasure  # ids are canonical text, never a document: no operator gets in
            named: Filter = {erasure.client_field: {"$in": mongo_values([erasure.client_id])}}
            if erasure.subject_field:
                subjects = [erasure.subject_id] if erasure.subject_id is not None else []
                named[erasure.subject_field] = {"$in": mongo_values(subjects)}
            expired, unknown = [named], [NOTHING]
        is_expired = _any(expired)
        fresh: Filter = {selection.marker: None} if selection.marker else {}
        held = selection.held
        if held.everything:
            not_held, is_held = NOTHING, {}
        elif held.client_ids and held.client_field:
            not_held = {held.client_field: {"$nin": mongo_values(held.client_ids)}}
            is_held = {held.client_field: {"$in": mongo_values(held.client_ids)}}
        else:
            not_held, is_held = {}, NOTHING
        return {
            "matched": _all(is_expired, not_held, fresh),
            "held": _all(is_expired, is_held, fresh),
            "unknown_age": _all({"$nor": [is_expired]}, _any(unknown), fresh),
        }

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
        filters = self._filters(selection, self._client_states(selection))
        try:
            return Counts(total=collection.count_documents({}),
                          **{name: collection.count_documents(f) for name, f in filters.items()})
        except PyMongoError as exc:
            raise ConnectorError(f"count failed: {_summary(exc)}") from None

    def held_ids(self, selection: Selection, batch_size: int, id_key: bytes) -> Iterator[tuple[str, ...]]:
        key = selection.key or ("_id",)
        collection = self._collection(selection.target)
        held = self._filters(selection, self._client_states(selection))["held"]
        hasher = KeyedHasher(id_key)
        cursor = collection.find(held, dict.fromkeys(key, 1), batch_size=batch_size).sort([(f, 1) for f in key])
        chunk: list[str] = []
        for document in cursor:
            chunk.append(hasher(record_text([_get(document, f) for f in key])))
            if len(chunk) == batch_size:
                yield tuple(chunk)
                chunk = []
        if chunk:
            yield tuple(chunk)

    def statement(self, selection: Selection, action: Action) -> str:
        filters = self._filters(selection, ClientStates(frozenset({"<expired client ids>"}),
                                                        frozenset({"<known client ids>"})))
        matched = {"$and": [{"_id": {"$in": "<batch _ids>"}}, filters["matched"]]}
        if action.kind == "delete":
            return f"db.{selection.target}.deleteMany({matched!r})"
        return f"db.{selection.target}.updateMany({matched!r}, {self._pipeline(action, {})!r})"

    def apply(self, selection: Selection, action: Action, *, batch_size: int, limit: int,
              id_key: bytes | None, should_stop: Callable[[], bool] = lambda: False) -> Iterator[Batch]:
        key = selection.key or ("_id",)
        collection = self._collection(selection.target)
        hasher = KeyedHasher(id_key) if id_key else None
        remaining = limit
        # candidates are picked with the registry as read once here; each change re-reads its own clients
        try:
            candidates = self._filters(selection, self._client_states(selection))["matched"]
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
        named = {_identity(d["_id"]): record_text([_get(d, f) for f in key]) for d in candidates}
        ids = [d["_id"] for d in candidates]
        clients = None
        if client_field:  # the registry read again, just before the change, for these clients only
            clients = self._client_states(selection, canonical_ids(_get(d, client_field) for d in candidates))
        still_matching = self._filters(selection, clients)["matched"]
        chosen = _all({"_id": {"$in": ids}}, still_matching)  # `_id` first: servers look those up by index
        if action.kind == "delete":
            changed = collection.delete_many(chosen).deleted_count
            if changed == len(ids):
                return list(named.values())
            left = {_identity(d["_id"]) for d in collection.find({"_id": {"$in": ids}}, {"_id": 1})}
            return [value for identity, value in named.items() if identity not in left]
        if fields:
            requests = [UpdateOne(_all({"_id": d["_id"]}, still_matching),
                                  self._pipeline(action, self._client_side_values(action, d))) for d in candidates]
            changed = collection.bulk_write(requests, ordered=False).modified_count
        else:
            changed = collection.update_many(chosen, self._pipeline(action, {})).modified_count
        if changed == len(ids):
            return list(named.values())
        assert action.marker is not None
        marked = collection.find({"_id": {"$in": ids}, action.marker: action.marked_at}, {"_id": 1})
        return [named[_identity(d["_id"])] for d in marked]

    def _client_side_values(self, action: Action, document: Mapping[str, Any]) -> dict[str, Any]:
        values = {}
        for transform in action.transforms:
            value = _get(document, transform.field)
            if transform.kind == "hmac":
                assert action.hmac_key is not None
                values[transform.field] = reference.pseudonym(action.hmac_key, value)
            elif transform.kind == "truncate_ip":
                values[transform.field] = reference.truncate_ip(value) if isinstance(value, str) else None
        return values

    def _pipeline(self, action: Action, client_side: Mapping[str, Any]) -> list[Filter]:
        """The update pipeline: server-side transforms, client-computed values, the marker, then $unset."""
        assert action.marker is not None
        values: dict[str, Any] = {}
        for transform in action.transforms:
            if transform.kind in CLIENT_SIDE:
                values[transform.field] = {"$literal": client_side.get(transform.field)}
            elif transform.kind not in ("keep", "drop"):
                values[transform.field] = _expression(transform)
        values[action.marker] = {"$literal": action.marked_at}
        stages: list[Filter] = [{"$set": values}]
        dropped = [t.field for t in action.transforms if t.kind == "drop"]
        if dropped:
            stages.append({"$unset": dropped})
        return stages


def _expression(transform: Transform) -> Any:
    """A server-side aggregation expression for a transform."""
    path = f"${transform.field}"
    if transform.kind == "null":
        return {"$literal": None}
    if transform.kind == "redact":
        return {"$literal": str(transform.arg)}
    if transform.kind == "generalize_date":
        # only a date can be generalized; anything else is removed rather than kept as it was
        return {"$cond": [{"$eq": [{"$type": path}, "date"]}, {"$dateTrunc": {"date": path, "unit": transform.arg}},
                          None]}
    if transform.kind == "mask":
        keep = int(transform.arg or 0)
        text = {"$toString": path}
        length = {"$strLenCP": "$$text"}
        stars = {"$reduce": {"input": {"$range": [0, {"$max": [0, {"$subtract": ["$$length", keep]}]}]},
                             "initialValue": "", "in": {"$concat": ["$$value", "*"]}}}
        masked = {"$cond": [{"$gt": ["$$length", keep]},
                            {"$concat": [stars, {"$substrCP": ["$$text", {"$subtract": ["$$length", keep]}, keep]}]},
                            {"$reduce": {"input": {"$range": [0, "$$length"]}, "initialValue": "",
                                         "in": {"$concat": ["$$value", "*"]}}}]}
        scalar = {"$in": [{"$type": path}, ["string", "int", "long", "double", "decimal"]]}
        return {"$cond": [scalar, {"$let": {"vars": {"text": text}, "in": {"$let": {
            "vars": {"length": length}, "in": masked}}}}, None]}
    raise ValueError(f"no server-side expression for {transform.kind}")


def _all(*filters: Filter) -> Filter:
    """The conjunction of filters, as one flat document where their keys allow (servers plan those best)."""
    merged: Filter = {}
    rest: list[Filter] = []
    for part in filters:
        for key, condition in part.items():
            if key == "$and":
                rest.extend(condition)
            elif key in merged:
                rest.append({key: condition})
            else:
                merged[key] = condition
    return {**merged, "$and": rest} if rest else merged


def _any(filters: list[Filter]) -> Filter:
    return filters[0] if len(filters) == 1 else {"$or": filters}


def _get(document: Mapping[str, Any], path: str) -> Any:
    """A dotted path's value in a document (None when missing)."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


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
