"""Batches as ranges: the next candidates in `_id` order, or in the order of the indexed age field, and one range
filter that covers them, so that a write never carries a list of keys (`$in` costs O(batch x collection) on some
servers, and a long list is a large command everywhere).

A range is exact only within one BSON type bracket: `{$gte: 7, $lte: "a"}` matches nothing, because a number bound
compares with numbers only. So a range never spans two brackets; an `_id` whose bracket ranges do not suit (null,
booleans, documents, NaN, ...) is a batch of its own, addressed by itself. By age, equal ages stay in one batch
(a range cannot split them); a tie group larger than a batch is read again in `_id` order and split by `_id`.

The candidates and their ranges only say where to look: the write re-checks the whole predicate inside the range,
and the connector names the documents it really changed (see `MongoConnector._write`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import Decimal128, ObjectId

from .mongodb_updates import get_path

Document = dict[str, Any]
Filter = dict[str, Any]


@dataclass(frozen=True)
class Chunk:
    """Candidates read from the stream, in its order, and a range filter that holds every one of them."""

    documents: list[Document]
    bounds: Filter


def bracket(value: Any) -> str | None:
    """The BSON type bracket of an `_id`, where ranges of it are exact; None: the value is a batch of its own."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return "number"
    if isinstance(value, float):
        return None if math.isnan(value) else "number"
    if isinstance(value, Decimal128):
        return None if value.to_decimal().is_nan() else "number"
    if type(value) is str:  # bson's Code is a str too, of another bracket
        return "string"
    if isinstance(value, ObjectId):
        return "objectId"
    if isinstance(value, bytes):  # bytes and bson's Binary (UUIDs among them), by subtype and length: BSON orders
        # binData by length, then subtype, then bytes, and some servers' range operators compare bytes alone
        return f"binData {getattr(value, 'subtype', 0)} {len(value)}"
    if isinstance(value, datetime):
        return "date"
    return None


def point(value: Any) -> Filter:
    """One `_id`, matched literally whatever it holds (`$in` never reads a document inside it as operators)."""
    return {"_id": {"$in": [value]}}


class Lookahead:
    """A stream of documents that can be peeked at and given documents back."""

    def __init__(self, documents: Iterable[Document]) -> None:
        self._documents = iter(documents)
        self._ahead: deque[Document] = deque()

    def peek(self) -> Document | None:
        if not self._ahead:
            following = next(self._documents, None)
            if following is None:
                return None
            self._ahead.append(following)
        return self._ahead[0]

    def pop(self) -> Document:
        if self.peek() is None:
            raise IndexError("the stream is exhausted")
        return self._ahead.popleft()

    def give_back(self, documents: list[Document]) -> None:
        self._ahead.extendleft(reversed(documents))


class IdRanges:
    """Chunks of a stream sorted by `_id`: runs within one bracket as `{_id: {$gte: first, $lte: last}}`."""

    def __init__(self, documents: Iterable[Document], also: Filter | None = None) -> None:
        self._stream = Lookahead(documents)
        self._also = also or {}  # bounds every chunk carries too (a tie group's age)

    def next(self, size: int) -> Chunk | None:
        first = self._stream.peek()
        if first is None:
            return None
        kind = bracket(first["_id"])
        taken = [self._stream.pop()]
        if kind is None:
            return Chunk(taken, {**self._also, **point(first["_id"])})
        while len(taken) < size and (following := self._stream.peek()) is not None \
                and bracket(following["_id"]) == kind:
            taken.append(self._stream.pop())
        return Chunk(taken, {**self._also, "_id": {"$gte": taken[0]["_id"], "$lte": taken[-1]["_id"]}})


class AgeRanges:
    """Chunks of a stream sorted by a date field: whole groups of equal ages, `{field: {$gte: first, $lte: last}}`.

    A document whose field is not one date (an array of them, say) is a batch of its own, by `_id`. A group of
    equal ages larger than `size` is read again by `group(age)`, sorted by `_id`, and split in `_id` ranges.
    """

    def __init__(self, documents: Iterable[Document], field: str,
                 group: Callable[[datetime], Iterable[Document]]) -> None:
        self._stream = Lookahead(documents)
        self._field = field
        self._group = group
        self._in_group: IdRanges | None = None

    def _age(self, document: Document) -> Any:
        return get_path(document, self._field)

    def next(self, size: int) -> Chunk | None:
        while True:
            if self._in_group is not None:
                chunk = self._in_group.next(size)
                if chunk is not None:
                    return chunk
                self._in_group = None
            first = self._stream.peek()
            if first is None:
                return None
            age = self._age(first)
            if not isinstance(age, datetime):
                return Chunk([self._stream.pop()], point(first["_id"]))
            taken = self._whole_groups(size)
            if taken:
                low, high = self._age(taken[0]), self._age(taken[-1])
                return Chunk(taken, {self._field: {"$gte": low, "$lte": high}})
            while (following := self._stream.peek()) is not None and self._age(following) == age:
                self._stream.pop()  # a group larger than a batch: read again in `_id` order, split by `_id`
            self._in_group = IdRanges(self._group(age), {self._field: {"$gte": age, "$lte": age}})

    def _whole_groups(self, size: int) -> list[Document]:
        """Whole groups of equal dates from the front of the stream, as many as fit in `size` (maybe none)."""
        taken: list[Document] = []
        while len(taken) < size and (first := self._stream.peek()) is not None:
            age = self._age(first)
            if not isinstance(age, datetime):
                break
            room = size - len(taken)
            ties = self._ties(age, room + 1)
            if len(ties) > room:  # the group does not fit: it starts the next chunk, or is split by `_id`
                self._stream.give_back(ties)
                break
            taken.extend(ties)
        return taken

    def _ties(self, age: datetime, most: int) -> list[Document]:
        """Up to `most` documents from the front of the stream whose age is `age`."""
        ties: list[Document] = []
        while len(ties) < most and (following := self._stream.peek()) is not None and self._age(following) == age:
            ties.append(self._stream.pop())
        return ties


Ranges = IdRanges | AgeRanges
