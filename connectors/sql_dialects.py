"""What differs between SQL databases: reading timestamps and computing transforms server-side."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    literal,
    literal_column,
    null,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import sqltypes
from sqlalchemy.types import UserDefinedType

from retention import transforms as reference
from retention.ids import as_integer, as_uuid, text_forms
from retention.model import Transform


def is_timestamp(column_type: Any) -> bool:
    return isinstance(column_type, sqltypes.DateTime | sqltypes.Date)


def is_text(column_type: Any) -> bool:
    return isinstance(column_type, sqltypes.String)


class SqlDialect:
    """Portable SQL: plain comparisons; only the transforms every database can do."""

    name = "generic"
    transforms = frozenset({"null", "redact", "keep"})
    # a batch may run on a second connection while the one before it is named (SQLite's in-memory and
    # single-writer databases must not); see SqlConnector.apply
    overlapping_batches = False

    def engine_options(self) -> dict[str, Any]:
        return {}

    def estimated_rows(self, query: Callable[[Any], list[Any]], table: Table) -> int | None:
        """The database's own estimate of the table's live rows, without reading it; None when it has none."""
        return None

    def chosen_rows(self, keys: Sequence[Any], candidate_keys: Sequence[Any], matching: ColumnElement[bool],
                    size: int) -> ColumnElement[bool]:
        """The outer statement's rows: those whose key is among the first `size` matching candidates."""
        picked = select(*candidate_keys).select_from(candidate_keys[0].table).where(matching).limit(size)
        return _together(keys).in_(picked)  # type: ignore[no-any-return]

    def locator(self, table: Any, keys: Sequence[Any]) -> list[Any]:
        """What names one row of `table` for the length of a run: its key columns here."""
        return list(keys)

    def located(self, locator: Sequence[Any], rows: Sequence[Any]) -> ColumnElement[bool]:
        """The rows whose locator is one of `rows` (values, or tuples for a composite key)."""
        return _together(locator).in_(list(rows))  # type: ignore[no-any-return]

    def member_of(self, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
        """`column` is one of `values`, however many: one bound array (PostgreSQL) or JSON (SQLite), not N binds."""
        return column.in_(list(values))  # type: ignore[no-any-return]

    def has_id(self, column: Any, ids: Iterable[str]) -> ColumnElement[bool]:
        """Two-valued: the column holds one of these canonical ids (retention.ids), compared in its own type.

        An integer column is compared with the integers the texts spell (others cannot match), a text column
        with the texts, so the column's index serves the lookup; any other type is compared as text.
        """
        target, texts = column, sorted(set(ids))
        values: list[Any]
        if isinstance(column.type, sqltypes.Integer):
            bits = 64 if isinstance(column.type, sqltypes.BigInteger) else \
                16 if isinstance(column.type, sqltypes.SmallInteger) else 32
            values = sorted(n for text in texts if (n := as_integer(text, bits)) is not None)
        elif isinstance(column.type, sqltypes.Numeric):  # 1042.00 is the integral number 1042: compared as a number
            values = sorted(Decimal(n) for text in texts if (n := as_integer(text)) is not None)
        elif isinstance(column.type, sqltypes.Uuid):
            values = sorted(u for text in texts if (u := as_uuid(text)) is not None)
        else:
            values = [form for text in texts for form in text_forms(text)]
            if not isinstance(column.type, sqltypes.String):
                target = cast(column, sqltypes.Text())
        if not values:
            return false()
        return and_(target.is_not(None), self.member_of(target, values))

    def same_id(self, left: Any, right: Any) -> ColumnElement[bool]:
        """Two columns name the same id: compared directly when their types agree, else as canonical text."""
        kinds = (sqltypes.Numeric | sqltypes.Integer, sqltypes.String, sqltypes.Uuid)
        if any(isinstance(left.type, kind) and isinstance(right.type, kind) for kind in kinds):
            return left == right  # type: ignore[no-any-return]
        return cast(left, sqltypes.Text()) == cast(right, sqltypes.Text())

    def count_where(self, predicate: ColumnElement[bool]) -> ColumnElement[int]:
        """How many rows satisfy `predicate`, as one aggregate of a single scan."""
        if self.name in ("postgresql", "sqlite"):
            return func.count().filter(predicate)
        return func.coalesce(func.sum(case((predicate, 1), else_=0)), 0)

    def has_timestamp(self, column: Any) -> ColumnElement[bool]:
        """Two-valued: the column holds a usable timestamp."""
        return column.is_not(None)  # type: ignore[no-any-return]

    def earliest_first(self, column: Any) -> tuple[Any, Any]:
        """How to order a timestamp column by instant, and what to read of it (`timeutil.stored_instant` takes it)."""
        return column, column

    def before(self, column: Any, cutoff: datetime) -> ColumnElement[bool]:
        """The column's instant is earlier than `cutoff`; naive values are read as UTC."""
        if isinstance(column.type, sqltypes.DateTime):
            value = cutoff if column.type.timezone else cutoff.astimezone(UTC).replace(tzinfo=None)
            return column < literal(value, column.type)  # type: ignore[no-any-return]
        # A date is the midnight UTC that starts it: expired when that midnight is before the cutoff.
        utc = cutoff.astimezone(UTC)
        last_expired_day = utc.date() if utc.time() != datetime.min.time() else utc.date() - timedelta(days=1)
        return column <= literal(last_expired_day, sqltypes.Date())  # type: ignore[no-any-return]

    def transform(self, column: Any, transform: Transform, hmac_key: bytes | None) -> Any:
        if transform.kind == "null":
            return null()
        if transform.kind == "redact":
            return literal(str(transform.arg), String())
        raise NotImplementedError(transform.kind)

    def type_problem(self, column: Any, transform: Transform) -> str | None:
        """Why this transform cannot apply to this column, or None."""
        kind = transform.kind
        if kind in ("redact", "mask", "hmac") and not is_text(column.type):
            return f"transform {kind} needs a text column, {column.name} is {column.type}"
        if kind == "hmac" and getattr(column.type, "length", None) and column.type.length < 64:
            return f"transform hmac writes 64 characters, {column.name} holds at most {column.type.length}"
        if kind == "redact" and getattr(column.type, "length", None) and len(str(transform.arg)) > column.type.length:
            return f"redact text {str(transform.arg)!r} is longer than {column.name} allows ({column.type.length})"
        if kind == "generalize_date" and not is_timestamp(column.type):
            return f"transform generalize_date needs a date or timestamp column, {column.name} is {column.type}"
        if kind == "truncate_ip" and not (is_text(column.type) or isinstance(column.type, postgresql.INET)):
            return f"transform truncate_ip needs a text or inet column, {column.name} is {column.type}"
        if kind == "null" and not column.nullable:
            return f"transform null needs a nullable column, {column.name} is NOT NULL"
        return None


class PostgresDialect(SqlDialect):
    """PostgreSQL computes every transform itself, HMAC included (from sha256(), no extension needed)."""

    name = "postgresql"
    transforms = frozenset({"null", "redact", "truncate_ip", "generalize_date", "mask", "hmac", "keep"})
    overlapping_batches = True

    def earliest_first(self, column: Any) -> tuple[Any, Any]:
        # '-infinity' is older than any cutoff, and no Python date: read as the earliest one Python has
        floor = literal(date.min if not isinstance(column.type, sqltypes.DateTime) else
                        datetime(1, 1, 2, tzinfo=UTC) if column.type.timezone else datetime(1, 1, 1), column.type)
        return column, func.greatest(column, floor)

    @staticmethod
    def keyed_hash(column: Any, key: bytes | None) -> Any:
        """HMAC-SHA256 of the column's text, hex: two sha256() calls over precomputed padded keys, no pgcrypto."""
        assert key is not None
        inner, outer = reference.hmac_pads(key)
        message = func.convert_to(cast(column, sqltypes.Text()), "UTF8")
        digest = func.sha256(literal(outer, postgresql.BYTEA()).op("||")(
            func.sha256(literal(inner, postgresql.BYTEA()).op("||")(message))))
        return func.encode(digest, "hex")

    def member_of(self, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
        # never bind text as the column's `varchar(n)`: casting to it truncates silently, so "c-active-2" would
        # become "c-active" and name another client
        element = postgresql.TEXT() if isinstance(column.type, sqltypes.String) else column.type
        array = bindparam(None, list(values), type_=postgresql.ARRAY(element))
        return column == func.any(array)  # type: ignore[no-any-return]

    def chosen_rows(self, keys: Sequence[Any], candidate_keys: Sequence[Any], matching: ColumnElement[bool],
                    size: int) -> ColumnElement[bool]:
        # By physical row id: a TID scan per batch, where `key IN (...)` would scan the whole table each time.
        # A row updated meanwhile is followed to its new version and the outer predicate is checked again.
        row_id: ColumnElement[Any] = literal_column("ctid")
        # FROM named explicitly: otherwise a predicate made only of EXISTS clauses would pull the candidates
        # table into those subqueries and leave `ctid` to mean the outer row
        candidates = select(row_id).select_from(candidate_keys[0].table).where(matching).limit(size)
        return row_id == func.any(func.array(candidates.scalar_subquery()))

    def locator(self, table: Any, keys: Sequence[Any]) -> list[Any]:
        # the physical row id, whatever the key: rows of a refused batch are bisected by it (a TID scan); with
        # the table's oid, since each partition of a partitioned table numbers its rows on its own
        return [literal_column("tableoid::oid::text || ':' || ctid::text")]

    def located(self, locator: Sequence[Any], rows: Sequence[Any]) -> ColumnElement[bool]:
        texts = [str(row) for row in rows]
        tids = cast(bindparam(None, [text.partition(":")[2] for text in texts],
                              type_=postgresql.ARRAY(postgresql.TEXT)), postgresql.ARRAY(_Tid()))
        row_ids = bindparam(None, texts, type_=postgresql.ARRAY(postgresql.TEXT))
        return and_(literal_column("ctid") == func.any(tids), locator[0] == func.any(row_ids))

    def estimated_rows(self, query: Callable[[Any], list[Any]], table: Table) -> int | None:
        # per leaf partition (a plain table is its own only leaf): the smaller of the live-row count the
        # statistics keep with every insert and delete and the last ANALYZE's (each can run high: a race
        # between them, or rows deleted since), so that max_fraction errs toward skipping; None if a leaf has
        # neither
        rows = query(text(
            "WITH target AS (SELECT to_regclass(coalesce(quote_ident(:schema) || '.', '') || quote_ident(:name)) "
            "AS r), "
            "leaves AS (SELECT p.relid FROM target, pg_partition_tree(target.r) p WHERE p.isleaf "
            "UNION SELECT r FROM target JOIN pg_class t ON t.oid = target.r WHERE t.relkind <> 'p') "
            "SELECT sum(CASE WHEN s.n_live_tup > 0 AND c.reltuples >= 0 THEN least(s.n_live_tup, c.reltuples) "
            "WHEN s.n_live_tup > 0 THEN s.n_live_tup ELSE c.reltuples END)::bigint, "
            "bool_and(s.n_live_tup > 0 OR c.reltuples >= 0) "
            "FROM leaves JOIN pg_class c ON c.oid = leaves.relid "
            "LEFT JOIN pg_stat_all_tables s ON s.relid = leaves.relid"
        ).bindparams(schema=table.schema, name=table.name))
        total, known = rows[0] if rows else (None, False)
        return int(total) if known and total is not None else None

    def engine_options(self) -> dict[str, Any]:
        # date_trunc and naive timestamps are read in the session time zone: pin it to UTC.
        # named in pg_stat_activity, so a DBA sees (and can stop) the job's sessions
        return {"connect_args": {"options": "-c timezone=UTC", "application_name": "retention"}}

    def transform(self, column: Any, transform: Transform, hmac_key: bytes | None) -> Any:
        kind = transform.kind
        if kind == "truncate_ip":
            if isinstance(column.type, postgresql.INET):
                prefix = case((func.family(column) == 4, 24), else_=48)
                return cast(func.host(func.network(func.set_masklen(column, prefix))), postgresql.INET)
            as_inet = cast(column, postgresql.INET)
            return case(
                (column.regexp_match(reference.IPV4), func.host(func.network(func.set_masklen(as_inet, 24)))),
                (column.regexp_match(reference.IPV6), func.host(func.network(func.set_masklen(as_inet, 48)))),
                else_=null(),
            )
        if kind == "generalize_date":
            return cast(func.date_trunc(str(transform.arg), column), column.type)
        if kind == "mask":
            keep = int(transform.arg or 0)
            length = func.char_length(column)
            kept = func.right(column, keep) if keep else literal("")
            return case(
                (length > keep, func.repeat("*", length - keep).op("||")(kept)),
                else_=func.repeat("*", length),
            )
        if kind == "hmac":
            return self.keyed_hash(column, hmac_key)
        return super().transform(column, transform, hmac_key)


class SqliteDialect(SqlDialect):
    """SQLite stores timestamps as text: julianday() parses them (offsets included), or says NULL."""

    name = "sqlite"
    transforms = frozenset({"null", "redact", "truncate_ip", "generalize_date", "mask", "hmac", "keep"})

    def has_timestamp(self, column: Any) -> ColumnElement[bool]:
        return and_(func.typeof(column) == "text", func.julianday(column).is_not(None))

    def member_of(self, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
        listed: Any = select(literal_column("value")).select_from(func.json_each(literal(json.dumps(list(values)))))
        return column.in_(listed)  # type: ignore[no-any-return]

    def earliest_first(self, column: Any) -> tuple[Any, Any]:
        # text with any offset: julianday() orders instants, strftime() writes one in UTC
        return func.julianday(column), func.strftime("%Y-%m-%dT%H:%M:%fZ", column)

    def before(self, column: Any, cutoff: datetime) -> ColumnElement[bool]:
        iso = cutoff.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return func.julianday(column) < func.julianday(iso)

    def transform(self, column: Any, transform: Transform, hmac_key: bytes | None) -> Any:
        kind = transform.kind
        if kind == "truncate_ip":
            return func.retention_truncate_ip(column)
        if kind == "mask":
            return func.retention_mask(column, int(transform.arg or 0))
        if kind == "generalize_date":
            return func.retention_generalize_date(column, str(transform.arg))
        if kind == "hmac":
            return func.retention_hmac(literal(hmac_key), column)
        return super().transform(column, transform, hmac_key)

    @staticmethod
    def register_functions(connection: sqlite3.Connection, _record: Any = None) -> None:
        """Give SQLite the transforms as deterministic SQL functions, so updates stay set-based."""
        connection.create_function("retention_truncate_ip", 1, reference.truncate_ip, deterministic=True)
        connection.create_function("retention_mask", 2, reference.mask, deterministic=True)
        connection.create_function("retention_generalize_date", 2, _sqlite_generalize_date, deterministic=True)
        connection.create_function("retention_hmac", 2, reference.pseudonym, deterministic=True)


def _sqlite_generalize_date(value: str | None, unit: str) -> str | None:
    if value is None:
        return None
    try:
        text = str(value)
        parsed: date = datetime.fromisoformat(text) if len(text) > 10 else date.fromisoformat(text)
    except ValueError:
        return None
    general = reference.generalize_date(parsed, unit)
    assert general is not None
    return general.isoformat(sep=" ") if isinstance(general, datetime) else general.isoformat()


def _together(columns: Sequence[Any]) -> Any:
    """One column as itself, several as a row value `(a, b)` (PostgreSQL, SQLite 3.15+)."""
    return columns[0] if len(columns) == 1 else tuple_(*columns)


class _Tid(UserDefinedType):  # type: ignore[type-arg]
    """PostgreSQL's physical row id type, for binding a list of row ids."""

    cache_ok = True

    def get_col_spec(self, **_: Any) -> str:
        return "tid"


def dialect_for(name: str) -> SqlDialect:
    return {"postgresql": PostgresDialect, "sqlite": SqliteDialect}.get(name, SqlDialect)()


__all__ = ["PostgresDialect", "SqlDialect", "SqliteDialect", "dialect_for", "is_text", "is_timestamp"]
