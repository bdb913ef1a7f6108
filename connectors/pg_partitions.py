"""Dropping whole expired range partitions (opt-in per rule: `drop_partitions = true`).

A partition of a table range-partitioned by the rule's age field, whose upper bound is at or before the cutoff,
holds only expired records. If none of them is held (and nothing else stands in the way: DELETE triggers, which a
DROP would bypass, or foreign keys that point at the table), it is dropped instead of deleted row by row: O(1),
no vacuum debt. Under an ACCESS EXCLUSIVE lock the partition is counted and checked again, its records are named
(keyed hashes) like any batch's, and it is detached and dropped in the same transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Table, bindparam, cast, func, not_, select, text
from sqlalchemy import exc as sa_exc

from retention.model import Batch, Selection
from retention.transforms import KeyedHasher

from .sql_errors import db_error

if TYPE_CHECKING:
    from .postgres import PostgresConnector

log = structlog.get_logger("retention")

LOCK_TIMEOUT = "5s"  # a partition others are using is left to the row-by-row path, not waited for
_UPPER = re.compile(r"\bTO \('((?:[^']|'')*)'\)\s*$")


def wanted(selection: Selection) -> bool:
    return bool(selection.scope.get("drop_partitions")) and selection.age is not None and \
        selection.erasure is None and not selection.held.everything


def problems(connector: PostgresConnector, table: Table, selection: Selection, action_kind: str) -> list[str]:
    """Why `drop_partitions` cannot apply to this rule (its table, its action, the role's ownership)."""
    if action_kind != "delete" or selection.age is None:
        return ['drop_partitions applies only to an age rule with action = "delete"']
    rows = connector._all(text(
        "SELECT p.partstrat, array(SELECT a.attname::text FROM unnest(p.partattrs) k "
        "JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = k), "
        "pg_has_role(current_user, c.relowner, 'USAGE') "
        "FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid WHERE p.partrelid = to_regclass(:name)"
    ).bindparams(name=_regclass(table)))
    strategy, columns, owned = rows[0] if rows else ("", [], True)
    if strategy != "r" or list(columns) != [selection.age.field]:
        return [f"drop_partitions: table {table.fullname} is not partitioned by range of {selection.age.field}"]
    if not owned:
        return [f"drop_partitions: dropping a partition of {table.fullname} needs the role to own the table "
                "(or to be a member of its owner)"]
    return []


def drop_expired(connector: PostgresConnector, selection: Selection, limit: int, id_key: bytes | None,
                 should_stop: Callable[[], bool]) -> Iterator[Batch]:
    """Drop each wholly expired, unheld partition (at most `limit` records in all), naming its records."""
    parent = connector.table(selection.target)
    if _bypassed(connector, parent):
        return
    hasher = KeyedHasher(id_key) if id_key else None
    remaining = limit
    for name, bound in _children(connector, parent):
        if remaining <= 0:
            return
        if not _expired_whole(connector, parent, bound, selection):
            continue
        if should_stop():
            return
        batch = _drop(connector, parent, connector.table(name), selection, remaining, hasher)
        if batch is not None:
            remaining -= batch.count
            yield batch


def _drop(connector: PostgresConnector, parent: Table, partition: Table, selection: Selection, remaining: int,
          hasher: KeyedHasher | None) -> Batch | None:
    """One partition, checked again under its lock and dropped in the same transaction; None if it must stay."""
    quote = connector.engine.dialect.identifier_preparer.format_table
    classes = connector._predicates(partition, selection)
    keys = connector._key(partition, selection)
    try:
        with connector.engine.begin() as connection:
            connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            connection.execute(text(f"LOCK TABLE {quote(partition)} IN ACCESS EXCLUSIVE MODE"))
            total, other = connection.execute(select(func.count(), connector.dialect.count_where(
                not_(classes["matched"]))).select_from(partition)).one()
            if not total or other or total > remaining:
                connection.rollback()
                return None
            ids: tuple[str, ...] = ()
            if hasher is not None:
                ids = hasher.records(connection.execute(select(*keys)))
            connection.execute(text(f"ALTER TABLE {quote(parent)} DETACH PARTITION {quote(partition)}"))
            connection.execute(text(f"DROP TABLE {quote(partition)}"))
    except sa_exc.DBAPIError as exc:  # a lock not granted in time, say: its rows go the row-by-row way
        log.warning("partition_not_dropped", partition=partition.fullname, error=db_error(exc.orig))
        return None
    log.info("partition_dropped", partition=partition.fullname, count=total)
    connector.forget(partition.fullname)
    return Batch(total, ids, partition=partition.fullname)


def _children(connector: PostgresConnector, parent: Table) -> list[tuple[str, str]]:
    """The parent's direct, unpartitioned children, schema-qualified, with their bounds, by name."""
    rows = connector._all(text(
        "SELECT n.nspname || '.' || c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.inhparent = to_regclass(:name) AND c.relkind = 'r' ORDER BY 1").bindparams(name=_regclass(parent)))
    return [(str(name), str(bound)) for name, bound in rows]


def _expired_whole(connector: PostgresConnector, parent: Table, bound: str, selection: Selection) -> bool:
    """Whether every value the partition can hold is expired: its exclusive upper bound is at most the cutoff."""
    match = _UPPER.search(bound)
    assert selection.age is not None
    if not match:  # DEFAULT, MAXVALUE, or a bound of several columns
        return False
    column = parent.c[selection.age.field]
    upper: Any = connector._all(select(cast(bindparam("upper", match.group(1).replace("''", "'")),
                                            column.type)))[0][0]
    cutoff = selection.age.cutoff
    if isinstance(upper, datetime):
        return (upper if upper.tzinfo else upper.replace(tzinfo=UTC)) <= cutoff
    if isinstance(upper, date):  # a day expires when its first instant is before the cutoff
        return datetime.combine(upper - timedelta(days=1), time(), UTC) < cutoff
    return False


def _bypassed(connector: PostgresConnector, parent: Table) -> bool:
    """DELETE triggers (a DROP fires none) or foreign keys pointing at the table: never drop, delete by row."""
    found = connector._all(text(
        "WITH tree AS (SELECT relid FROM pg_partition_tree(to_regclass(:r))) "
        "SELECT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid IN (SELECT relid FROM tree) "
        "AND NOT t.tgisinternal AND (t.tgtype & 8) <> 0) OR EXISTS (SELECT 1 FROM pg_constraint k "
        "WHERE k.contype = 'f' AND k.confrelid IN (SELECT relid FROM tree))"
    ).bindparams(r=_regclass(parent)))[0][0]
    if found:
        log.info("partitions_not_dropped", table=parent.fullname,
                 detail="DELETE triggers or foreign keys: records are deleted row by row")
    return bool(found)


def _regclass(table: Table) -> str:
    """The table's name as `to_regclass` reads it: each part quoted."""
    parts = [table.schema, table.name] if table.schema else [table.name]
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)
