"""The classes a document can fall in (matched, held, unknown age), as server-side query filters.

Values in filters come from canonical ids (`mongo_values`) and the config, never from documents, so no
value read from a store can become a query operator.
"""

from __future__ import annotations

from typing import Any

from retention.ids import mongo_values
from retention.model import ClientStates, Selection

Filter = dict[str, Any]
NOTHING: Filter = {"_id": {"$in": []}}  # a filter no document matches


def class_filters(selection: Selection, clients: ClientStates | None) -> dict[str, Filter]:
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
    is_expired = any_of(expired)
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
        "matched": all_of(is_expired, not_held, fresh),
        "held": all_of(is_expired, is_held, fresh),
        "unknown_age": all_of({"$nor": [is_expired]}, any_of(unknown), fresh),
    }


def all_of(*filters: Filter) -> Filter:
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


def any_of(filters: list[Filter]) -> Filter:
    return filters[0] if len(filters) == 1 else {"$or": filters}
