"""Test-side access to the real stores: create tables, insert rows, read them back. Not our code under test."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.servers import postgres_bin


class Store:
    """A SQL database the scenarios run on; `type_name` is the connector type that reaches it."""

    type_name = "sql"
    url: str
    timestamptz = "TIMESTAMP"
    timestamp = "TIMESTAMP"
    inet = "TEXT"

    def __init__(self, sqlalchemy_url: str) -> None:
        self.engine = create_engine(sqlalchemy_url)

    def execute(self, sql: str, rows: Sequence[dict[str, Any]] | dict[str, Any] | None = None) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(sql), rows or {})

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.query(sql, **params)[0][0]

    def ts(self, value: datetime | None) -> Any:
        return value

    def fingerprint(self) -> str:
        raise NotImplementedError

    def standard_schema(self) -> None:
        """The tables the scenarios use: a client registry, cookie events, end users."""
        self.execute(f"CREATE TABLE clients (id TEXT PRIMARY KEY, status TEXT, closed_at {self.timestamptz})")
        self.execute(f"CREATE TABLE cookie_events (id INTEGER PRIMARY KEY, visitor_id TEXT, "
                     f"collected_at {self.timestamptz}, ip TEXT)")
        self.execute(f"CREATE TABLE end_users (id INTEGER PRIMARY KEY, client_id TEXT, email TEXT, full_name TEXT, "
                     f"phone TEXT, last_ip {self.inet}, birth_date DATE, signup_at {self.timestamptz}, "
                     f"anonymized_at {self.timestamptz})")

    def close(self) -> None:
        self.engine.dispose()


class PostgresStore(Store):
    type_name = "postgres"
    timestamptz = "TIMESTAMPTZ"
    inet = "INET"

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(url.replace("postgresql://", "postgresql+psycopg://", 1))

    def fingerprint(self) -> str:
        """SHA-256 of a full pg_dump plus every row's ctid and xmin: equal means no row was even rewritten."""
        dump = subprocess.run([postgres_bin("pg_dump"), "--no-owner", "--inserts", self.url], check=True,
                              capture_output=True).stdout
        # pg_dump 15.14+ brackets the dump with a random \restrict key; it says nothing about the data
        lines = [line for line in dump.splitlines() if not line.startswith((b"\\restrict", b"\\unrestrict"))]
        versions = [
            self.query(f'SELECT string_agg(ctid::text || xmin::text, \',\' ORDER BY ctid) FROM "{schema}"."{table}"')
            for schema, table in self.query("SELECT schemaname, tablename FROM pg_tables "
                                            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
        ]
        return hashlib.sha256(b"\n".join(lines) + repr(versions).encode()).hexdigest()


class SqliteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        super().__init__(self.url)

    def ts(self, value: datetime | None) -> Any:
        if value is None:
            return None
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def fingerprint(self) -> str:
        self.engine.dispose()
        return hashlib.sha256(self.path.read_bytes()).hexdigest()
