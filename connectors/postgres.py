"""PostgreSQL: the SQL connector through psycopg 3, plus what only PostgreSQL offers here.

A run lock across hosts (a session advisory lock) and `check`'s list of missing GRANTs for a least-privilege role.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import ClassVar

import structlog
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import array

from retention.connector import Option
from retention.errors import ConnectorError, LockHeld
from retention.model import Action, Batch, OptionValue, Selection, Shard, shards_between
from retention.privileges import Need

from . import pg_partitions
from .sql import SqlConnector
from .sql_errors import db_error

log = structlog.get_logger("retention")


class PostgresConnector(SqlConnector):
    """PostgreSQL through psycopg 3; a plain libpq URL (postgresql://user@host/db) works as is."""

    type_name: ClassVar[str] = "postgres"
    description: ClassVar[str] = "PostgreSQL (psycopg 3); every transform runs server-side"
    options: ClassVar[tuple[Option, ...]] = (
        Option("url", required=True, help="a libpq URL, e.g. postgresql://retention@db:5432/app"),
    )

    rule_options: ClassVar[tuple[Option, ...]] = (
        Option("drop_partitions", kind=bool, default=False,
               help="drop range partitions of the age field whose every record is expired and none held, instead "
                    "of deleting them row by row (the role must own the table)"),
    )

    def __init__(self, name: str, options: Mapping[str, OptionValue]) -> None:
        super().__init__(name, options)
        self._wal_samples: deque[tuple[int, float]] = deque()  # (WAL position written, when), oldest first

    def check(self, selection: Selection, action: Action) -> list[str]:
        found = super().check(selection, action)
        if selection.scope.get("drop_partitions") and not found:
            found += pg_partitions.problems(self, self.table(selection.target), selection, action.kind)
        return found

    def statement(self, selection: Selection, action: Action) -> str:
        shown = super().statement(selection, action)
        if pg_partitions.wanted(selection) and action.kind == "delete":
            shown = "DETACH PARTITION + DROP TABLE for each wholly expired, unheld partition; then " + shown
        return shown

    def apply(self, selection: Selection, action: Action, *, batch_size: int, limit: int, id_key: bytes | None,
              should_stop: Callable[..., bool] = lambda wait=True: False) -> Iterator[Batch]:
        """Wholly expired partitions first (when asked for), then the rest of the records batch by batch."""
        remaining = limit
        if pg_partitions.wanted(selection) and action.kind == "delete":
            for batch in pg_partitions.drop_expired(self, selection, limit, id_key, should_stop):
                remaining -= batch.count
                yield batch
        yield from super().apply(selection, action, batch_size=batch_size, limit=remaining, id_key=id_key,
                                 should_stop=should_stop)

    def shards(self, selection: Selection, parts: int) -> list[Shard]:
        """Ranges of the key's first column holding about as many matching records each (`percentile_disc` over
        them, one pass of an index); a rule that drops partitions stays whole."""
        if parts < 2 or pg_partitions.wanted(selection):
            return []
        table = self.table(selection.target)
        key = self._key(table, selection)[0]
        fractions = [index / parts for index in range(1, parts)]
        statement = select(func.percentile_disc(array(fractions)).within_group(key)).where(
            self._predicates(table, selection)["matched"])
        return shards_between(key.name, sorted({cut for cut in self._one(statement)[0] or () if cut is not None}))

    def replica_lag(self) -> float | None:
        """Seconds since the oldest write of this run that the slowest streaming replica has not yet replayed.

        Measured here, from WAL positions sampled at each call, rather than read from pg_stat_replication's
        replay_lag, which keeps its last value while a replica stops replaying. None when there is no replica,
        or when the role may not see the replicas' positions (that takes pg_monitor).
        """
        try:
            current, replayed, replicas = self._all(text(
                "SELECT pg_current_wal_lsn()::text, min(replay_lsn)::text, count(*) FROM pg_stat_replication"))[0]
        except ConnectorError as exc:
            log.warning("replica_lag_unknown", error=str(exc))
            return None
        if not replicas:
            return None
        if replayed is None:
            log.warning("replica_lag_unknown", detail="the role cannot read the replicas' positions: GRANT pg_monitor")
            return None
        now, written, replayed_to = time.monotonic(), _lsn(current), _lsn(replayed)
        if not self._wal_samples or written > self._wal_samples[-1][0]:
            self._wal_samples.append((written, now))
        while self._wal_samples and self._wal_samples[0][0] <= replayed_to:
            self._wal_samples.popleft()
        return now - self._wal_samples[0][1] if self._wal_samples else 0.0

    @contextmanager
    def advisory_lock(self, key: int) -> Iterator[None]:
        """A session-level PostgreSQL advisory lock, held on its own connection for the whole run.

        PostgreSQL releases it when that session ends, so a host that dies never leaves the lock behind.
        """
        try:
            connection = self.engine.connect()
        except sa_exc.DBAPIError as exc:
            raise ConnectorError(f"cannot reach the database for the run lock: {db_error(exc.orig)}") from None
        try:
            got = connection.execute(select(func.pg_try_advisory_lock(key))).scalar()
            connection.commit()
            if not got:
                raise LockHeld(f"another host holds the run lock (PostgreSQL advisory lock {key} on connector "
                               f"{self.name}); nothing was changed")
            try:
                yield
            finally:
                connection.execute(select(func.pg_advisory_unlock(key)))
                connection.commit()
        finally:
            connection.close()

    def missing_grants(self, table_name: str, needs: tuple[Need, ...]) -> list[str]:
        """The GRANTs this connection's role lacks on `table_name`, from PostgreSQL's privilege functions."""
        table = self.table(table_name)
        place = f"{table.schema}.{table.name}" if table.schema else table.name
        query = text("SELECT current_user, n.nspname, c.relname FROM pg_class c "
                     "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:name)")
        role, schema, relation = self._all(query.bindparams(name=place))[0]
        qualified = f"{schema}.{relation}"
        grants = []
        for need in needs:
            if need.any_column:
                allowed = self._granted("has_any_column_privilege(:t, :p)", qualified, need.privilege)
                columns = [] if allowed else list(need.columns[:1])
            elif need.columns:
                columns = [c for c in need.columns if not self._granted(
                    "has_column_privilege(:t, :c, :p)", qualified, need.privilege, column=c)]
            else:
                columns = [] if self._granted("has_table_privilege(:t, :p)", qualified, need.privilege) else ["*"]
            if columns:
                on = "" if columns == ["*"] else f" ({', '.join(columns)})"
                grants.append(f'GRANT {need.privilege}{on} ON {qualified} TO "{role}";')
        return grants

    def _granted(self, function: str, table: str, privilege: str, column: str | None = None) -> bool:
        query = text(f"SELECT {function}").bindparams(t=table, p=privilege, **({"c": column} if column else {}))
        return bool(self._all(query)[0][0])

    @staticmethod
    def _driver_url(url: str) -> str:
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        return url


def _lsn(text: str) -> int:
    """A WAL position ("16/B374D848") as a number, to compare."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)
