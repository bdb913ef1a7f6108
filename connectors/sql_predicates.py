"""The classes a row can fall in (matched, held, unknown age), as two-valued SQL predicates the database evaluates.

One function builds them for counting, for choosing a batch and for re-checking it at the moment of change, so
what is counted is what is changed.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, FromClause, Table, and_, false, literal, not_, or_, select, true

from retention.model import Selection

from .sql_dialects import SqlDialect


def predicates(dialect: SqlDialect, table: FromClause, selection: Selection, registry: Table | None, *,
               locking: bool = False) -> dict[str, ColumnElement[bool]]:
    """Two-valued predicates (never NULL) for the classes a record can fall in, and `in_scope`, their union.

    `registry` is the client registry's table when it lives in this database (None when its verdict came as
    lists). `locking` (for statements that change records) share-locks the registry rows consulted, so a client
    re-activated by a concurrent transaction is seen in its new state, never in the one before.
    """
    expired: list[ColumnElement[bool]] = []
    unknown: list[ColumnElement[bool]] = []
    if selection.age:
        column = table.c[selection.age.field]
        has_age = dialect.has_timestamp(column)
        expired.append(and_(has_age, dialect.before(column, selection.age.cutoff)))
        unknown.append(not_(has_age))
    if selection.client:
        client_expired, client_known = _client_predicates(dialect, table, selection, registry, locking)
        expired.append(client_expired)
        unknown.append(not_(or_(client_expired, client_known)))
    if selection.erasure:  # an erasure request: its records, whatever their age
        erasure = selection.erasure
        named: list[ColumnElement[bool]] = []
        for field, value in ((erasure.client_field, erasure.client_id),
                             (erasure.subject_field, erasure.subject_id)):
            if field:  # by canonical text: a request's "4" names end user 4 of a BIGINT key
                named.append(dialect.has_id(table.c[field], [value] if value is not None else []))
        expired, unknown = [and_(*named)], [false()]
    is_expired = or_(*expired)
    held: ColumnElement[bool] = false()
    if selection.held.everything:
        held = true()
    elif selection.held.client_ids and selection.held.client_field:
        held = dialect.has_id(table.c[selection.held.client_field], selection.held.client_ids)
    fresh: ColumnElement[bool] = table.c[selection.marker].is_(None) if selection.marker else true()
    if selection.shard:  # a part of the rule's records: a range of the key's first column
        column = table.c[selection.shard.field]
        fresh = and_(fresh, *([column >= selection.shard.low] if selection.shard.low is not None else []),
                     *([column < selection.shard.high] if selection.shard.high is not None else []))
    return {
        "matched": and_(is_expired, not_(held), fresh),
        "held": and_(is_expired, held, fresh),
        "unknown_age": and_(not_(is_expired), or_(*unknown), fresh),
        # every row of the three classes, as a condition an index on the age field can serve (a range, IS NULL)
        "in_scope": and_(or_(is_expired, *unknown), fresh),
    }


def _client_predicates(dialect: SqlDialect, table: FromClause, selection: Selection, registry_table: Table | None,
                       locking: bool) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """Expired: every registry row of the client ended before the cutoff. Known: some row has a usable state."""
    assert selection.client is not None
    client = table.c[selection.client.field]
    states = selection.client.states
    if registry_table is None:  # the registry lives in another store: its verdict, as lists
        assert states is not None
        return dialect.has_id(client, states.expired), dialect.has_id(client, states.known)
    registry = selection.client.registry
    clients = registry_table.alias("registry")
    status, ended_at = clients.c[registry.status_field], clients.c[registry.ended_at_field]
    same_client = dialect.same_id(clients.c[registry.id_field], client)
    ended = and_(status.is_not(None), status.in_(registry.ended_statuses), dialect.has_timestamp(ended_at))
    ended_long_ago = and_(ended, dialect.before(ended_at, selection.client.ended_before))
    active = and_(status.is_not(None), status.in_(registry.active_statuses))

    def any_row(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
        rows = select(literal(1)).select_from(clients).where(same_client, *conditions)
        return (rows.with_for_update(read=True) if locking else rows).exists()

    if states is not None:  # judged by the run (clients' own grace): the lists, and every row still ended now
        return and_(dialect.has_id(client, states.expired), not_(any_row(not_(ended)))), \
            dialect.has_id(client, states.known)

    expired = and_(
        any_row(ended_long_ago),
        # a duplicate registry row that is still active (or unknown) keeps the records
        not_(any_row(not_(ended_long_ago))),
    )
    known = any_row(or_(active, ended))
    return expired, known
