"""Approved plans: `plan --save` records what was reviewed; `run --approved` does no more than that, or nothing."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, audit_files, make_sandbox
from tests.stores import PostgresStore

NOW_TEXT = "2026-11-29T03:00:00Z"
HEAD = '{"kind": "retention-approved-plan", "config_sha256": "x", "stores_sha256": "y", '  # a crafted file's start
SECOND_RULE = COOKIE_RULE.replace('name = "cookies"', 'name = "cookies-recent"').replace("24 months", "12 months")


@pytest.fixture
def sandbox(tmp_path: Path, pg_store: PostgresStore) -> Sandbox:
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 10, timedelta(days=1))
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    return box


def save(sandbox: Sandbox, *args: str, name: str = "plan.json") -> Path:
    path = sandbox.root / "reviewed" / name
    result = sandbox.cli("plan", "--now", NOW_TEXT, "--save", str(path), *args)
    assert 0 == result.exit_code, result.stdout + result.stderr
    return path


def run(sandbox: Sandbox, *args: str) -> tuple[int, dict[str, object], list[dict[str, object]]]:
    result = sandbox.cli("run", "--now", NOW_TEXT, "--format", "json", *args)
    events = [json.loads(line) for line in audit_files(sandbox)[-1].read_text().splitlines()] \
        if audit_files(sandbox) else []
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}, events


def test_an_approved_run_goes_ahead_and_names_its_approval(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """The plan file holds the config's hash and each rule's counts; the run's signed header, the file's hash."""
    path = save(sandbox)
    saved = json.loads(path.read_text())
    assert (hashlib.sha256(sandbox.config.read_bytes()).hexdigest(), [("cookies", 10)]) == (
        saved["config_sha256"], [(r["name"], r["matched"]) for r in saved["rules"]])
    code, report, events = run(sandbox, "--approved", str(path))
    assert (0, 10) == (code, report["rules"][0]["changed"])  # type: ignore[index]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == events[0]["approval_sha256"]
    assert 0 == sandbox.cli("audit", "verify").exit_code
    assert "approval_sha256" not in run(sandbox)[2][0]  # a run without an approval says nothing of one


def test_a_changed_config_refuses_the_whole_run(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    path = save(sandbox)
    sandbox.config.write_text(sandbox.config.read_text() + "\n# an edit after the review\n")
    before = pg_store.fingerprint()
    code, report, events = run(sandbox, "--approved", str(path))
    assert 3 == code and before == pg_store.fingerprint()
    skipped = [e for e in events if e["event"] == "rule_skipped"]
    assert ["approval"] == [e["reason"] for e in skipped] and "plan.json" in str(skipped[0]["detail"])
    assert "is not the one approved" in str(report["rules"][0]["error"])  # type: ignore[index]
    table = sandbox.cli("run", "--now", NOW_TEXT, "--approved", str(path))
    assert 3 == table.exit_code and "refused by its approved plan (exit 3)" in table.stdout
    assert not [e for e in events if e["event"] == "batch_applied"]


def test_more_than_approved_plus_tolerance_refuses_every_rule(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """10 approved, 12 now: over 10 % (nothing changes, in either rule), within 50 % (the run goes ahead)."""
    sandbox.write(COOKIE_RULE + SECOND_RULE, clients=False)
    path = save(sandbox)
    pg_store.insert("cookie_events", [{"id": 100 + i, "visitor_id": "v", "collected_at": NOW - timedelta(days=800),
                                       "ip": "192.0.2.1"} for i in range(2)])
    before = pg_store.fingerprint()
    code, report, events = run(sandbox, "--approved", str(path))
    assert 3 == code and before == pg_store.fingerprint()
    assert ["over_threshold", "over_threshold"] == [r["status"] for r in report["rules"]]  # type: ignore[attr-defined]
    assert "would change 12 records, more than the 10 approved" in str(report["rules"][0]["error"])  # type: ignore[index]
    assert 2 == len([e for e in events if e["event"] == "rule_skipped"])
    assert 3 == run(sandbox, "--approved", str(path), "--tolerance", "0.19")[0]
    assert 0 == run(sandbox, "--approved", str(path), "--tolerance", "0.2")[0]  # 12 = 10 x 1.2: not more
    assert 1 == len(pg_store.find("cookie_events"))


def test_fewer_than_approved_is_fine_and_an_unapproved_rule_is_not(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    path = save(sandbox)
    pg_store.execute("DELETE FROM cookie_events WHERE id < 5")
    sandbox.write(COOKIE_RULE + SECOND_RULE, clients=False)
    only_cookies = save(sandbox, "--rule", "cookies", name="only-cookies.json")
    code, report, _ = run(sandbox, "--approved", str(only_cookies))
    assert 3 == code and "cookies-recent: not in the approved plan" in str(report["rules"][0]["error"])  # type: ignore[index]
    sandbox.write(COOKIE_RULE, clients=False)
    assert 0 == run(sandbox, "--approved", str(path))[0]


@pytest.mark.parametrize(("content", "says"), [
    ("not json", "not JSON"),
    ('{"kind": "something else"}', "is not an approval file"),
    (HEAD + '"rules": [{"name": "cookies", "matched": -1}]}', "rules[0]"),
    (HEAD + '"rules": [{"name": {"$gt": ""}, "matched": 1}]}', "rules[0]"),
])
def test_a_bad_approval_file_is_a_clear_error_before_anything_runs(content: str, says: str, sandbox: Sandbox) -> None:
    path = sandbox.root / "plan.json"
    path.write_text(content)
    result = sandbox.cli("run", "--approved", str(path))
    assert 2 == result.exit_code and says in result.stderr and str(path) in result.stderr, result.stderr
    assert [] == audit_files(sandbox)


def test_tolerance_needs_an_approval_and_is_never_negative(sandbox: Sandbox) -> None:
    assert 2 == sandbox.cli("run", "--tolerance", "0.5").exit_code
    path = save(sandbox)
    assert 2 == sandbox.cli("run", "--approved", str(path), "--tolerance", "-1").exit_code
    assert 2 == sandbox.cli("run", "--approved", str(sandbox.root / "missing.json")).exit_code
    assert [] == audit_files(sandbox)


def test_save_never_replaces_the_config_nor_writes_among_the_audit_files(sandbox: Sandbox) -> None:
    before = sandbox.config.read_text()
    assert 2 == sandbox.cli("plan", "--save", str(sandbox.config)).exit_code
    assert before == sandbox.config.read_text()
    result = sandbox.cli("plan", "--save", str(sandbox.audit_dir / "plan.json"))
    assert 2 == result.exit_code and "inside the audit dir" in result.stderr
