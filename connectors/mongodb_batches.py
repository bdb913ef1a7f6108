"""One rule's batches on one collection: candidates read once, in ranges; each range written with the whole
predicate, and exactly the documents changed named.

The write is `<the range> AND <the whole predicate>`, the registry read again for the batch's clients. Inside the
range a document may have started matching since the candidates were read (or stopped), so the candidates do not
say what the write changes. So each batch runs in a transaction (snapshot isolation): it reads the documents that
match in the range, changes them by the same filter, and checks that as many changed; a concurrent change to one
of them is a write conflict that rolls the batch back (then it is tried again, a few times). When no names are
wanted (`record_ids = "none"`) the batch is just written and counted, in a transaction too, so that a batch never
changes more than its size. A server without transactions (a standalone mongod), a range where more match than
the batch may change, or write conflicts that do not stop, get the candidates' `_id` list instead: `$in` plus the
predicate, and the candidates still there afterwards are not named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pymongo import UpdateOne
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, PyMongoError

from retention.ids import canonical_ids
from retention.model import Action, ClientStates, Selection
from retention.transforms import record_text

from .mongodb_filters import NOTHING, Filter, all_of, class_filters
from .mongodb_ranges import AgeRanges, Chunk, IdRanges, Ranges
from .mongodb_updates import CLIENT_SIDE, client_side_values, get_path, pipeline

NO_TRANSACTIONS = frozenset({20, 263})  # IllegalOperation (a standalone server), OperationNotSupportedInTransaction
TRANSACTION_ATTEMPTS = 3
T = TypeVar("T")
Document = dict[str, Any]


class Batches:
    """The batches of one rule: `next(size)` writes the next one and says what it changed."""

    def __init__(self, collection: Collection[Document], selection: Selection, action: Action, *,
                 candidates: Filter, by_age: str | None, named: bool, batch_size: int,
                 clients: Callable[[Iterable[str]], ClientStates | None]) -> None:
        self.collection, self.selection, self.action = collection, selection, action
        self.key = selection.key or ("_id",)
        self.named = named  # whether the documents changed are named (else only counted)
        self.clients = clients  # the registry's verdict on these clients, read now
        self.transactions = True  # until the server says it runs none
        self._stream = _Stream(collection, candidates, by_age, projection(selection, self.key, ()), batch_size)

    def next(self, size: int) -> tuple[int, list[str]] | None:
        """The next batch of at most `size` documents, written: how many changed and, when named, their key texts
        (transforms.record_text). None when no candidates are left. After a lost connection the candidates are
        read again from the start (documents already changed no longer match; the others are tried again)."""
        try:
            chunk = self._stream.next(size)
            return None if chunk is None else self._write(chunk, size)
        except PyMongoError as exc:
            self._stream.close(connection_lost=isinstance(exc, ConnectionFailure))
            raise

    def close(self) -> None:
        self._stream.close(connection_lost=False)

    def _write(self, chunk: Chunk, size: int) -> tuple[int, list[str]]:
        client_field = self.selection.client.field if self.selection.client else None
        clients = None
        if client_field:  # the registry read again, just before the change, for these clients only
            clients = self.clients(canonical_ids(get_path(d, client_field) for d in chunk.documents))
        still_matching = class_filters(self.selection, clients)["matched"]
        if still_matching == NOTHING:
            return 0, []
        if self.transactions:
            try:
                return self._in_transaction(chunk, still_matching, size)
            except _NoTransactions:
                self.transactions = False
            except _ById:
                pass
        return self._by_ids(chunk, still_matching)

    def _in_transaction(self, chunk: Chunk, still_matching: Filter, size: int) -> tuple[int, list[str]]:
        """The range and the predicate, in one transaction: what matches is read (when named), then changed."""
        within = all_of(still_matching, chunk.bounds)  # the predicate's own keys first: the age field leads
        fields = client_side(self.action)
        read_first = self.named or bool(fields)

        def change(session: ClientSession) -> tuple[int, list[str]]:
            found: list[Document] = []
            if read_first:
                found = list(self.collection.find(within, projection(self.selection, self.key, fields),
                                                  session=session).limit(size + 1))
                if len(found) > size:
                    raise _ById  # more match in the range now than a batch may change: the candidates alone
                if not found:
                    return 0, []
            changed = write(self.collection, self.action, still_matching, within, found, session)
            if changed > size or (read_first and changed != len(found)):
                raise _ById  # too many, or (not under snapshot isolation after all) others: roll back
            return changed, [record_text([get_path(d, f) for f in self.key]) for d in found] if self.named else []

        try:
            return transaction(self.collection, change)
        except OperationFailure as exc:
            if exc.code in NO_TRANSACTIONS:
                raise _NoTransactions from None
            if _labelled(exc, "TransientTransactionError"):  # write conflicts, again and again: by `_id` then
                raise _ById from None
            raise
        except ConfigurationError:
            raise _NoTransactions from None

    def _by_ids(self, chunk: Chunk, still_matching: Filter) -> tuple[int, list[str]]:
        """The candidates by `_id` list, the predicate re-checked; those not changed afterwards are not named.

        Documents are addressed by `_id`, never by the rule's key: a key value read from a document is untrusted
        (a stored regex inside `$in` is a pattern), while MongoDB allows no regex, array or undefined `_id`.
        """
        collection, action = self.collection, self.action
        ids = [d["_id"] for d in chunk.documents]
        named = {_identity(d["_id"]): record_text([get_path(d, f) for f in self.key]) for d in chunk.documents}
        chosen = all_of({"_id": {"$in": ids}}, still_matching)  # `_id` first: servers look those up by index
        fields = client_side(action)
        current = list(collection.find(chosen, projection(self.selection, self.key, fields))) if fields else []
        changed = write(collection, action, still_matching, chosen, current, None)
        if changed == len(ids):
            return changed, list(named.values())
        if action.kind == "delete":
            left = {_identity(d["_id"]) for d in collection.find({"_id": {"$in": ids}}, {"_id": 1})}
            return changed, [value for identity, value in named.items() if identity not in left]
        assert action.marker is not None
        marked = collection.find({"_id": {"$in": ids}, action.marker: action.marked_at}, {"_id": 1})
        return changed, [named[_identity(d["_id"])] for d in marked]


class _NoTransactions(Exception):
    """The server runs no multi-document transactions (a standalone mongod)."""


class _ById(Exception):
    """This batch is written by its candidates' `_id`s (the transaction, if any, rolled back)."""


class _Stream:
    """The candidates, read once in `_id` order or the age field's (an index walk), chunked into ranges."""

    def __init__(self, collection: Collection[Document], candidates: Filter, by_age: str | None,
                 fields: dict[str, int], batch_size: int) -> None:
        self._collection, self._candidates, self._by_age = collection, candidates, by_age
        self._fields, self._batch_size = fields, batch_size
        self._ranges: Ranges | None = None
        self._cursors: list[Cursor[Document]] = []

    def _find(self, query: Filter, order: str) -> Cursor[Document]:
        cursor = self._collection.find(query, self._fields, batch_size=self._batch_size).sort(order, 1)
        self._cursors.append(cursor)
        return cursor

    def next(self, size: int) -> Chunk | None:
        if self._ranges is None:
            field = self._by_age
            if field is None:
                self._ranges = IdRanges(self._find(self._candidates, "_id"))
            else:
                self._ranges = AgeRanges(self._find(self._candidates, field), field, lambda age: self._find(
                    all_of(self._candidates, {field: {"$gte": age, "$lte": age}}), "_id"))
        return self._ranges.next(size)

    def close(self, *, connection_lost: bool) -> None:
        """Close the cursors; the next chunk reads the candidates again, from the start."""
        for cursor in self._cursors:
            if connection_lost:  # as pymongo does when a getMore loses its connection: no killCursors (a server
                cursor._killed = True  # that stays away would have it retried, and reported, in the background)
            cursor.close()
        self._cursors.clear()
        self._ranges = None


def transaction(collection: Collection[Document], change: Callable[[ClientSession], T]) -> T:
    """`change` in one transaction, committed. A few more tries where the server labels an error transient (a
    write conflict: the transaction rolled back) or a commit's outcome unknown (a commit may be sent again); then
    the error goes up, to the batch's own retries (which start from a new read)."""
    with collection.database.client.start_session() as session:
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            session.start_transaction()
            try:
                result = change(session)
            except BaseException as exc:
                session.abort_transaction()
                if _labelled(exc, "TransientTransactionError") and attempt < TRANSACTION_ATTEMPTS:
                    continue
                raise
            try:
                _commit(session)
            except PyMongoError as exc:
                if _labelled(exc, "TransientTransactionError") and attempt < TRANSACTION_ATTEMPTS:
                    continue
                raise
            return result
    raise AssertionError("unreachable")  # pragma: no cover


def _commit(session: ClientSession) -> None:
    """Commit; sent again while the server says its outcome is unknown (committing twice is safe)."""
    for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
        try:
            session.commit_transaction()
            return
        except PyMongoError as exc:
            if not _labelled(exc, "UnknownTransactionCommitResult") or attempt == TRANSACTION_ATTEMPTS:
                raise


def _labelled(error: BaseException, label: str) -> bool:
    return isinstance(error, PyMongoError) and error.has_error_label(label)


def write(collection: Collection[Document], action: Action, still_matching: Filter, within: Filter,
          documents: list[Document], session: ClientSession | None) -> int:
    """Delete or update what matches `within`; client-side values go document by document, computed from
    `documents` as just read (each write by its `_id` and the predicate). Returns how many changed."""
    if action.kind == "delete":
        return collection.delete_many(within, session=session).deleted_count
    if client_side(action):
        requests = [UpdateOne(all_of({"_id": d["_id"]}, still_matching),
                              pipeline(action, client_side_values(action, d))) for d in documents]
        return collection.bulk_write(requests, ordered=False, session=session).modified_count if requests else 0
    return collection.update_many(within, pipeline(action, {}), session=session).modified_count


def client_side(action: Action) -> tuple[str, ...]:
    return tuple(t.field for t in action.transforms if t.kind in CLIENT_SIDE)


def projection(selection: Selection, key: tuple[str, ...], fields: tuple[str, ...]) -> dict[str, int]:
    """`_id`, the rule's key, its client and age fields, and the fields client-side transforms read."""
    client_field = selection.client.field if selection.client else None
    age_field = selection.age.field if selection.age else None
    return {"_id": 1, **dict.fromkeys((*key, *fields, *(f for f in (client_field, age_field) if f)), 1)}


def _identity(value: Any) -> str:
    """A hashable stand-in for an `_id` of any BSON type (documents included), to match documents up."""
    return repr(value)
