"""MongoDB's own expiry: TTL indexes, read from a collection's index information."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

from retention.connector import Deletes, NativeRule

LONGEST_TTL = 2**31 - 1  # seconds: MongoDB refuses a longer expireAfterSeconds


def ttl_indexes(indexes: Mapping[str, Mapping[str, Any]]) -> list[NativeRule]:
    """The TTL indexes among `index_information()`'s entries. MongoDB honours expireAfterSeconds on a single-field
    index only (a compound index ignores it); a partial filter narrows the index, so it may apply."""
    found = []
    for name, index in indexes.items():
        keys = index.get("key") or []
        if "expireAfterSeconds" not in index or len(keys) != 1:
            continue
        partial = index.get("partialFilterExpression")
        narrowed = (_partial(partial),) if isinstance(partial, Mapping) else ()
        found.append(NativeRule("TTL index", str(name), Deletes.DOCUMENTS,
                                timedelta(seconds=_seconds(index["expireAfterSeconds"])), str(keys[0][0]),
                                narrowed=narrowed))
    return found


def collection_ttl(options: Mapping[str, Any]) -> list[NativeRule]:
    """A collection's own expiry (`options()`): a time-series collection's by its timeField, a clustered
    collection's by its `_id`. MongoDB deletes by it as by a TTL index; "off" turns it off."""
    if "expireAfterSeconds" not in options or options["expireAfterSeconds"] == "off":
        return []
    series = options.get("timeseries")
    if isinstance(series, Mapping):
        kind, field = "time-series collection", str(series.get("timeField"))
    else:
        kind, field = "clustered collection" if "clusteredIndex" in options else "collection option", "_id"
    return [NativeRule(kind, "expireAfterSeconds", Deletes.DOCUMENTS,
                       timedelta(seconds=_seconds(options["expireAfterSeconds"])), field)]


def _seconds(value: object) -> float:
    """expireAfterSeconds as a number; anything odd is taken as 0, the earliest it could mean."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return min(float(value), LONGEST_TTL)
    return 0.0


def _partial(expression: Mapping[str, Any]) -> str:
    fields = sorted(set(_fields(expression)))
    return f"documents matching a partial filter on {', '.join(map(repr, fields))}" if fields else \
        "documents matching a partial filter"


def _fields(expression: Mapping[str, Any]) -> Iterator[str]:
    """The field names a filter reads (never its values), through $and / $or and nesting."""
    for name, value in expression.items():
        if not name.startswith("$"):
            yield name
        if isinstance(value, Mapping) and name.startswith("$"):
            yield from _fields(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping):
                    yield from _fields(item)
