"""The conformance suite on every built-in connector, each against its real server (S3: moto's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance import ConnectorConformance
from tests.stores import MongoStore, PostgresStore, S3Store, SqliteStore


class TestPostgres(ConnectorConformance):
    @pytest.fixture
    def store(self, pg_database: str) -> Iterator[PostgresStore]:
        store = PostgresStore(pg_database)
        yield store
        store.close()


class TestSqlite(ConnectorConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        store = SqliteStore(tmp_path / "app.db")
        yield store
        store.close()


class TestMongo(ConnectorConformance):
    @pytest.fixture
    def store(self, mongo_store: MongoStore) -> MongoStore:
        return mongo_store


class TestS3(ConnectorConformance):
    @pytest.fixture
    def store(self, moto_url: str) -> Iterator[S3Store]:
        store = S3Store(moto_url)
        yield store
        store.close()
