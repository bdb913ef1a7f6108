"""Managed legal holds: a table legal maintains, read at every plan and run, shown by `holds list`."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import COOKIE_RULE, END_USER_RULE, NOW_TEXT, seed_clients
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import PostgresStore

SOURCE = '[holds_source]\nconnector = "app"\ntable = "legal_holds"\n'


@pytest.fixture
def sandbox(tmp_path: Path, pg_store: PostgresStore) -> Sandbox:
    pg_store.standard_schema()
    pg_store.execute("CREATE TABLE legal_holds (name TEXT, client_id TEXT, rule TEXT, until TIMESTAMPTZ, "
                     "reason TEXT)")
    seed_clients(pg_store, NOW)
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(END_USER_RULE, extra=SOURCE)
    return box


def place(store: PostgresStore, name: str, client: str | None = None, rule: str | None = None,
          until: Any = None) -> None:
    store.insert("legal_holds", [{"name": name, "client_id": client, "rule": rule, "until": until,
                                  "reason": "litigation"}])


def planned(sandbox: Sandbox) -> dict[str, Any]:
    result = sandbox.cli("plan", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    return json.loads(result.stdout)["rules"][0]  # type: ignore[no-any-return]


def test_a_hold_placed_after_plan_stops_the_run(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """Plan says 3 would change; legal places a hold on c-gone; the run keeps c-gone's 2 records."""
    assert (3, 0) == (planned(sandbox)["matched"], planned(sandbox)["held"])
    place(pg_store, "lit-7", client="c-gone")
    report = json.loads(sandbox.cli("run", "--now", NOW_TEXT, "--format", "json").stdout)
    assert (1, 2, 1) == (report["rules"][0]["changed"], report["rules"][0]["held"], report["rules"][0]["matched"])
    assert [4] == [r["id"] for r in pg_store.find("end_users") if r["anonymized_at"]]


def test_an_expired_hold_no_longer_applies(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """A hold whose `until` has passed keeps nothing."""
    place(pg_store, "old", client="c-gone", until=NOW - timedelta(days=1))
    assert (3, 0) == (planned(sandbox)["matched"], planned(sandbox)["held"])


def test_a_hold_on_a_rule_keeps_all_of_it(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """A row naming only a rule holds every expired record of that rule."""
    place(pg_store, "audit", rule="end-users", until=NOW + timedelta(days=30))
    assert (0, 3) == (planned(sandbox)["matched"], planned(sandbox)["held"])


def test_a_hold_naming_an_unknown_rule_holds_everything(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """A typo in a hold's rule errs on the side of keeping data, and the log says so."""
    place(pg_store, "typo", rule="end-user")
    result = sandbox.cli("plan", "--now", NOW_TEXT, "--format", "json")
    assert (0, 3) == (json.loads(result.stdout)["rules"][0]["matched"], json.loads(result.stdout)["rules"][0]["held"])
    assert "hold_names_unknown_rule" in result.stderr


def test_holds_list_shows_source_and_records_kept(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """`holds list` names each active hold, where it comes from and how many records it keeps now."""
    place(pg_store, "lit-7", client="c-gone")
    place(pg_store, "lapsed", client="c-asked", until=NOW - timedelta(days=400))
    sandbox.write(END_USER_RULE, extra=SOURCE + '[[holds]]\nname = "cfg"\nclient_ids = ["c-asked"]\n')
    listed = json.loads(sandbox.cli("holds", "list", "--format", "json").stdout)
    assert [("cfg", "config", 1), ("lit-7", "app:legal_holds", 2)] == [
        (h["name"], h["source"], h["records_held"]) for h in listed]


def test_an_unreadable_holds_table_stops_the_run_unchanged(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """If the holds cannot be read, nothing is deleted: the run stops before it starts, with a clear message."""
    pg_store.execute("DROP TABLE legal_holds")
    before = pg_store.fingerprint()
    result = sandbox.cli("run", "--now", NOW_TEXT)
    assert 1 == result.exit_code
    assert "cannot read legal holds from app:legal_holds" in result.stderr
    assert before == pg_store.fingerprint()


def test_a_client_hold_row_fails_a_rule_that_cannot_tell_clients(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """A hold row naming a client, in scope of an age-only rule, fails that rule by name; the other rule runs."""
    sandbox.write(END_USER_RULE + COOKIE_RULE, extra=SOURCE)
    place(pg_store, "lit-8", client="c-gone")
    result = sandbox.cli("run", "--now", NOW_TEXT, "--format", "json")
    assert 1 == result.exit_code, result.stdout + result.stderr
    rules = {r["name"]: r for r in json.loads(result.stdout)["rules"]}
    assert ("ok", 2) == (rules["end-users"]["status"], rules["end-users"]["held"])
    assert "error" == rules["cookies"]["status"]
    assert "'lit-8'" in rules["cookies"]["error"] and "'cookies'" in rules["cookies"]["error"]
