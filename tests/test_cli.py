"""The command line as ops and engineers use it: exit codes, JSON shapes, locks, logs, no personal data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from retention.lock import run_lock
from tests.conformance import COOKIE_RULE, END_USER_RULE, add_cookies, seed_clients
from tests.conftest import NOW
from tests.helpers import PSEUDONYM_KEY, Sandbox, audit_files, make_sandbox
from tests.stores import PostgresStore, SqliteStore, Store


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    store = SqliteStore(tmp_path / "app.db")
    store.standard_schema()
    add_cookies(store, NOW, timedelta(days=800), timedelta(days=10))
    box = make_sandbox(tmp_path / "sandbox", store)
    box.write(COOKIE_RULE)
    return box


def test_plan_json_has_the_documented_shape(sandbox: Sandbox) -> None:
    """Top-level now and rules; each rule has the SPEC's keys."""
    document = json.loads(sandbox.cli("plan", "--format", "json").stdout)
    assert {"now", "rules"} == set(document)
    assert {"name", "connector", "target", "action", "cutoff", "matched", "held", "unknown_age", "status", "error",
            "policy"} <= set(document["rules"][0])


def test_run_json_adds_run_id_audit_file_and_changed(sandbox: Sandbox) -> None:
    """`run --format json` carries run_id, audit_file and per-rule changed."""
    document = json.loads(sandbox.cli("run", "--format", "json").stdout)
    assert Path(document["audit_file"]).exists()
    assert document["run_id"] in document["audit_file"]
    assert 1 == document["rules"][0]["changed"]


def test_plan_needs_no_signing_key(sandbox: Sandbox) -> None:
    """Engineers can plan without access to the audit key or the pseudonym secret."""
    result = sandbox.cli("plan", env={"RETENTION_AUDIT_KEY": "", "RETENTION_PSEUDONYM_KEY": ""})
    assert 0 == result.exit_code, result.stderr


def test_run_now_in_the_future_is_refused(sandbox: Sandbox) -> None:
    """`run --now` later than the clock would expire records early: exit 2, nothing written."""
    result = sandbox.cli("run", "--now", "2999-01-01T00:00:00Z")
    assert 2 == result.exit_code
    assert "later than the current time" in result.stderr
    assert [] == audit_files(sandbox)


def test_run_now_in_the_past_is_recorded_as_an_override(sandbox: Sandbox) -> None:
    """A past --now is allowed and the audit log says the clock was overridden."""
    assert 0 == sandbox.cli("run", "--now", "2026-01-01T00:00:00Z").exit_code
    first = json.loads(audit_files(sandbox)[0].read_text().splitlines()[0])
    assert (True, "2026-01-01T00:00:00Z") == (first["clock_override"], first["now"])


def test_a_malformed_now_is_a_usage_error(sandbox: Sandbox) -> None:
    """--now must be RFC 3339 with an offset."""
    result = sandbox.cli("plan", "--now", "yesterday")
    assert 2 == result.exit_code and "--now: expected an RFC 3339 instant" in result.stderr


def test_an_unknown_rule_name_is_a_usage_error(sandbox: Sandbox) -> None:
    """--rule must name a configured rule; the message lists them."""
    result = sandbox.cli("run", "--rule", "cookie")
    assert 2 == result.exit_code and "no rule named 'cookie'; rules: cookies" in result.stderr
    assert [] == audit_files(sandbox)


def test_a_missing_key_is_exit_2_without_audit_file(sandbox: Sandbox) -> None:
    """`run` without a readable signing key changes nothing and writes nothing."""
    result = sandbox.cli("run", env={"RETENTION_AUDIT_KEY": str(sandbox.root / "nope.pem")})
    assert 2 == result.exit_code and "cannot read the signing key" in result.stderr
    assert [] == audit_files(sandbox)


def test_a_group_readable_key_is_refused(sandbox: Sandbox) -> None:
    """A signing key others can read is unsafe: exit 2, with the chmod that fixes it."""
    key = sandbox.root / "audit-private.pem"
    key.chmod(0o640)
    result = sandbox.cli("run")
    assert 2 == result.exit_code and "chmod 600" in result.stderr


def test_a_held_lock_is_exit_4(sandbox: Sandbox) -> None:
    """While another run holds the lock, a run changes nothing and exits 4."""
    with run_lock(sandbox.root / "state"):
        result = sandbox.cli("run")
    assert 4 == result.exit_code and "another run holds the lock" in result.stderr
    assert [] == audit_files(sandbox)
    assert 2 == sandbox.store.scalar("SELECT count(*) FROM cookie_events")


def test_a_missing_table_fails_its_rule_and_the_others_still_run(sandbox: Sandbox) -> None:
    """A rule whose table is gone fails (exit 1); the other rules complete and the audit log says which."""
    sandbox.write(COOKIE_RULE + COOKIE_RULE.replace('name = "cookies"', 'name = "ghost"')
                  .replace("cookie_events", "no_such_table"))
    result = sandbox.cli("run", "--format", "json")
    assert 1 == result.exit_code
    rules = {rule["name"]: rule for rule in json.loads(result.stdout)["rules"]}
    assert ("ok", 1) == (rules["cookies"]["status"], rules["cookies"]["changed"])
    assert "error" == rules["ghost"]["status"] and "no_such_table does not exist" in rules["ghost"]["error"]
    events = [json.loads(line) for line in audit_files(sandbox)[0].read_text().splitlines()]
    assert ["ghost"] == [e["rule"] for e in events if e["event"] == "rule_failed"]
    assert ("failed", 1) == (events[-1]["status"], events[-1]["exit_code"])


def test_check_online_confirms_targets_and_field_types(sandbox: Sandbox) -> None:
    """`check` connects and reports a wrong field type as a problem (exit 2)."""
    assert 0 == sandbox.cli("check").exit_code
    sandbox.write(COOKIE_RULE.replace('field = "collected_at"', 'field = "visitor_id"'))
    result = sandbox.cli("check")
    assert 2 == result.exit_code and "expected a timestamp" in result.stdout


def test_logs_are_json_lines_with_run_id_and_rule(sandbox: Sandbox) -> None:
    """Not on a terminal, stderr carries JSON lines; run events carry run_id, rule and connector."""
    result = sandbox.cli("run", "--format", "json")
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    finished = next(line for line in lines if line["event"] == "rule_finished")
    assert (json.loads(result.stdout)["run_id"], "cookies", "app") == (
        finished["run_id"], finished["rule"], finished["connector"])


def test_connectors_lists_built_in_types(sandbox: Sandbox) -> None:
    """Built-ins are found through the same entry points as plugins."""
    listed = json.loads(sandbox.cli("connectors", "--format", "json").stdout)
    assert {"postgres", "sql"} <= {entry["type"] for entry in listed}


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_no_personal_data_reaches_logs_or_audit_files(kind: str, tmp_path: Path, request: pytest.FixtureRequest
                                                      ) -> None:
    """Seeded e-mails, names and IPs appear nowhere in stdout, stderr or the audit dir after every command."""
    store: Store = PostgresStore(request.getfixturevalue("pg_database")) if kind == "postgres" \
        else SqliteStore(tmp_path / "app.db")
    store.standard_schema()
    seed_clients(store, NOW)
    add_cookies(store, NOW, timedelta(days=800))
    box = make_sandbox(tmp_path / "sandbox", store)
    box.write(COOKIE_RULE + END_USER_RULE.replace('email = "redact"', 'email = "redact", full_name = "redact"', 1)
              .replace(', full_name = { redact = "X" }', ""),
              extra='[[holds]]\nname = "h"\nclient_ids = ["c-asked"]\nrules = ["end-users"]')
    metrics = tmp_path / "metrics" / "retention.prom"
    setting = f'batch_size = 2\nmetrics_file = "{metrics}"\n'
    box.config.write_text(box.config.read_text().replace("batch_size = 2\n", setting))
    outputs = []
    for args in (["check"], ["plan"], ["plan", "--format", "json"], ["run", "--dry-run"], ["run", "--format", "json"],
                 ["schedule", "--once"], ["holds", "list"], ["audit", "verify"], ["audit", "list"],
                 ["-v", "-v", "plan"], ["connectors"]):
        result = box.cli(*args)
        assert 0 == result.exit_code, f"{args}: {result.stdout}{result.stderr}"  # a grep of a failure proves nothing
        outputs.append(result.stdout + result.stderr)
    run_id = json.loads(box.cli("audit", "list", "--format", "json").stdout)[0]["run_id"]
    outputs.append(box.cli("audit", "show", run_id).stdout)
    evidence = "".join(outputs) + "".join(p.read_text() for p in box.audit_dir.iterdir() if p.suffix != ".sig")
    evidence += metrics.read_text()
    seeded = [f"user{i}@example.org" for i in range(9)] + ["Ada Lovelace", "203.0.113.77", "192.0.2.1",
                                                             "+44 20 7946 0958", PSEUDONYM_KEY]
    assert [] == [value for value in seeded if value in evidence]
    assert "c-asked" not in "".join(p.read_text() for p in box.audit_dir.iterdir() if p.suffix != ".sig")


def test_the_console_script_runs_as_installed(sandbox: Sandbox) -> None:
    """The installed `retention` entry point works from a shell, with results on stdout only."""
    result = subprocess.run([Path(sys.executable).parent / "retention", "--config", str(sandbox.config), "plan",
                             "--format", "json"], capture_output=True, text=True,
                            env={**os.environ, **sandbox.env()}, check=False)
    assert 0 == result.returncode, result.stderr
    assert "rules" in json.loads(result.stdout)


def test_console_logs_are_readable_text(sandbox: Sandbox) -> None:
    """`--log-format console` (the default on a terminal) writes key=value lines, not JSON."""
    from click.testing import CliRunner

    from retention.cli import main

    result = CliRunner().invoke(main, ["--config", str(sandbox.config), "--log-format", "console", "plan"],
                                env=sandbox.env())
    line = next(line for line in result.stderr.splitlines() if "rule_planned" in line)
    assert not line.startswith("{") and "rule=cookies" in line


def test_a_threshold_stop_never_reads_ok(sandbox: Sandbox) -> None:
    """The run's last line says a threshold stopped it, with exit 3; never `ok (exit 3)`."""
    sandbox.config.write_text(sandbox.config.read_text().replace("max_fraction = 1.0", "max_fraction = 0.1", 1))
    result = sandbox.cli("run")
    assert 3 == result.exit_code
    assert "stopped by a safety threshold (exit 3)" in result.stdout and "ok (exit 3)" not in result.stdout


def test_offline_check_counts_in_words(sandbox: Sandbox) -> None:
    """One rule and one connector are said in the singular."""
    assert "(1 rule, 1 connector)" in sandbox.cli("check", "--offline").stdout


def test_a_public_key_given_as_the_signing_key_is_named_as_such(sandbox: Sandbox) -> None:
    """Passing the public half gets that said, not advice about file modes."""
    (sandbox.root / "audit-public.pem").chmod(0o600)
    result = sandbox.cli("run", env={"RETENTION_AUDIT_KEY": str(sandbox.public_key)})
    assert 2 == result.exit_code
    assert "public key" in result.stderr and "chmod" not in result.stderr


@pytest.mark.parametrize("secret", ["abc", "k" * 31])
def test_a_short_pseudonym_key_is_refused_with_a_way_to_make_one(secret: str, sandbox: Sandbox) -> None:
    """A root secret under 32 bytes is refused before anything changes, with a command that makes a good one."""
    result = sandbox.cli("run", env={"RETENTION_PSEUDONYM_KEY": secret})
    assert 2 == result.exit_code and [] == audit_files(sandbox)
    assert "32 bytes" in result.stderr and "openssl rand" in result.stderr and secret not in result.stderr


def test_a_postgres_job_never_loads_the_s3_or_mongodb_libraries(tmp_path: Path, pg_store: PostgresStore) -> None:
    """`check`, `plan` and `run` of a PostgreSQL-only config import neither boto3/botocore nor pymongo/bson."""
    pg_store.standard_schema()
    seed_clients(pg_store, NOW)
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE + END_USER_RULE)
    script = f"""
import sys
from click.testing import CliRunner
from retention.cli import main
for verb in ("check", "plan", "run"):
    result = CliRunner().invoke(main, ["--config", {str(box.config)!r}, verb])
    assert result.exit_code == 0, result.output
print(",".join(m for m in ("boto3", "botocore", "pymongo", "bson") if m in sys.modules) or "none")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, **box.env()}, check=False)
    assert "none" == result.stdout.strip(), result.stdout + result.stderr
