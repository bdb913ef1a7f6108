"""Races on PostgreSQL: a record refreshed, or a client re-activated, while a batch is being applied is not touched."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest
from retention.connectors.postgres import PostgresConnector

from retention.config import load_config
from retention.units import compile_rule
from tests.conformance import COOKIE_RULE, END_USER_RULE, add_cookies, seed_clients
from tests.conftest import NOW
from tests.helpers import make_sandbox
from tests.stores import PostgresStore


def apply_while_blocked(store: PostgresStore, rule_text: str, blocker_sql: str, tmp_path) -> list[int]:
    """Hold a row lock with `blocker_sql`, start the rule's batch, commit the blocker, return what changed."""
    sandbox = make_sandbox(tmp_path / "sandbox", store)
    config = load_config(sandbox.write(rule_text))
    work = compile_rule(config, config.rules[0], NOW, None)
    connector = PostgresConnector("app", {"url": store.url})
    changed: list[int] = []
    with psycopg.connect(store.url) as writer, psycopg.connect(store.url, autocommit=True) as observer:
        writer.execute(blocker_sql)  # uncommitted: holds the row lock
        worker = threading.Thread(target=lambda: changed.extend(
            b.count for b in connector.apply(work.selection, work.action, batch_size=100, limit=100, id_key=None)))
        worker.start()
        deadline = time.monotonic() + 10
        while observer.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                               ).fetchone()[0] == 0:  # type: ignore[index]
            assert time.monotonic() < deadline, "the batch never waited for the writer's lock"
            time.sleep(0.02)
        writer.commit()
        worker.join(timeout=10)
    connector.close()
    return changed


@pytest.fixture
def store(pg_store: PostgresStore) -> PostgresStore:
    pg_store.standard_schema()
    return pg_store


def test_a_record_refreshed_mid_batch_is_not_deleted(store: PostgresStore, tmp_path) -> None:
    """The delete re-checks the age of the row's new version after waiting for the writer."""
    add_cookies(store, NOW, timedelta(days=800), timedelta(days=800), timedelta(days=800))
    changed = apply_while_blocked(store, COOKIE_RULE,
                                  "UPDATE cookie_events SET collected_at = now() WHERE id = 1", tmp_path)
    assert [2] == changed
    assert [(1,)] == store.query("SELECT id FROM cookie_events")


def test_a_client_reactivated_mid_batch_keeps_its_records(store: PostgresStore, tmp_path) -> None:
    """The anonymize waits on the registry row, then sees the client active again and leaves its users alone."""
    seed_clients(store, NOW)
    changed = apply_while_blocked(store, END_USER_RULE,
                                  "UPDATE clients SET status = 'active', closed_at = NULL WHERE id = 'c-gone'",
                                  tmp_path)
    assert [1] == changed  # only c-asked's user; c-gone's two users were kept
    assert [(4,)] == store.query("SELECT id FROM end_users WHERE anonymized_at IS NOT NULL")
