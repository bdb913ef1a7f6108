"""The classes a document can fall in (matched, held, unknown age), as server-side query filters.

Values in filters come from canonical ids (`mongo_values`) and the config, never from documents, so no
value read from a store can become a query operator. Filters stay flat where they can (one operator document per
field, no top-level `$and`), so that a server's planner can serve the age field's condition from its index.
"""

from __future__ import annotations

from typing import Any

from retention.ids import mongo_values
from retention.model import ClientStates, Selection

Filter = dict[str, Any]
NOTHING: Filter = {"_id": {"$in": []}}  # a filter no document matches


def class_filters(selection: Selection, clients: ClientStates | None, *, exact: bool = True) -> dict[str, Filter]:
    """Server-side filters for each class of document; `clients` comes from the registry.

    With `exact=False`, "matched" is a superset fast to walk in the age field's order: it lets arrays through,
    for batches to pick candidates by; every write re-checks with the exact filter.
    """
    expired: list[Filter] = []
    unknown: list[Filter] = []
    if selection.age:
        field = selection.age.field
        # a date bound compares with dates only (MongoDB's type bracketing): strings, numbers, timestamps and null
        # never match, so this is "a date before the cutoff", as a range an index on the field serves. An array
        # matches a bound (and `$type: "date"`) when any element does, and so does a dotted path through an array
        # of documents: no single date, so never expired
        parts = field.split(".")
        paths = [".".join(parts[:end]) for end in range(1, len(parts) + 1)]
        # "no array": no first element (`path.0`), a key of its own, so the field's range stays a plain operator
        # document that a batch's bounds merge into and the server's planner serves from the index
        no_array = {f"{path}.0": {"$exists": False} for path in paths} if exact else {}
        expired.append({field: {"$lt": selection.age.cutoff}, **no_array})
        unknown.append({"$or": [{field: {"$not": {"$type": "date"}}},  # missing, null, strings, numbers
                                *({f"{path}.0": {"$exists": True}} for path in paths)]})
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
    is_expired = any_of(expired)
    fresh: Filter = {selection.marker: None} if selection.marker else {}
    if selection.shard:  # a part of the rule's documents: a range of `_id` (scalar bounds of one type, see shards)
        bounds = {"$gte": selection.shard.low} if selection.shard.low is not None else {}
        if selection.shard.high is not None:
            bounds["$lt"] = selection.shard.high
        fresh = all_of(fresh, {"_id": bounds}) if bounds else fresh
    held = selection.held
    if held.everything:
        not_held, is_held = NOTHING, {}
    elif held.client_ids and held.client_field:
        not_held = {held.client_field: {"$nin": mongo_values(held.client_ids)}}
        is_held = {held.client_field: {"$in": mongo_values(held.client_ids)}}
    else:
        not_held, is_held = {}, NOTHING
    # an age alone: a value that is no date is never expired, and "no date" alone is what an index serves
    not_expired: Filter = {} if len(expired) == 1 and selection.age and not selection.erasure else {
        "$nor": [is_expired]}
    return {
        "matched": conjunction(is_expired, not_held, fresh),
        "held": conjunction(is_expired, is_held, fresh),
        "unknown_age": conjunction(not_expired, any_of(unknown), fresh),
    }


def conjunction(*filters: Filter) -> Filter:
    """all_of, or NOTHING itself when a part is NOTHING (so that callers can skip asking the server)."""
    return NOTHING if NOTHING in filters else all_of(*filters)


def all_of(*filters: Filter) -> Filter:
    """The conjunction of filters, as one flat document where their keys allow (servers plan those best).

    Two operator documents on one field merge when their operators differ (`{$lt: a}` and `{$gte: b}` become
    `{$lt: a, $gte: b}`, which MongoDB reads as the same conjunction, element by element for arrays); a repeated
    operator, a literal value, or `$regex` / `$options` (which read each other) go to `$and` instead.
    """
    merged: Filter = {}
    rest: list[Filter] = []
    for part in filters:
        for key, condition in part.items():
            if key == "$and":
                rest.extend(condition)
            elif key not in merged:
                merged[key] = condition
            elif _mergeable(merged[key], condition):
                merged[key] = {**merged[key], **condition}
            else:
                rest.append({key: condition})
    return {**merged, "$and": rest} if rest else merged


def _mergeable(first: Any, second: Any) -> bool:
    operators = [first, second]
    return (all(isinstance(o, dict) and o and all(isinstance(k, str) and k.startswith("$") for k in o)
                for o in operators)
            and not set(first) & set(second) and not {"$regex", "$options"} & (set(first) | set(second)))


def any_of(filters: list[Filter]) -> Filter:
    return filters[0] if len(filters) == 1 else {"$or": filters}
