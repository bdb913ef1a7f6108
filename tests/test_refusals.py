"""Records the store refuses to change: isolated, counted as blocked, never stalling the rest of the rule."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, NOW_TEXT, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import PostgresStore, SqlStore

REFUSED = 42


def refuse_one(store: SqlStore) -> str:
    """Make the store refuse to delete cookie event 42, its own way; return what the error names."""
    if isinstance(store, PostgresStore):
        store.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, "
                      "event_id INTEGER CONSTRAINT orders_event_fk REFERENCES cookie_events(id))")
        store.insert("orders", [{"id": 1, "event_id": REFUSED}])
        return "orders_event_fk"
    store.execute(f"CREATE TRIGGER keep_42 BEFORE DELETE ON cookie_events WHEN OLD.id = {REFUSED} "
                  "BEGIN SELECT RAISE(ABORT, 'kept by policy'); END")
    return "kept by policy"


@pytest.fixture
def refusing(store: SqlStore, tmp_path: Path) -> tuple[Sandbox, SqlStore, str]:
    store.standard_schema()
    add_cookies(store, NOW, *[timedelta(days=800)] * 100, timedelta(days=1))
    named = refuse_one(store)
    box = make_sandbox(tmp_path / "sandbox", store)
    box.write(COOKIE_RULE, clients=False)
    box.config.write_text(box.config.read_text().replace("batch_size = 2", "batch_size = 10"))
    return box, store, named


def test_one_refused_record_is_isolated_and_the_rest_of_the_rule_is_done(refusing: tuple[Sandbox, SqlStore, str]
                                                                       ) -> None:
    """100 expired, one refused: 99 deleted in one night, 1 blocked, the rule in error naming what refused."""
    box, store, named = refusing
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 1 == result.exit_code, result.stdout + result.stderr
    rule = json.loads(result.stdout)["rules"][0]
    assert (99, 1, "error") == (rule["changed"], rule["blocked"], rule["status"])
    assert named in rule["error"] and "cookie_events" in rule["error"]
    assert [REFUSED, 100] == [r["id"] for r in store.find("cookie_events")]
    events = [json.loads(line) for line in Path(json.loads(result.stdout)["audit_file"]).read_text().splitlines()]
    failed = next(e for e in events if e["event"] == "rule_failed")
    assert (99, 1) == (failed["changed"], failed["blocked"])
    assert 99 == sum(e["count"] for e in events if e["event"] == "batch_applied")
    assert 0 == box.cli("audit", "verify").exit_code


def test_a_refused_record_costs_a_bounded_number_of_statements_each_night(refusing: tuple[Sandbox, SqlStore, str]
                                                                          ) -> None:
    """The next night it is isolated again at the same small cost; the rest stays done."""
    box, store, _ = refusing
    box.cli("run", "--now", NOW_TEXT)
    result = box.cli("run", "--now", NOW_TEXT, "--format", "json")
    rule = json.loads(result.stdout)["rules"][0]
    assert (0, 1) == (rule["changed"], rule["blocked"])
    assert [REFUSED, 100] == [r["id"] for r in store.find("cookie_events")]


def test_isolation_costs_a_few_statements_per_refused_record(tmp_path: Path, pg_store: PostgresStore) -> None:
    """1,000 expired, batch 100, one refused: at most 2 x log2(100) + 2 statements more than with none refused."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from retention import engine
    from retention.config import load_config
    from retention.settings import Environment

    def statements(refused: bool, name: str) -> int:
        store = pg_store
        store.execute("DROP TABLE IF EXISTS orders, cookie_events, clients, end_users")
        store.standard_schema()
        add_cookies(store, NOW, *[timedelta(days=800)] * 1000)
        if refused:
            refuse_one(store)
        box = make_sandbox(tmp_path / name, store)
        box.write(COOKIE_RULE, clients=False)
        box.config.write_text(box.config.read_text().replace("batch_size = 2", "batch_size = 100"))
        seen: list[str] = []

        def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            if statement.lstrip().upper().startswith(("DELETE", "SELECT CTID", "SELECT")):
                seen.append(statement)

        event.listen(Engine, "before_cursor_execute", count)
        try:
            engine.run(load_config(box.config), Environment(box.env()), NOW, lambda: NOW + timedelta(seconds=1))
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        return len(seen)

    extra = statements(True, "refused") - statements(False, "clean")
    assert 0 < extra <= 2 * 7 + 2, extra

