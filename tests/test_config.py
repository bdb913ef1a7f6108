"""Configuration: strict validation with messages that name the file, the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from retention.cli import main
from retention.config import load_config

BASE = """
[audit]
dir = "var/audit"
signing_key = "${RETENTION_AUDIT_KEY}"

[connectors.app]
type = "postgres"
url = "${APP_DATABASE_URL}"

[clients]
connector = "app"
table = "clients"

[[rules]]
name = "cookies"
connector = "app"
table = "cookie_events"
expire = { after = "24 months", field = "collected_at" }
action = "delete"
"""

ANON = """
[[rules]]
name = "users"
connector = "app"
table = "end_users"
expire = { client_field = "client_id", grace = "30 days" }
action = "anonymize"
marker = "anonymized_at"
transforms = { email = "redact" }
"""


def check_offline(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    path = tmp_path / "retention.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["--config", str(path), "check", "--offline"], env=env or {})
    return result.exit_code, result.stdout + result.stderr


def test_the_shipped_config_is_valid_offline() -> None:
    """config/retention.toml passes `check --offline` with no server and no environment variable."""
    result = CliRunner().invoke(main, ["--config", "config/retention.toml", "check", "--offline"], env={})
    assert 0 == result.exit_code, result.output + result.stderr


def test_the_shipped_config_cites_a_policy_for_every_rule() -> None:
    """Each rule of the shipped config names the policy section it enforces."""
    config = load_config(Path("config/retention.toml"))
    assert all(rule.policy.strip() for rule in config.rules)


def test_a_minimal_config_is_valid(tmp_path: Path) -> None:
    """Only connectors, rules and (for run) audit are required."""
    assert 0 == check_offline(tmp_path, BASE + ANON)[0]


@pytest.mark.parametrize(("change", "expected"), [
    (("[audit]", "[audit]\ncolour = \"blue\""), "audit.colour: unknown key"),
    (('action = "delete"', 'action = "shred"'), "rules[cookies].action: expected one of 'delete'"),
    (('type = "postgres"', 'type = "oracle"'), "connectors.app.type: unknown connector type 'oracle'; known types:"),
    (('after = "24 months"', 'after = "two years"'), "rules[cookies].expire.after: expected a duration"),
    (('after = "24 months"', "after = 24"), "rules[cookies].expire.after: expected a string, got integer 24"),
    (('connector = "app"\ntable = "cookie_events"', 'connector = "db"\ntable = "cookie_events"'),
     "rules[cookies].connector: unknown connector 'db'"),
    (('email = "redact"', 'email = "scramble"'), "rules[users].transforms.email: unknown transform 'scramble'"),
    (('email = "redact"', 'email = "hmac"'), "hmac is a keyed, consistent pseudonym: it is allowed only with"),
    (('marker = "anonymized_at"\n', ""), "rules[users].marker: action = \"anonymize\" needs `marker`"),
    (('email = "redact"', "email = { mask = \"four\" }"), "expected { mask = 4 }"),
    (('grace = "30 days"', 'grace = "30 days", color = 1'), "rules[users].expire.color: unknown key"),
])
def test_bad_config_is_exit_2_with_file_and_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    """Each mistake names the file, the key path and what was expected; exit 2, no traceback."""
    text = (BASE + ANON).replace(change[0], change[1], 1)
    assert text != BASE + ANON
    code, output = check_offline(tmp_path, text)
    assert 2 == code
    assert str(tmp_path / "retention.toml") in output
    assert expected in output
    assert "Traceback" not in output


def test_a_hold_naming_an_unknown_rule_is_rejected(tmp_path: Path) -> None:
    """Holds may only name rules that exist."""
    code, output = check_offline(tmp_path, BASE + '[[holds]]\nname = "h"\nrules = ["cookeis"]\n')
    assert 2 == code and "holds[0].rules: unknown rule 'cookeis'" in output


def test_invalid_toml_is_a_clear_error(tmp_path: Path) -> None:
    """A syntax error points at the line, not at Python."""
    code, output = check_offline(tmp_path, BASE + "[[rules]\n")
    assert 2 == code and "not valid TOML" in output


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    """--config pointing nowhere names the path."""
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "nope.toml"), "plan"])
    assert 2 == result.exit_code and "nope.toml: cannot read the config file" in result.stderr


def test_an_unset_environment_variable_is_named(tmp_path: Path) -> None:
    """`plan` needs the connector URL: an unset ${NAME} is named, with the key that reads it."""
    path = tmp_path / "retention.toml"
    path.write_text(BASE)
    result = CliRunner().invoke(main, ["--config", str(path), "plan"], env={"APP_DATABASE_URL": ""})
    assert 2 == result.exit_code
    assert "connectors.app.url: environment variable APP_DATABASE_URL is not set" in result.stderr


def test_secrets_from_the_environment_are_never_printed(tmp_path: Path) -> None:
    """A connection failure does not echo the URL's password."""
    path = tmp_path / "retention.toml"
    path.write_text(BASE)
    secret = "s3cr3t-Pa55word"  # noqa: S105 - a fake password the output must not show
    result = CliRunner().invoke(main, ["--config", str(path), "--log-format", "json", "plan", "--format", "json"],
                                env={"APP_DATABASE_URL": f"postgresql://app:{secret}@127.0.0.1:9/app"})
    assert 1 == result.exit_code
    assert secret not in result.stdout + result.stderr
    assert "error" in result.stdout


def test_hostile_identifiers_are_quoted_not_executed(tmp_path: Path) -> None:
    """A table or field name with quotes, semicolons and comments is a missing table, never injected SQL."""
    import sqlite3

    database = tmp_path / "app.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE clients (id TEXT PRIMARY KEY)")
    path = tmp_path / "retention.toml"
    path.write_text(f'''
[connectors.app]
type = "sql"
url = "sqlite:///{database}"

[[rules]]
name = "evil"
connector = "app"
table = "clients; DROP TABLE clients; --"
expire = {{ after = "1 day", field = "x\\" OR 1=1 --" }}
action = "delete"
''')
    result = CliRunner().invoke(main, ["--config", str(path), "plan", "--format", "json"])
    assert 1 == result.exit_code
    assert "does not exist" in result.stdout
    with sqlite3.connect(database) as db:
        assert [("clients",)] == db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()


@pytest.mark.parametrize("duration", ["3000 years", "100000000 days", "99999999999 weeks", "1000000 months"])
def test_a_duration_that_cannot_be_computed_is_a_config_error(tmp_path: Path, duration: str) -> None:
    """A duration no clock can subtract is caught offline, naming the key, never a traceback at plan time."""
    code, output = check_offline(tmp_path, BASE.replace('"24 months"', f'"{duration}"'))
    assert 2 == code, output
    assert "rules[cookies].expire.after" in output and "Traceback" not in output


def test_a_client_hold_must_name_its_rules_when_a_rule_cannot_tell_clients(tmp_path: Path) -> None:
    """A client hold in scope of a rule without clients would keep nothing of it: a config error naming both."""
    code, output = check_offline(tmp_path, BASE + ANON + '[[holds]]\nname = "h"\nclient_ids = ["c-1"]\n')
    assert 2 == code and "holds[0].client_ids" in output and "'cookies'" in output
    code, output = check_offline(tmp_path, BASE + ANON + '[[holds]]\nname = "h"\nclient_ids = [1]\nrules = ["users"]\n')
    assert 0 == code, output


S3_CONNECTOR = '\n[connectors.files]\ntype = "s3"\n'


@pytest.mark.parametrize(("extra", "key", "said"), [
    ('[requests]\nconnector = "files"\ntable = "requests"\n', "requests.connector", "cannot hold a table"),
    ('[holds_source]\nconnector = "files"\ntable = "holds"\n', "holds_source.connector", "cannot hold a table"),
    ('[clients]\nconnector = "files"\ntable = "clients"\n', "clients.connector", "cannot hold a table"),
])
def test_a_table_of_rows_on_an_object_store_is_a_config_error(tmp_path: Path, extra: str, key: str, said: str
                                                              ) -> None:
    """Requests, holds and the registry need a store of rows: pointing them at S3 is caught offline, exit 2."""
    code, output = check_offline(tmp_path, BASE.replace("[clients]\nconnector = \"app\"\ntable = \"clients\"\n", "")
                                 + S3_CONNECTOR + extra)
    assert 2 == code and key in output and said in output, output


def test_capabilities_of_the_lock_and_the_worm_copy_are_checked_offline(tmp_path: Path) -> None:
    """A cross-host lock on SQLite, or a WORM copy on PostgreSQL, is refused before anything connects."""
    sqlite = BASE.replace('type = "postgres"\nurl = "${APP_DATABASE_URL}"', 'type = "sql"\nurl = "sqlite:///x.db"')
    code, output = check_offline(tmp_path, sqlite.replace("[audit]", '[job]\nlock = { connector = "app" }\n[audit]'))
    assert 2 == code and "job.lock.connector" in output and "cannot hold a lock" in output, output
    worm = BASE.replace('signing_key = "${RETENTION_AUDIT_KEY}"', 'signing_key = "${RETENTION_AUDIT_KEY}"\n'
                        's3 = { connector = "app", bucket = "b", retain_days = 1 }')
    code, output = check_offline(tmp_path, worm)
    assert 2 == code and "audit.s3.connector" in output and "no object store" in output, output
