"""The one rule for comparing ids across stores: by canonical text.

Client ids, hold ids and erasure-request ids travel between stores whose types differ (a PostgreSQL `bigint`,
a MongoDB string, an id parsed out of an S3 key, a `uuid`). Every comparison goes through `canonical_id`: two ids
are the same id when their canonical texts are equal. Each store then turns the canonical texts back into what
its field holds (`sql_values` for a typed column, `mongo_values` for a schemaless field), so an index still serves
the lookup. Values that are not scalar ids (documents, arrays, booleans, fractions) are refused: read from a
store, they are untrusted input and must never reach a query as an operator.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

UUID_SUBTYPE = 4  # BSON binary subtype of a standard UUID
_INTEGER = re.compile(r"0|-?[1-9][0-9]*")  # the decimal digits Python prints: no "-0", no "007", no "+7"
_OBJECT_ID = re.compile(r"[0-9a-f]{24}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class NotAnId(ValueError):
    """A value that cannot name a record: a document, an array, a boolean, a fraction, bytes."""

    def __init__(self, value: object) -> None:
        # the type only: the value itself may be personal data or an injection attempt
        super().__init__(f"a {type(value).__name__} is not an id (ids are text, integers or uuids)")


def canonical_id(value: object) -> str | None:
    """The text an id compares by; None for no id at all (NULL, missing, empty text)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise NotAnId(value)
    if isinstance(value, str):
        return value.lower() if _UUID.fullmatch(value) else value  # a uuid is one id in either case
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        if value == value and value == int(value):  # integral: MongoDB shells store numbers as doubles
            return str(int(value))
        raise NotAnId(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if type(value).__module__ == "bson.objectid":
        return str(value)
    if isinstance(value, bytes) and type(value).__module__ == "bson.binary" \
            and getattr(value, "subtype", None) == UUID_SUBTYPE:
        return str(uuid.UUID(bytes=bytes(value)))  # a BSON UUID, as drivers store uuid.UUID
    raise NotAnId(value)


def canonical_ids(values: Iterable[object]) -> frozenset[str]:
    """The canonical texts of `values`; no-ids and values that are not ids are left out (they name nothing)."""
    found = set()
    for value in values:
        try:
            text = canonical_id(value)
        except NotAnId:
            continue
        if text is not None:
            found.add(text)
    return frozenset(found)


def as_integer(text: str, bits: int = 64) -> int | None:
    """The integer a canonical text names, if it is one a column of `bits` bits can hold (else it names none)."""
    if _INTEGER.fullmatch(text) and -(2 ** (bits - 1)) <= int(text) < 2 ** (bits - 1):
        return int(text)
    return None


def as_uuid(text: str) -> uuid.UUID | None:
    """The uuid a canonical text names (hyphenated, lower case), if it is one."""
    return uuid.UUID(text) if _UUID.fullmatch(text) and text == text.lower() else None


def text_forms(text: str) -> list[str]:
    """How a text field may store this id: as it is, and a uuid also in capitals."""
    return [text, text.upper()] if _UUID.fullmatch(text) and text != text.upper() else [text]


def mongo_values(texts: Iterable[str]) -> list[Any]:
    """Every BSON value a schemaless field may hold for these ids: the text, and the number, ObjectId or UUID it
    spells.

    MongoDB compares numbers by value across int, long and double, so one integer covers all three.
    """
    values: list[Any] = []
    for text in sorted(set(texts)):
        values.extend(text_forms(text))
        number = as_integer(text)
        if number is not None:
            values.append(number)
        if _OBJECT_ID.fullmatch(text):
            from bson import ObjectId  # only MongoDB jobs get here, and they have bson

            values.append(ObjectId(text))
        if (as_uuid(text)) is not None:
            from bson.binary import Binary

            values.append(Binary(uuid.UUID(text).bytes, UUID_SUBTYPE))
    return values
