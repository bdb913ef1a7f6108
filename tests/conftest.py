"""Fixtures: real stores (PostgreSQL started per session, SQLite files), keys, configs, and the CLI."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from retention.testing.sandbox import PSEUDONYM_KEY
from tests.servers import (
    TimestampAuthority,
    dask_cluster,
    moto_server,
    postgres_server,
    seaweedfs_server,
    tsa_server,
)
from tests.stores import MongoStore, PostgresStore, SqliteStore, Store

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session: RETENTION_TEST_POSTGRES_URL, or one started from its binaries."""
    existing = os.environ.get("RETENTION_TEST_POSTGRES_URL")
    if existing:
        yield existing
        return
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the session server; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["postgres", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each SQL store the connector supports, empty."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_database")
        yield PostgresStore(url)
    else:
        yield SqliteStore(tmp_path / "app.db")


# S3 servers take any credentials; SeaweedFS makes these its admin identity (needed for governance bypass refusals).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "retention-test-admin")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "retention-test-secret-key")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    """A real Dask scheduler with two workers for the session; the workers hold the sandboxes' pseudonym secret."""
    with dask_cluster(2, env={"RETENTION_PSEUDONYM_KEY": PSEUDONYM_KEY}) as cluster:
        yield cluster.address


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's S3 server over HTTP, for the session (RETENTION_TEST_S3_URL points at another S3 instead)."""
    existing = os.environ.get("RETENTION_TEST_S3_URL")
    if existing:
        yield existing
        return
    with moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def seaweedfs_url() -> Iterator[str]:
    """A real S3 server (SeaweedFS) for the session: Object Lock semantics exactly like AWS."""
    with seaweedfs_server() as url:
        yield url


@pytest.fixture(scope="session")
def tsa() -> Iterator[TimestampAuthority]:
    """A local RFC 3161 time-stamping authority (openssl ts behind http.server) and its CA, for the session."""
    with tsa_server() as authority:
        yield authority


@pytest.fixture(scope="session")
def mongodb_url() -> Iterator[str]:
    """A MongoDB wire-protocol server: MONGODB_URI, or an in-process SecantusDB started for the session."""
    existing = os.environ.get("MONGODB_URI")
    if existing:
        yield existing
        return
    from secantus import SecantusDBServer

    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=":memory:")
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def mongo_store(mongodb_url: str) -> Iterator[MongoStore]:
    """A fresh database on the session's MongoDB server; dropped afterwards."""
    store = MongoStore(mongodb_url, f"t_{uuid.uuid4().hex[:12]}")
    yield store
    store.close()


@pytest.fixture
def pg_store(pg_database: str) -> PostgresStore:
    return PostgresStore(pg_database)


@pytest.fixture(autouse=True)
def no_run_outlives_its_test() -> Iterator[None]:
    """A `retention` process a test started is stopped when the test ends, whatever the test did."""
    yield
    import signal
    import sys

    script = str(Path(sys.executable).parent / "retention")
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            command = (status.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields.get("PPid", "0")) == os.getpid() and script.encode() in command:
            os.kill(int(status.parent.name), signal.SIGKILL)
