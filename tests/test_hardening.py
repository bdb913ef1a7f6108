"""Hardening: bad evidence, random configuration, crashes. Nothing crashes, nothing is lost, every problem is named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention.cli import main
from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, audit_files, make_sandbox
from tests.stores import PostgresStore, SqliteStore

RETENTION = str(Path(sys.executable).parent / "retention")


@pytest.fixture
def audited(tmp_path: Path) -> Sandbox:
    store = SqliteStore(tmp_path / "app.db")
    store.standard_schema()
    add_cookies(store, NOW, timedelta(days=800), timedelta(days=1))
    box = make_sandbox(tmp_path / "sandbox", store)
    box.write(COOKIE_RULE, clients=False)
    assert 0 == box.cli("run").exit_code
    return box


@pytest.mark.parametrize(("name", "content", "status"), [
    ("20991231T000000000000Z-deadbeef.jsonl", b"", "broken chain"),
    ("20991231T000000000000Z-deadbeef.jsonl", b"\x00\xff\xfe garbage \x89PNG", "broken chain"),
    ("20991231T000000000000Z-deadbeef.jsonl", b'{"seq":0,"event":"run_started"', "broken chain"),
    ("20991231T000000000000Z-deadbeef.jsonl", b"[1, 2, 3]\n", "broken chain"),
    ("notes.txt", b"someone's notes", "not an audit run file"),
    ("20991231T000000000000Z-deadbeef.jsonl.sig", b"\x01" * 64, "not an audit run file"),
])
def test_bad_evidence_is_reported_never_crashes(audited: Sandbox, name: str, content: bytes, status: str) -> None:
    """Truncated, garbage and foreign files in the audit dir: exit 5, the file named with what is wrong."""
    (audited.audit_dir / name).write_bytes(content)
    result = audited.cli("audit", "verify", "--format", "json")
    assert 5 == result.exit_code, result.stdout + result.stderr
    checks = {Path(c["file"]).name: c["status"] for c in json.loads(result.stdout)}
    assert status == checks[name] or (status == "broken chain" and checks[name].startswith("incomplete"))


def test_a_garbage_signature_is_a_bad_signature(audited: Sandbox) -> None:
    """A signature file of the wrong length or bytes is reported, not raised."""
    log = audit_files(audited)[0]
    Path(f"{log}.sig").write_bytes(b"short")
    result = audited.cli("audit", "verify")
    assert 5 == result.exit_code and "bad signature" in result.stdout


def test_a_directory_where_a_run_file_should_be_is_reported(audited: Sandbox) -> None:
    """Even a folder named like a run file is a finding, not a traceback."""
    (audited.audit_dir / "20991231T000000000000Z-deadbeef.jsonl").mkdir()
    result = audited.cli("audit", "verify")
    assert 5 == result.exit_code and "Traceback" not in result.stdout + result.stderr


VALID = """
[job]
batch_size = 10
[audit]
dir = "var/audit"
signing_key = "${RETENTION_AUDIT_KEY}"
[connectors.app]
type = "sql"
url = "sqlite:///{db}"
[[rules]]
name = "cookies"
connector = "app"
table = "cookie_events"
expire = { after = "24 months", field = "collected_at" }
action = "delete"
"""

TOML_VALUES = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=False), st.booleans(),
                        st.text(max_size=12), st.just("${UNSET_VARIABLE}"), st.just('{ x = 1 }'), st.just("[1, 2]"))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.integers(0, 14), value=TOML_VALUES, command=st.sampled_from(["check", "plan", "run"]))
def test_mutated_config_is_exit_2_with_a_message_and_changes_nothing(tmp_path: Path, line: int, value: object,
                                                                     command: str) -> None:
    """Any one value of a valid config replaced by a random one: a clear error or a clean result, never a change."""
    database = tmp_path / "fuzz.db"
    if not database.exists():
        store = SqliteStore(database)
        store.standard_schema()
        add_cookies(store, NOW, timedelta(days=800), timedelta(days=1))
        store.close()
    lines = VALID.replace("{db}", str(database)).strip().splitlines()
    candidates = [i for i, text in enumerate(lines) if "=" in text]
    target = candidates[line % len(candidates)]
    key = lines[target].split("=", 1)[0]
    rendered = json.dumps(value) if isinstance(value, str) and not value.startswith(("{", "[")) else str(value)
    if isinstance(value, bool):
        rendered = str(value).lower()
    lines[target] = f"{key}= {rendered}"
    path = tmp_path / "retention.toml"
    path.write_text("\n".join(lines) + "\n")
    before = database.read_bytes()
    result = CliRunner().invoke(main, ["--config", str(path), command], env={"RETENTION_AUDIT_KEY": "/nonexistent"})
    output = result.stdout + result.stderr
    assert not (result.exception and not isinstance(result.exception, SystemExit)), repr(result.exception)
    assert "Traceback" not in output
    assert before == database.read_bytes()  # the store is never changed: not by check, plan, nor a refused run
    if command == "run":  # its signing key does not exist: refused before anything connects, whatever the config
        assert 2 == result.exit_code and "retention: error:" in output, output
    elif result.exit_code == 2:  # a config error names itself; `check` may instead list what the store lacks
        assert "retention: error:" in output or (command == "check" and "exit 2:" in output), output
    elif result.exit_code == 1:  # a rule that cannot run (a missing table) is named, and the others still ran
        assert ("Problems:" in output) if command == "plan" else ("exit 1:" in output), output
    else:
        assert result.exit_code in (0, 3), output


@pytest.fixture
def slow_run(tmp_path: Path, pg_store: PostgresStore) -> Sandbox:
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 3000, timedelta(days=1))
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    return box


def test_sigkill_mid_rule_leaves_whole_batches_and_the_next_run_seals_it(slow_run: Sandbox,
                                                                        pg_store: PostgresStore) -> None:
    """Killed with SIGKILL: every batch is all-or-nothing, the next run completes and acknowledges the dead run."""
    process = subprocess.Popen([RETENTION, "--config", str(slow_run.config), "--log-format", "json", "-v", "run"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **slow_run.env()})
    assert process.stderr is not None
    seen = 0
    for line in process.stderr:
        seen += '"batch_applied"' in line
        if seen == 5:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=30)
    dead = audit_files(slow_run)[0]
    logged = sum(json.loads(line)["count"] for line in dead.read_text().splitlines()
                 if '"batch_applied"' in line)
    remaining = len(pg_store.find("cookie_events"))
    assert remaining in (3001 - logged, 3001 - logged - 2)  # the batch being logged at the kill is whole too
    assert (3001 - remaining) % 2 == 0
    assert not Path(f"{dead}.sig").exists()
    assert 0 == slow_run.cli("run").exit_code
    assert [3000] == [r["id"] for r in pg_store.find("cookie_events")]
    checks = json.loads(slow_run.cli("audit", "verify", "--format", "json").stdout)
    assert ["incomplete (acknowledged by a later run)", "ok"] == [c["status"] for c in checks]


def test_transient_errors_are_retried_with_backoff_a_bounded_number_of_times() -> None:
    """Twice unlucky, then fine: the call succeeds; always unlucky: the last error surfaces after 4 tries."""
    from retention.retry import retrying

    calls, delays = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("connection reset")
        return "ok"

    def down() -> str:
        calls.append(1)
        raise ConnectionError("down")

    def broken() -> str:
        calls.append(1)
        raise ValueError("not transient")

    def is_connection(error: BaseException) -> bool:
        return isinstance(error, ConnectionError)

    assert "ok" == retrying(flaky, is_connection, what="t", sleep=delays.append)
    assert [0.5, 1.0] == delays
    calls.clear()
    with pytest.raises(ConnectionError):
        retrying(down, is_connection, what="t", sleep=delays.append)
    assert 4 == len(calls)
    calls.clear()
    with pytest.raises(ValueError, match="not transient"):
        retrying(broken, is_connection, what="t", sleep=delays.append)
    assert 1 == len(calls)


def test_a_connection_killed_mid_run_is_survived_or_fails_cleanly(slow_run: Sandbox,
                                                                  pg_store: PostgresStore) -> None:
    """pg_terminate_backend on the run's session: the batch is retried on a new connection; nothing is lost."""
    import psycopg

    process = subprocess.Popen([RETENTION, "--config", str(slow_run.config), "--log-format", "json", "-v", "run",
                                "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **slow_run.env()})
    assert process.stderr is not None
    database = pg_store.url.rsplit("/", 1)[1]
    seen = 0
    for line in process.stderr:
        seen += '"batch_applied"' in line
        if seen == 3:
            with psycopg.connect(pg_store.url, autocommit=True) as admin:
                killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE datname = %s AND application_name = 'retention'",
                                       (database,)).fetchone()
            assert killed is not None and killed[0] >= 1
            break
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode in (0, 1), stderr
    assert "Traceback" not in stderr
    if process.returncode == 1:
        assert "batch failed" in json.loads(stdout)["rules"][0]["error"]
    assert 0 == slow_run.cli("run").exit_code
    assert [3000] == [r["id"] for r in pg_store.find("cookie_events")]
    assert 0 == slow_run.cli("audit", "verify").exit_code


def kill_after_batches(sandbox: Sandbox, batches: int) -> tuple[Path, int]:
    """Start `retention run`, SIGKILL it after `batches` batches; the dead run's file and what it logged."""
    process = subprocess.Popen([RETENTION, "--config", str(sandbox.config), "--log-format", "json", "-v", "run"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **sandbox.env()})
    assert process.stderr is not None
    seen = 0
    for line in process.stderr:
        seen += '"batch_applied"' in line
        if seen == batches:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=30)
    dead = audit_files(sandbox)[0]
    logged = sum(json.loads(line)["count"] for line in dead.read_text().splitlines() if '"batch_applied"' in line)
    return dead, logged


def test_sigkill_on_mongodb_keeps_batches_whole(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """MongoDB: killed mid-rule, at most the one unlogged batch is missing from the log; the next run finishes."""
    from tests.stores import MongoStore

    store: MongoStore = request.getfixturevalue("mongo_store")
    store.database["events"].insert_many([{"_id": i, "at": NOW - timedelta(days=800)} for i in range(300)])
    box = make_sandbox(tmp_path / "sandbox", store)
    box.write('[[rules]]\nname = "events"\nconnector = "app"\ncollection = "events"\n'
              'expire = { after = "24 months", field = "at" }\naction = "delete"\nmax_fraction = 1.0\n',
              clients=False)
    _dead, logged = kill_after_batches(box, 5)
    deleted = 300 - store.database["events"].count_documents({})
    assert deleted - logged in (0, 2)
    assert 0 == box.cli("run").exit_code
    assert 0 == store.database["events"].count_documents({})
    statuses = [c["status"] for c in json.loads(box.cli("audit", "verify", "--format", "json").stdout)]
    assert ["incomplete (acknowledged by a later run)", "ok"] == statuses


def test_sigkill_on_s3_keeps_calls_whole(tmp_path: Path, moto_url: str) -> None:
    """S3: killed with calls in flight, each DeleteObjects call is whole; the next run deletes the rest."""
    from tests.test_s3 import OLD, RULE, S3Sandbox

    box = S3Sandbox(tmp_path / "sandbox", moto_url)
    for n in range(300):
        box.put(f"uploads/{n:04d}", collected_at=OLD)
    box.write(RULE.format(bucket=box.bucket, field="metadata:collected-at"))
    box.env = lambda: {"RETENTION_PSEUDONYM_KEY": "k" * 32}  # type: ignore[attr-defined]
    box.config = box.root / "retention.toml"  # type: ignore[attr-defined]
    box.audit_dir = box.root / "audit"  # type: ignore[attr-defined]
    _dead, logged = kill_after_batches(box, 5)  # type: ignore[arg-type]
    deleted = 300 - len(box.keys())
    assert 0 <= deleted - logged <= 4 * 2 and deleted % 2 == 0
    assert 0 == box.cli("run").exit_code
    assert [] == box.keys()
    statuses = [c["status"] for c in json.loads(box.cli("audit", "verify", "--format", "json").stdout)]
    assert ["incomplete (acknowledged by a later run)", "ok"] == statuses


def test_an_s3_server_dying_mid_run_fails_its_rule_and_the_others_still_run(tmp_path: Path) -> None:
    """S3 stops answering mid-rule: after bounded retries the rule fails with the cause named (exit 1), the next
    rule still runs, and the signed log says which rule failed."""
    from tests.servers import moto_server
    from tests.test_s3 import OLD, S3Sandbox

    store = SqliteStore(tmp_path / "app.db")
    store.standard_schema()
    add_cookies(store, NOW, timedelta(days=800), timedelta(days=800))
    with moto_server() as endpoint:
        box = S3Sandbox(tmp_path / "sandbox", endpoint)
        for n in range(400):
            box.put(f"uploads/{n:04d}", collected_at=OLD)
        box.write(f"""
[connectors.app]
type = "sql"
url = "sqlite:///{store.path}"

[[rules]]
name = "uploads"
connector = "files"
bucket = "{box.bucket}"
prefix = "uploads/"
expire = {{ after = "24 months", field = "metadata:collected-at" }}
action = "delete"
max_fraction = 1.0
""" + COOKIE_RULE.replace("{target}", "table"))
        process = subprocess.Popen([RETENTION, "--config", str(box.root / "retention.toml"), "--log-format", "json",
                                    "-v", "run", "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env={**os.environ, "RETENTION_PSEUDONYM_KEY": "k" * 32,
                                                   "AWS_MAX_ATTEMPTS": "2"})
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if '"batch_applied"' in line:
                break
    stdout, stderr = process.communicate(timeout=180)  # the server is gone now
    stderr = "".join(seen) + stderr
    assert 1 == process.returncode, stderr
    assert stdout.strip(), stderr
    assert "Traceback" not in stderr
    rules = {rule["name"]: rule for rule in json.loads(stdout)["rules"]}
    assert "error" == rules["uploads"]["status"] and "S3" in rules["uploads"]["error"]
    assert ("ok", 2) == (rules["cookies"]["status"], rules["cookies"]["changed"])
    assert 0 == box.cli("audit", "verify").exit_code


def test_a_mongodb_server_stopped_mid_run_fails_its_rule_cleanly(tmp_path: Path) -> None:
    """MongoDB goes away mid-rule: bounded retries, then the rule fails naming the cause (exit 1); once the server
    is back, the next run finishes the work."""
    from secantus import SecantusDBServer

    from tests.servers import free_port

    port, storage = free_port(), tmp_path / "mongo"
    server = SecantusDBServer(host="127.0.0.1", port=port, storage_path=str(storage))
    server.start()
    url = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=300"
    import pymongo

    with pymongo.MongoClient(url) as client:
        client["app"]["events"].insert_many([{"_id": i, "at": NOW - timedelta(days=800)} for i in range(200)]
                                            + [{"_id": 999, "huge": "x" * 1_000_000, "at": NOW - timedelta(days=800)}])
    box = make_sandbox(tmp_path / "sandbox", SqliteStore(tmp_path / "unused.db"))
    box.config.write_text(f"""
[job]
state_dir = "{box.root}/state"
batch_size = 2
[audit]
dir = "{box.audit_dir}"
signing_key = "${{RETENTION_AUDIT_KEY}}"
[connectors.events]
type = "mongodb"
url = "{url}"
database = "app"
[[rules]]
name = "events"
connector = "events"
collection = "events"
expire = {{ after = "24 months", field = "at" }}
action = "delete"
max_fraction = 1.0
""")
    process = subprocess.Popen([RETENTION, "--config", str(box.config), "--log-format", "json", "-v", "run",
                                "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **box.env()})
    assert process.stderr is not None
    for line in process.stderr:
        if '"batch_applied"' in line:
            server.stop()
            break
    stdout, stderr = process.communicate(timeout=120)
    assert 1 == process.returncode, stderr
    assert "Traceback" not in stderr
    error = json.loads(stdout)["rules"][0]["error"]
    assert "batch failed" in error or "MongoDB" in error
    server = SecantusDBServer(host="127.0.0.1", port=port, storage_path=str(storage))
    server.start()
    try:
        assert 0 == box.cli("run").exit_code
        with pymongo.MongoClient(url) as client:
            assert 0 == client["app"]["events"].count_documents({})
    finally:
        server.stop()
    assert 0 == box.cli("audit", "verify").exit_code
