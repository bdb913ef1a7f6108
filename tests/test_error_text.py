"""Error text from the database never carries a value, whatever SQLSTATE or fields a trigger chooses."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import make_sandbox
from tests.stores import PostgresStore

PERSONAL_EMAIL = "ada.lovelace@example.org"


def evidence_after_a_guarded_run(tmp_path: Path, pg_store: PostgresStore, raise_statement: str) -> str:
    """Everything a run shows (stdout, stderr, audit files) when a trigger runs `raise_statement` on delete."""
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, timedelta(days=800), timedelta(days=1))
    pg_store.execute(f"UPDATE cookie_events SET visitor_id = '{PERSONAL_EMAIL}'")
    pg_store.execute(f"""
        CREATE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {raise_statement}; END $$;
        CREATE TRIGGER guard BEFORE DELETE ON cookie_events FOR EACH ROW EXECUTE FUNCTION guard();
    """)
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    result = box.cli("run", "--format", "json")
    assert 1 == result.exit_code
    return result.stdout + result.stderr + "".join(
        p.read_text() for p in box.audit_dir.iterdir() if not p.name.endswith(".sig"))


@pytest.mark.parametrize("errcode", ["23514", "23000", "42501", "55000", "57014"])
def test_a_trigger_quoting_a_value_under_a_names_only_sqlstate_is_not_echoed(errcode: str, tmp_path: Path,
                                                                            pg_store: PostgresStore) -> None:
    """A trigger chooses its own SQLSTATE, even one whose server messages name identifiers only."""
    raise_statement = f"RAISE EXCEPTION 'visitor % may not be deleted', OLD.visitor_id USING ERRCODE = '{errcode}'"
    assert PERSONAL_EMAIL not in evidence_after_a_guarded_run(tmp_path, pg_store, raise_statement)


def test_a_trigger_naming_a_value_as_its_column_is_not_echoed(tmp_path: Path, pg_store: PostgresStore) -> None:
    """A trigger fills the structured COLUMN (or CONSTRAINT, TABLE, DATATYPE) field with anything, values too."""
    raise_statement = "RAISE EXCEPTION USING MESSAGE = 'blocked', COLUMN = OLD.visitor_id"
    assert PERSONAL_EMAIL not in evidence_after_a_guarded_run(tmp_path, pg_store, raise_statement)


def test_check_plan_and_run_name_the_same_identifiers(tmp_path: Path, pg_store: PostgresStore) -> None:
    """A mistyped column is named alike by check, plan, run and the signed log: identifiers are not hidden."""
    pg_store.standard_schema()
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE.replace('field = "collected_at"', 'field = "collectd_at"'), clients=False)
    expected = "expire.field column 'collectd_at' does not exist in table cookie_events"
    check = box.cli("check")
    plan = box.cli("plan", "--format", "json")
    run = box.cli("run", "--format", "json")
    assert expected in check.stdout
    assert expected in json.loads(plan.stdout)["rules"][0]["error"]
    assert expected in json.loads(run.stdout)["rules"][0]["error"]
    assert expected in Path(json.loads(run.stdout)["audit_file"]).read_text()
