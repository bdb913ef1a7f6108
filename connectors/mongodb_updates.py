"""What an anonymize or de-identify batch writes: an update pipeline of server-side expressions.

hmac and truncate_ip are computed here (the reference implementations in `retention.transforms`) and written as
literals in the same pipeline; the rest runs on the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retention import transforms as reference
from retention.model import Action, Transform

from .mongodb_filters import Filter

CLIENT_SIDE = frozenset({"hmac", "truncate_ip"})  # computed here, written back in bulk_write batches


def client_side_values(action: Action, document: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for transform in action.transforms:
        value = get_path(document, transform.field)
        if transform.kind == "hmac":
            assert action.hmac_key is not None
            values[transform.field] = reference.pseudonym(action.hmac_key, value)
        elif transform.kind == "truncate_ip":
            values[transform.field] = reference.truncate_ip(value) if isinstance(value, str) else None
    return values

def pipeline(action: Action, client_side: Mapping[str, Any]) -> list[Filter]:
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


def get_path(document: Mapping[str, Any], path: str) -> Any:
    """A dotted path's value in a document (None when missing)."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
