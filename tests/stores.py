"""Test-side access to the real stores: create tables, insert rows, read them back. Not our code under test.

Every store speaks the same small language (insert dicts, find dicts, a fingerprint of all data), so the
conformance scenarios in tests/conformance.py read the same whatever the store.
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import boto3
import bson
import pymongo
from sqlalchemy import create_engine, text

from retention.testing.store import Store
from tests.servers import postgres_bin


class SqlStore(Store):
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

    def standard_schema(self) -> None:
        """The tables the scenarios use: a client registry, cookie events, end users."""
        self.execute(f"CREATE TABLE clients (id TEXT PRIMARY KEY, status TEXT, closed_at {self.timestamptz})")
        self.execute(f"CREATE TABLE cookie_events (id INTEGER PRIMARY KEY, visitor_id TEXT, "
                     f"collected_at {self.timestamptz}, ip TEXT)")
        self.execute(f"CREATE TABLE end_users (id INTEGER PRIMARY KEY, client_id TEXT, email TEXT, full_name TEXT, "
                     f"phone TEXT, last_ip {self.inet}, birth_date DATE, signup_at {self.timestamptz}, "
                     f"anonymized_at {self.timestamptz})")

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            columns = ", ".join(row)
            values = ", ".join(f":{name}" for name in row)
            self.execute(f"INSERT INTO {table} ({columns}) VALUES ({values})",
                         {k: self.ts(v) if isinstance(v, datetime) else v for k, v in row.items()})

    def find(self, table: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(f"SELECT * FROM {table} ORDER BY id"))]

    def update(self, table: str, record_id: Any, values: dict[str, Any]) -> None:
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        self.execute(f"UPDATE {table} SET {assignments} WHERE id = :record_id",
                     {**{k: self.ts(v) if isinstance(v, datetime) else v for k, v in values.items()},
                      "record_id": record_id})

    def close(self) -> None:
        self.engine.dispose()


class PostgresStore(SqlStore):
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


class SqliteStore(SqlStore):
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


class MongoStore(Store):
    """A fresh database on a MongoDB wire-protocol server; `id` in scenarios is the document's `_id`."""

    type_name = "mongodb"
    target_key = "collection"
    id_field = "_id"

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, tz_aware=True)
        self.database = self.client[database]

    def connector_options(self) -> str:
        return f'url = "${{APP_DATABASE_URL}}"\ndatabase = "{self.database.name}"'

    def day(self, value: date) -> Any:
        return datetime(value.year, value.month, value.day, tzinfo=UTC)

    def standard_schema(self) -> None:
        for name in ("clients", "cookie_events", "end_users"):
            self.database.create_collection(name)

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        documents = [{("_id" if k == "id" else k): v for k, v in row.items()} for row in rows]
        if documents:
            self.database[table].insert_many(documents)

    def find(self, table: str) -> list[dict[str, Any]]:
        return [{("id" if k == "_id" else k): v for k, v in document.items()}
                for document in self.database[table].find().sort("_id", 1)]

    def update(self, table: str, record_id: Any, values: dict[str, Any]) -> None:
        self.database[table].update_one({"_id": record_id}, {"$set": values})

    def fingerprint(self) -> str:
        """SHA-256 of every document's BSON bytes, collection by collection, in natural order."""
        digest = hashlib.sha256()
        for name in sorted(self.database.list_collection_names()):
            digest.update(name.encode())
            for document in self.database[name].find().sort("_id", 1):
                digest.update(bson.encode(document))
        return digest.hexdigest()

    def close(self) -> None:
        self.client.drop_database(self.database.name)
        self.client.close()


class S3Store(Store):
    """Fresh buckets on an S3 endpoint: a table is a bucket, a row an object keyed `str(id)`, its fields metadata.

    Bucket names cannot hold `_`, and every store has its own: `cookie_events` is `b-<8 hex>-cookie-events`. A
    field is user metadata named with `-` for `_` (header-safe everywhere): `collected_at` is the metadata
    `collected-at` (RFC 3339; absent when None), which a rule names `metadata:collected-at`.
    """

    type_name = "s3"
    target_key = "bucket"

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"b-{uuid.uuid4().hex[:8]}-"
        self.s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")

    def connector_options(self) -> str:
        return 'endpoint_url = "${APP_DATABASE_URL}"\nregion = "us-east-1"'

    def target_name(self, table: str) -> str:
        return self.prefix + table.replace("_", "-")

    def age_field(self, name: str) -> str:
        return f"metadata:{_metadata_name(name)}"

    def ts(self, value: datetime | None) -> Any:
        return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")

    def standard_schema(self) -> None:
        for name in ("clients", "cookie_events", "end_users"):
            self.s3.create_bucket(Bucket=self.target_name(name))

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self._put(table, row["id"], {k: v for k, v in row.items() if k != "id"})

    def _put(self, table: str, record_id: Any, fields: dict[str, Any]) -> None:
        metadata = {_metadata_name(k): str(self.ts(v) if isinstance(v, datetime) else v)
                    for k, v in fields.items() if v is not None}
        self.s3.put_object(Bucket=self.target_name(table), Key=str(record_id), Body=b"", Metadata=metadata)

    def _metadata(self, bucket: str, key: str, version_id: str | None = None) -> dict[str, str]:
        version = {"VersionId": version_id} if version_id not in (None, "null") else {}
        return dict(self.s3.head_object(Bucket=bucket, Key=key, **version)["Metadata"])

    def _fields(self, bucket: str, key: str) -> dict[str, Any]:
        return {name.replace("-", "_"): value for name, value in self._metadata(bucket, key).items()}

    def find(self, table: str) -> list[dict[str, Any]]:
        """Every object of the table's bucket: its id (the key, as an int) and its metadata, by ascending id."""
        bucket = self.target_name(table)
        rows = [{"id": int(item["Key"]), **self._fields(bucket, item["Key"])}
                for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for item in page.get("Contents", [])]
        return sorted(rows, key=lambda row: row["id"])

    def update(self, table: str, record_id: Any, values: dict[str, Any]) -> None:
        self._put(table, record_id, {**self._fields(self.target_name(table), str(record_id)), **values})

    def buckets(self) -> list[str]:
        return sorted(b["Name"] for b in self.s3.list_buckets().get("Buckets", []) if b["Name"].startswith(self.prefix))

    def fingerprint(self) -> str:
        """SHA-256 of every version and delete marker of the store's buckets: key, ETag, version, metadata, time."""
        digest = hashlib.sha256()
        for bucket in self.buckets():
            digest.update(bucket.encode())
            for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                for item in page.get("Versions", []):
                    metadata = self._metadata(bucket, item["Key"], item["VersionId"])
                    digest.update(repr((item["Key"], item["ETag"], item["VersionId"], item["IsLatest"],
                                        item["LastModified"].isoformat(), sorted(metadata.items()))).encode())
                for item in page.get("DeleteMarkers", []):
                    digest.update(repr(("marker", item["Key"], item["VersionId"], item["IsLatest"],
                                        item["LastModified"].isoformat())).encode())
        return digest.hexdigest()

    def close(self) -> None:
        for bucket in self.buckets():
            for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                objects = [{"Key": item["Key"], "VersionId": item["VersionId"]}
                           for item in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                if objects:
                    self.s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
            self.s3.delete_bucket(Bucket=bucket)
        self.s3.close()


def _metadata_name(field: str) -> str:
    return field.replace("_", "-")
