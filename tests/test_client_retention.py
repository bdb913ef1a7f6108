"""Per-client retention: a client's contract shortens or extends a client-lifetime rule's grace period.

`clients.retention_field` names a registry column holding the client's own grace: a duration ("10 days",
"6 months"), a whole number of days, or (PostgreSQL) an interval. Empty means the rule's grace; a value that cannot
be read makes the client's records unknown_age, never touched.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import END_USER_RULE
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import MongoStore, PostgresStore, SqlStore

NOW_TEXT = "2026-11-29T03:00:00Z"
# (client, status, ended days ago, its own grace) under a rule with a 30-day grace
CLIENTS = [("c-short", "closed", 20, "10 days"),     # its contract: 10 days -> expired although the rule says 30
           ("c-long", "closed", 60, "90"),           # 90 days -> kept although the rule's 30 have passed
           ("c-default", "closed", 60, None),        # the rule's 30 days -> expired
           ("c-months", "closed", 200, "6 months"),  # 6 months before NOW is 2026-05-29: ended before -> expired
           ("c-bad", "closed", 60, "soon"),          # unreadable -> unknown, never touched
           ("c-negative", "closed", 60, "-5"),       # unreadable -> unknown
           ("c-active", "active", None, "1 day")]    # active: a short grace changes nothing
EXPIRED = {"c-short", "c-default", "c-months"}


def seed(store: Any, retention: Any = lambda value: value) -> None:
    store.insert("clients", [{"id": c, "status": s, "closed_at": NOW - timedelta(days=d) if d else None,
                              "retention": retention(r)} for c, s, d, r in CLIENTS])
    store.insert("end_users", [{"id": i, "client_id": c, "email": f"user{i}@example.org", "full_name": "Ada",
                                "phone": "+44 20 7946 0958", "last_ip": "203.0.113.77", "anonymized_at": None}
                               for i, (c, *_) in enumerate(CLIENTS)])


def configure(sandbox: Sandbox) -> None:
    sandbox.write(END_USER_RULE)
    sandbox.config.write_text(sandbox.config.read_text().replace(
        'ended_at_field = "closed_at"', 'ended_at_field = "closed_at"\nretention_field = "retention"'))


def outcome(sandbox: Sandbox, store: Any) -> tuple[dict[str, Any], set[str]]:
    planned = json.loads(sandbox.cli("plan", "--now", NOW_TEXT, "--format", "json").stdout)["rules"][0]
    result = sandbox.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    changed = {row["client_id"] for row in store.find("end_users") if row.get("anonymized_at") is not None}
    return planned, changed


def test_a_clients_own_grace_overrides_the_rules_on_sql(store: SqlStore, tmp_path: Path) -> None:
    store.standard_schema()
    store.execute("ALTER TABLE clients ADD COLUMN retention TEXT")
    seed(store)
    sandbox = make_sandbox(tmp_path / "sandbox", store)
    configure(sandbox)
    assert 0 == sandbox.cli("check").exit_code
    planned, changed = outcome(sandbox, store)
    assert (3, 2) == (planned["matched"], planned["unknown_age"])  # unknown: c-bad's and c-negative's users
    assert EXPIRED == changed


def test_a_clients_own_grace_on_mongodb_as_days_or_text(mongo_store: MongoStore, tmp_path: Path) -> None:
    """Numbers are days; the registry lives beside the records, and the verdict is pushed as lists."""
    mongo_store.standard_schema()
    seed(mongo_store, lambda value: int(value) if isinstance(value, str) and value.isdigit() else value)
    sandbox = make_sandbox(tmp_path / "sandbox", mongo_store)
    configure(sandbox)
    planned, changed = outcome(sandbox, mongo_store)
    assert 3 == planned["matched"]
    assert EXPIRED == changed


def test_a_postgres_interval_column_is_a_grace(pg_store: PostgresStore, tmp_path: Path) -> None:
    pg_store.standard_schema()
    pg_store.execute("ALTER TABLE clients ADD COLUMN retention INTERVAL")
    intervals = {"10 days": "10 days", "90": "90 days", "6 months": "183 days"}
    seed(pg_store, lambda value: intervals.get(value))  # unreadable text has no interval: NULL, the rule's grace
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    configure(sandbox)
    _, changed = outcome(sandbox, pg_store)
    assert EXPIRED | {"c-bad", "c-negative"} == changed


@pytest.mark.parametrize("column_type", ["TIMESTAMP", "BOOLEAN"])
def test_check_names_a_retention_column_of_the_wrong_type(column_type: str, pg_store: PostgresStore,
                                                          tmp_path: Path) -> None:
    pg_store.standard_schema()
    pg_store.execute(f"ALTER TABLE clients ADD COLUMN retention {column_type}")
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    configure(sandbox)
    result = sandbox.cli("check")
    assert 2 == result.exit_code and "clients.retention_field retention" in result.stdout, result.stdout
