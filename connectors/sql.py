"""SQL connector: one set-based statement per batch, evaluated by the database (SQLAlchemy Core)."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    Column,
    ColumnElement,
    Delete,
    FromClause,
    MetaData,
    Table,
    Text,
    Update,
    and_,
    cast,
    create_engine,
    delete,
    event,
    func,
    inspect,
    literal,
    not_,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

from retention.connector import ConnectorDefaults, Option
from retention.errors import ConfigError, ConnectorError, TargetMissing
from retention.logs import batch_unrecorded
from retention.model import Action, Batch, ClientRegistry, Counts, OptionValue, Selection
from retention.retry import retrying
from retention.timeutil import stored_instant
from retention.transforms import KeyedHasher

from .sql_dialects import SqlDialect, SqliteDialect, dialect_for, is_timestamp
from .sql_errors import db_error, refused_by_a_record, transient
from .sql_predicates import predicates


class SqlConnector(ConnectorDefaults):
    """Any database SQLAlchemy can reach; every transform server-side on PostgreSQL and SQLite."""

    type_name: ClassVar[str] = "sql"
    description: ClassVar[str] = "Any SQLAlchemy database (tested: PostgreSQL, SQLite)"
    options: ClassVar[tuple[Option, ...]] = (
        Option("url", required=True, help="a SQLAlchemy URL, e.g. sqlite:///app.db"),
    )
    target_key: ClassVar[str] = "table"
    transforms: ClassVar[frozenset[str]] = frozenset(
        {"null", "redact", "truncate_ip", "generalize_date", "mask", "hmac", "keep"})

    def __init__(self, name: str, options: Mapping[str, OptionValue]) -> None:
        self.name = name
        try:
            url = make_url(self._driver_url(str(options["url"])))
        except sa_exc.ArgumentError:
            raise ConfigError("is not a valid database URL", key=f"connectors.{name}.url") from None
        self.dialect: SqlDialect = dialect_for(url.get_backend_name())
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=True, **self.dialect.engine_options())
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"cannot use this database URL: {type(exc).__name__}",
                              key=f"connectors.{name}.url") from None
        if isinstance(self.dialect, SqliteDialect):
            event.listen(self.engine, "connect", SqliteDialect.register_functions)
        self._tables: dict[str, Table] = {}

    @staticmethod
    def _driver_url(url: str) -> str:
        return url

    def close(self) -> None:
        self.engine.dispose()

    # -- targets ---------------------------------------------------------------------------------------------

    def table(self, name: str) -> Table:
        """The reflected table; names are quoted by SQLAlchemy, never pasted into SQL."""
        if name not in self._tables:
            schema, _, table_name = name.rpartition(".")
            try:
                self._tables[name] = Table(table_name, MetaData(), schema=schema or None, autoload_with=self.engine)
            except sa_exc.NoSuchTableError:
                raise TargetMissing(f"table {name} does not exist") from None
            except sa_exc.DBAPIError as exc:
                raise ConnectorError(f"cannot reach the database: {db_error(exc.orig)}") from None
        return self._tables[name]

    def forget(self, name: str) -> None:
        """Drop a table from the reflection cache (it was dropped: a partition)."""
        self._tables.pop(name, None)

    def _column(self, table: Table, field: str, role: str) -> Column[Any]:
        if field not in table.c:
            raise TargetMissing(f"{role} column {field!r} does not exist in table {table.fullname}")
        return table.c[field]

    def _key(self, table: Table, selection: Selection) -> list[Column[Any]]:
        """The columns that name a record: the rule's `key`, else the whole primary key (composite ones too)."""
        if selection.key:
            return [self._column(table, field, "key") for field in selection.key]
        primary = list(table.primary_key.columns)
        if not primary:
            raise TargetMissing(f"table {table.fullname} has no primary key: set the rule's `key` to the column(s) "
                                "that name a record")
        return [table.c[column.name] for column in primary]

    def check(self, selection: Selection, action: Action) -> list[str]:
        problems: list[str] = []
        try:
            table = self.table(selection.target)
            self._key(table, selection)
            if selection.age:
                column = self._column(table, selection.age.field, "expire.field")
                if not is_timestamp(column.type):
                    problems.append(f"expire.field {column.name} is {column.type}, expected a timestamp, "
                                    "timestamptz or date column")
            if selection.client:
                self._column(table, selection.client.field, "expire.client_field")
                if selection.client.registry.connector == self.name:
                    problems += self._check_registry(selection.client.registry)
            if selection.erasure:
                self._column(table, selection.erasure.client_field, "expire.client_field")
                if selection.erasure.subject_field:
                    self._column(table, selection.erasure.subject_field, "subject_field")
            if action.marker:
                marker = self._column(table, action.marker, "marker")
                if not marker.nullable:
                    problems.append(f"marker column {marker.name} must be nullable (NULL means not yet processed)")
            for transform in action.transforms:
                column = self._column(table, transform.field, f"transforms.{transform.field}")
                if transform.kind not in self.dialect.transforms:
                    problems.append(f"transform {transform.kind} is not available on {self.dialect.name}")
                elif problem := self.dialect.type_problem(column, transform):
                    problems.append(problem)
        except TargetMissing as exc:
            problems.append(str(exc))
        return problems

    def _check_registry(self, registry: ClientRegistry) -> list[str]:
        table = self.table(registry.table)
        for field, role in ((registry.id_field, "clients.id_field"), (registry.status_field, "clients.status_field"),
                            (registry.ended_at_field, "clients.ended_at_field")):
            self._column(table, field, role)
        problems = []
        if not is_timestamp(table.c[registry.ended_at_field].type):
            problems.append(f"clients.ended_at_field {registry.ended_at_field} is not a timestamp or date column")
        if registry.retention_field:
            column = self._column(table, registry.retention_field, "clients.retention_field")
            if not _reads_as(column.type, int, float, Decimal, str, timedelta):
                problems.append(f"clients.retention_field {column.name} is {column.type}, expected a number of days, "
                                "a text duration such as '90 days', or an interval")
        return problems

    # -- predicates and registry rows --------------------------------------------------------------------------

    def _predicates(self, table: FromClause, selection: Selection, *, locking: bool = False
                    ) -> dict[str, ColumnElement[bool]]:
        client = selection.client
        # the registry's own table whenever it is in this database: with lists (per-client grace) it still re-checks
        registry = self.table(client.registry.table) if client and client.registry.connector == self.name else None
        return predicates(self.dialect, table, selection, registry, locking=locking)

    def read_rows(self, table_name: str, fields: Sequence[str]) -> Iterator[Mapping[str, Any]]:
        table = self.table(table_name)
        # an interval as its text: drivers turn '1 month' into 30 days, and fail on spans Python cannot hold
        columns = [cast(column, Text).label(column.name) if _reads_as(column.type, timedelta) else column
                   for column in (self._column(table, field, "field") for field in fields)]
        with self.engine.connect() as connection:
            for row in connection.execution_options(stream_results=True, yield_per=5000).execute(select(*columns)):
                yield dict(row._mapping)

    def update_row(self, table_name: str, key_field: str, key: Any, values: Mapping[str, Any]) -> None:
        table = self.table(table_name)
        statement = update(table).where(self._column(table, key_field, "key") == key).values(dict(values))
        try:
            with self.engine.begin() as connection:
                connection.execute(statement)
        except sa_exc.DBAPIError as exc:
            raise ConnectorError(f"update of {table_name} failed: {db_error(exc.orig)}") from None

    # -- counting and changing -------------------------------------------------------------------------------

    def count(self, selection: Selection) -> Counts:
        """The classes, counted over the rows in scope only (an index range, for an age rule), and the total.

        The total, which only `max_fraction` needs, is the database's live-row estimate for a large table
        (`estimated_rows`), never less than the rows counted; a small or never-analysed table is counted exactly.
        """
        table = self.table(selection.target)
        classes = self._predicates(table, selection)
        columns = [self.dialect.count_where(classes[name]).label(name) for name in ("matched", "held", "unknown_age")]
        row = self._one(select(*columns).select_from(table).where(classes["in_scope"]))
        counted = row.matched + row.held + row.unknown_age
        estimate = self.dialect.estimated_rows(self._all, table)
        if estimate is None or estimate < EXACT_TOTAL_BELOW:
            total = self._one(select(func.count()).select_from(table))[0]
        else:
            total = max(estimate, counted)
        return Counts(total=total, matched=row.matched, held=row.held, unknown_age=row.unknown_age,
                      oldest=self._oldest(table, selection, classes["matched"]) if row.matched else None)

    def backlog(self, selection: Selection) -> tuple[int, datetime | None]:
        """The matched rows alone (no other class, no total), and the oldest of them."""
        table = self.table(selection.target)
        classes = self._predicates(table, selection)
        matched = self._one(select(self.dialect.count_where(classes["matched"])).select_from(table)
                            .where(classes["in_scope"]))[0]
        return matched, self._oldest(table, selection, classes["matched"]) if matched else None

    def _oldest(self, table: FromClause, selection: Selection, matched: ColumnElement[bool]) -> datetime | None:
        """The earliest age among matched records expired by age: one probe of the age field's index."""
        age = selection.age
        if age is None or selection.erasure is not None:
            return None
        column = table.c[age.field]
        order, value = self.dialect.earliest_first(column)
        aged = and_(matched, self.dialect.has_timestamp(column), self.dialect.before(column, age.cutoff))
        row = self._one_or_none(select(value).select_from(table).where(aged).order_by(order).limit(1))
        return stored_instant(row[0]) if row is not None else None

    def scan_warnings(self, selection: Selection) -> list[str]:
        """An age rule whose field leads no index makes every count and batch read the whole table.

        Not said of SQLite, which compares its text timestamps through julianday(): no plain index serves that.
        """
        if selection.age is None or isinstance(self.dialect, SqliteDialect):
            return []
        table = self.table(selection.target)
        inspector = inspect(self.engine)
        leading = {index["column_names"][0] for index in inspector.get_indexes(table.name, schema=table.schema)
                   if index["column_names"]}
        leading |= {column.name for column in list(table.primary_key.columns)[:1]}
        if selection.age.field in leading:
            return []
        return [f"no index on {selection.age.field}: every run scans the whole table {table.fullname} "
                f"(CREATE INDEX {table.name}_{selection.age.field} ON {table.fullname} ({selection.age.field}))"]

    def held_ids(self, selection: Selection, batch_size: int, id_key: bytes) -> Iterator[tuple[str, ...]]:
        table = self.table(selection.target)
        keys = self._key(table, selection)
        statement = select(*keys).where(self._predicates(table, selection)["held"]).order_by(*keys)
        hasher = KeyedHasher(id_key)
        with self.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=batch_size).execute(statement)
            for chunk in result.partitions(batch_size):
                yield hasher.records(chunk)

    def build(self, selection: Selection, action: Action, size: int, id_key: bytes | None = None, *,
              excluded: Sequence[Any] = (), rows: Sequence[Any] | None = None) -> Delete | Update:
        """One batch: up to `size` matching records (or exactly `rows`, by locator), changed only if they still match.

        `excluded` names (by locator) records the store refused earlier in this run, so they are not picked again.
        """
        table = self.table(selection.target)
        keys = self._key(table, selection)
        still_matching = self._predicates(table, selection, locking=True)["matched"]
        if rows is not None:
            chosen = self.dialect.located(self.dialect.locator(table, keys), rows)
        else:
            candidates = table.alias("candidates")
            candidate_keys = [candidates.c[key.name] for key in keys]
            matching = self._predicates(candidates, selection, locking=True)["matched"]
            if excluded:
                matching = and_(matching, not_(self.dialect.located(
                    self.dialect.locator(candidates, candidate_keys), excluded)))
            chosen = self.dialect.chosen_rows(keys, candidate_keys, matching, size)
        statement: Delete | Update
        if action.kind == "delete":
            statement = delete(table)
        else:
            values = {t.field: self.dialect.transform(table.c[t.field], t, action.hmac_key)
                      for t in action.transforms if t.kind != "keep"}
            assert action.marker is not None
            values[action.marker] = literal(action.marked_at, table.c[action.marker].type)
            statement = update(table).values(values)
        statement = statement.where(chosen, still_matching)
        # keys come back only to be named by keyed hash in the audit (hashing here beats SQL's sha256 3x)
        return statement.returning(*keys) if id_key else statement

    def _candidate_rows(self, selection: Selection, size: int, excluded: Sequence[Any]) -> list[Any]:
        """The locators of the records a batch of `size` would pick now: what a refused batch held."""
        table = self.table(selection.target)
        keys = self._key(table, selection)
        locator = self.dialect.locator(table, keys)
        matching = self._predicates(table, selection)["matched"]
        if excluded:
            matching = and_(matching, not_(self.dialect.located(locator, excluded)))
        rows = self._all(select(*locator).select_from(table).where(matching).limit(size))
        return [row[0] if len(locator) == 1 else tuple(row) for row in rows]

    def statement(self, selection: Selection, action: Action) -> str:
        compiled = self.build(selection, action, 1).compile(self.engine)
        return str(compiled).replace("\n", " ")

    def apply(self, selection: Selection, action: Action, *, batch_size: int, limit: int,
              id_key: bytes | None, should_stop: Callable[..., bool] = lambda wait=True: False) -> Iterator[Batch]:
        """Batches of the whole predicate; a batch the store refuses is split until the refused records stand alone.

        A refused record (a foreign key from a newer row, a trigger, a check) is counted as blocked and left out of
        later batches, so one such record never stalls the rest of the rule. Isolation costs about
        2 x log2(batch size) small statements per refused record, within ISOLATION_BUDGET per rule and run.

        Where records are named (`id_key`) and the database allows it, the next batch runs on a second connection
        while this one is named and recorded: hashing a batch costs Python about as long as the batch costs the
        database. That happens only when the next batch may start without waiting (`should_stop(wait=False)`: no
        stop asked for, no replica lagging); otherwise this batch is yielded (recorded) first, then the run waits or
        stops. Every batch committed is yielded, whatever happens between two batches; only a crash can leave two
        batches unrecorded instead of one.
        """
        remaining = limit
        hasher = KeyedHasher(id_key) if id_key else None
        excluded: list[Any] = []
        spent = [0]
        built: tuple[tuple[int, int], Delete | Update] | None = None  # kept while size and exclusions hold

        def start(asked: bool = False) -> Future[tuple[int, Sequence[Sequence[Any]]]] | None:
            """The next batch under way, or None when nothing is left or a stop was asked for (`asked`: the caller
            has just asked, without waiting, and may go on)."""
            nonlocal built
            if remaining <= 0 or (not asked and should_stop()):
                return None
            size = min(batch_size, remaining)
            if built is None or built[0] != (size, len(excluded)):
                built = (size, len(excluded)), self.build(selection, action, size, id_key, excluded=excluded)
            return runner.submit(self._batch, built[1], hasher is not None, selection.target)

        overlapping = hasher is not None and self.dialect.overlapping_batches
        with _BatchRunner(overlapping) as runner:
            pending = start()
            try:
                while pending is not None:
                    under_way, pending = pending, None
                    try:
                        count, keys = under_way.result()
                    except _Refused:
                        candidates = self._candidate_rows(selection, min(batch_size, remaining), excluded)
                        if not candidates:
                            return
                        for batch in self._isolate(selection, action, candidates, id_key, hasher, excluded, spent):
                            remaining -= batch.count
                            yield batch
                        pending = start()
                        continue
                    if not count:
                        return
                    remaining -= count
                    go_on = False
                    try:  # may the next batch start right now, no stop asked for and no replica to wait for?
                        go_on = overlapping and remaining > 0 and not should_stop(wait=False)
                        if go_on:
                            pending = start(asked=True)  # runs while this batch is named and recorded
                    finally:  # even when asking failed: this batch is committed, so it is recorded
                        yield _named(count, keys, hasher)
                    if not go_on:  # recorded first; then the wait, the stop, or the next batch
                        pending = start()
            finally:
                _unrecorded(pending)

    def _isolate(self, selection: Selection, action: Action, rows: list[Any], id_key: bytes | None,
                 hasher: KeyedHasher | None, excluded: list[Any], spent: list[int]) -> Iterator[Batch]:
        """Bisect a refused batch: halves that pass are committed, single records that fail are blocked."""
        parts = [rows[len(rows) // 2:], rows[:len(rows) // 2]]
        while parts:
            part = parts.pop()
            if not part:
                continue
            if spent[0] >= ISOLATION_BUDGET:  # left for another night: still refused somewhere in there
                excluded.extend(part)
                yield Batch(0, unsettled=len(part))
                continue
            spent[0] += 1
            try:
                count, keys = self._batch(self.build(selection, action, len(part), id_key, rows=part),
                                          hasher is not None, selection.target)
                yield _named(count, keys, hasher)
            except _Refused as refused:
                if len(part) == 1:
                    excluded.extend(part)
                    yield Batch(0, blocked=1, refusal=refused.reason)
                else:
                    parts += [part[len(part) // 2:], part[:len(part) // 2]]

    def _batch(self, statement: Delete | Update, keyed: bool, target: str) -> tuple[int, Sequence[Sequence[Any]]]:
        """Run one batch in its own transaction, retrying lost connections; a refusal by the data is `_Refused`.

        Returns how many records changed, and (when `keyed`) their keys, as the statement returned them.
        """
        raw = keyed and self._driver_values(statement)

        def run() -> tuple[int, Sequence[Sequence[Any]]]:
            with self.engine.begin() as connection:
                result = connection.execute(statement)
                if not keyed:
                    return result.rowcount, ()
                # the driver's own tuples where SQLAlchemy would not convert the values: 0.85 µs a record less
                keys = result.cursor.fetchall() if raw else result.all()
                return len(keys), keys

        try:
            return retrying(run, transient, what=f"batch on {target}")
        except sa_exc.DBAPIError as exc:
            if refused_by_a_record(exc):
                raise _Refused(db_error(exc.orig)) from None
            raise ConnectorError(f"batch failed and was rolled back: {db_error(exc.orig)}") from None

    def _driver_values(self, statement: Delete | Update) -> bool:
        """Whether the driver's values of the columns `statement` returns are what SQLAlchemy would hand back.

        They are when no column's type converts its results on this dialect (integers, text and uuids on
        PostgreSQL); a record is named by the text of its key, and that must not depend on the path it came by.
        """
        dialect = self.engine.dialect

        def passes_through(column: Any) -> bool:
            try:
                return column.type.dialect_impl(dialect).result_processor(dialect, None) is None
            except Exception:  # a type that must see the driver's type code to decide: it converts
                return False

        return all(passes_through(column) for column in statement.exported_columns)

    def _all(self, statement: Any) -> list[Any]:
        def query() -> list[Any]:
            with self.engine.connect() as connection:
                return list(connection.execute(statement).all())

        try:
            return retrying(query, transient, what="query")
        except sa_exc.DBAPIError as exc:
            raise ConnectorError(f"query failed: {db_error(exc.orig)}") from None

    def _one(self, statement: Any) -> Any:
        return self._one_or_none(statement, one=True)

    def _one_or_none(self, statement: Any, *, one: bool = False) -> Any:
        def query() -> Any:
            with self.engine.connect() as connection:
                result = connection.execute(statement)
                return result.one() if one else result.one_or_none()

        try:
            return retrying(query, transient, what="count")
        except sa_exc.DBAPIError as exc:
            raise ConnectorError(f"query failed: {db_error(exc.orig)}") from None


def _named(count: int, keys: Sequence[Sequence[Any]], hasher: KeyedHasher | None) -> Batch:
    """A changed batch, its records named by the keyed hash of their keys (when record ids are kept)."""
    if hasher is None:
        return Batch(count)
    names: list[str] = []
    for start in range(0, len(keys), NAMING_SLICE):
        names += hasher.records(keys[start:start + NAMING_SLICE])
        time.sleep(0)  # lets the next batch's thread take the interpreter as soon as the database answers it
    return Batch(count, tuple(names))


EXACT_TOTAL_BELOW = 10_000  # a table estimated smaller is counted exactly: cheap, and exact where stats lag
NAMING_SLICE = 250  # records named between two chances for the batch thread to run (about 0.2 ms)
ISOLATION_BUDGET = 500  # statements per rule and run spent isolating refused records; the rest waits a night


class _Refused(Exception):
    """The store refused a batch because of some record in it (integrity, data, or a trigger's exception)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _BatchRunner:
    """Runs batches on a second thread when overlapping (the caller names one batch while the next runs), else
    right away in the caller's thread. On leaving, a batch still under way is waited for, never abandoned."""


    def __init__(self, overlapping: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="retention-batch") if overlapping else None

    def submit(self, work: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._pool is not None:  # in a copy of this context: its log lines name the run and the rule
            return self._pool.submit(contextvars.copy_context().run, work, *args)
        done: Future[Any] = Future()
        try:
            done.set_result(work(*args))
        except Exception as exc:  # raised where the result is read, as from the thread
            done.set_exception(exc)
        return done

    def __enter__(self) -> _BatchRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _unrecorded(pending: Future[tuple[int, Sequence[Sequence[Any]]]] | None) -> None:
    """A batch that ran on while its caller stopped listening (the run failed recording the batch before it) cannot
    reach this run's audit: wait for it, and say in the log how many records it changed."""
    if pending is None:
        return
    try:
        count, _ = pending.result()
    except Exception:  # rolled back whole: nothing to record
        return
    if count:
        batch_unrecorded(count)


def _reads_as(column_type: Any, *kinds: type) -> bool:
    """Whether a column's values come back as one of these Python types (an unknown type does not)."""
    try:
        python_type = column_type.python_type
    except NotImplementedError:
        return False
    return python_type is not bool and issubclass(python_type, kinds)  # a bool is an int to Python, not a grace
