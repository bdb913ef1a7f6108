"""`audit find`: an auditor samples one record by its key and learns which runs changed or held it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import SqlStore

NOW_TEXT = "2026-11-29T03:00:00Z"
HOLD = '[[holds]]\nname = "lit-1"\nrules = ["cookies"]\nuntil = "2026-12-31"\n'


def found(sandbox: Sandbox, *args: str) -> tuple[int, list[dict[str, str]]]:
    result = sandbox.cli("audit", "find", *args, "--format", "json")
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    return result.exit_code, json.loads(result.stdout)["found"]


def test_find_names_the_runs_that_held_then_changed_a_record(store: SqlStore, tmp_path: Path) -> None:
    """Held by the first run, deleted by the second; a record never expired is in no run (exit 1)."""
    store.standard_schema()
    add_cookies(store, NOW, timedelta(days=800), timedelta(days=1))
    sandbox = make_sandbox(tmp_path / "sandbox", store)
    sandbox.write(COOKIE_RULE, clients=False, extra=HOLD)
    held_run = json.loads(sandbox.cli("run", "--now", NOW_TEXT, "--format", "json").stdout)
    sandbox.write(COOKIE_RULE, clients=False)
    changed_run = json.loads(sandbox.cli("run", "--now", NOW_TEXT, "--format", "json").stdout)
    code, sightings = found(sandbox, "0", "--rule", "cookies")
    assert 0 == code
    assert [(held_run["run_id"], "held"), (changed_run["run_id"], "changed")] == [
        (s["run_id"], s["kind"]) for s in sightings]
    assert changed_run["audit_file"] == sightings[1]["audit_file"]
    assert (1, []) == found(sandbox, "1", "--rule", "cookies")
    assert (1, []) == found(sandbox, "0", "--rule", "another-rule")
    assert "not a rule of" in sandbox.cli("audit", "find", "0", "--rule", "another-rule").stderr
    table = sandbox.cli("audit", "find", "0", "--rule", "cookies")
    assert 0 == table.exit_code and "changed" in table.stdout and "held" in table.stdout


def test_find_takes_a_composite_key_as_a_json_array(store: SqlStore, tmp_path: Path) -> None:
    """A composite key is named by the canonical array of its columns' text forms, in key order."""
    store.execute("CREATE TABLE visits (tenant TEXT NOT NULL, n INTEGER NOT NULL, created TIMESTAMP, "
                  "PRIMARY KEY (tenant, n))")
    store.insert("visits", [{"tenant": "t 1", "n": 7, "created": NOW - timedelta(days=800)},
                            {"tenant": "t 1", "n": 8, "created": NOW - timedelta(days=1)}])
    sandbox = make_sandbox(tmp_path / "sandbox", store)
    sandbox.write(COOKIE_RULE.replace("cookie_events", "visits").replace("collected_at", "created"), clients=False)
    assert 0 == sandbox.cli("run", "--now", NOW_TEXT).exit_code
    assert 0 == found(sandbox, '["t 1", 7]', "--rule", "cookies", "--composite")[0]
    assert 0 == found(sandbox, '["t 1","7"]', "--rule", "cookies", "--composite")[0]
    assert 1 == found(sandbox, '["t 1", 8]', "--rule", "cookies", "--composite")[0]
    assert 1 == found(sandbox, '["t 1", 7]', "--rule", "cookies")[0]  # without --composite: one text key
    bad = sandbox.cli("audit", "find", '["t 1", 7', "--rule", "cookies", "--composite")
    assert 2 == bad.exit_code and "JSON array" in bad.stderr and "t 1" not in bad.stderr


def test_find_needs_the_pseudonym_key(store: SqlStore, tmp_path: Path) -> None:
    """Without the key that named the records there is nothing to compare: exit 2, saying which key."""
    store.standard_schema()
    sandbox = make_sandbox(tmp_path / "sandbox", store)
    sandbox.write(COOKIE_RULE, clients=False)
    sandbox.config.write_text(sandbox.config.read_text().replace('record_ids = "hashed"', 'record_ids = "none"'))
    result = sandbox.cli("audit", "find", "0", "--rule", "cookies")
    assert 2 == result.exit_code and "pseudonym_key" in result.stderr, result.stderr
