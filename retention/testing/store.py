"""The test-side view of a store the conformance scenarios run on: create tables, insert rows, read them back.

A connector's own test package subclasses `Store` for its database (this is not the connector under test: it
talks to the store directly), then subclasses `ConnectorConformance` with a `store` fixture that yields one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any


class Store:
    """A database the scenarios run on; `type_name` is the connector type that reaches it."""

    type_name = "sql"
    target_key = "table"
    id_field = "id"
    url: str
    timestamptz = "TIMESTAMP"
    inet = "TEXT"

    def connector_options(self) -> str:
        return 'url = "${APP_DATABASE_URL}"'

    def target_name(self, table: str) -> str:
        """The name a rule gives for the scenarios' `table` (a table, collection or bucket of this store)."""
        return table

    def age_field(self, name: str) -> str:
        """How a rule's `expire.field` names the scenarios' timestamp field `name` on this store."""
        return name

    def ts(self, value: datetime | None) -> Any:
        return value

    def day(self, value: date) -> Any:
        """A calendar date as the store keeps one (a DATE in SQL, a midnight UTC date in BSON)."""
        return value

    def standard_schema(self) -> None:
        raise NotImplementedError

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        raise NotImplementedError

    def find(self, table: str) -> list[dict[str, Any]]:
        """Every record of `table` as a dict, by ascending id."""
        raise NotImplementedError

    def update(self, table: str, record_id: Any, values: dict[str, Any]) -> None:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass
