"""Review, round 2: failing tests for defects found in today's features (each test names what breaks)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from retention.audit import timestamp
from retention.audit.timestamp import Authority, TimestampError, load_ca
from tests.conftest import NOW
from tests.helpers import SESSIONS_RULE, Sandbox, make_sandbox
from tests.servers import TimestampAuthority, free_port
from tests.stores import MongoStore
from tests.test_cron import WRAPPER
from tests.test_native_expiry import SESSIONS
from tests.test_report import cookie_sandbox
from tests.test_timestamps import SECRET, run, stamped_sandbox

CRAFTED = "20990101T000000000000Z-00000000000000ff.jsonl"  # sorts after every real run


# --- helpers -----------------------------------------------------------------------------------------------------

@pytest.fixture
def http_server() -> Iterator[Any]:
    """Start ThreadingHTTPServers on 127.0.0.1 with given handler classes; all are stopped at the end."""
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> int:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def craft(sandbox: Sandbox, *lines: dict[str, Any] | bytes, name: str = CRAFTED) -> Path:
    """An unsigned file in the audit dir, named like a run, holding these lines as written."""
    path = sandbox.audit_dir / name
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
                              for line in lines))
    return path


# --- 1. RFC 3161 trusted timestamps --------------------------------------------------------------------------------

def test_tsa_redirect_does_not_carry_url_credentials_to_another_host(tsa: TimestampAuthority,
                                                                     http_server: Any) -> None:
    """A TSA (or anyone on its path) answering 302 must not receive the basic-auth credentials at another host:
    urllib follows a POST's 302 as a GET and copies every header, Authorization included, to any host (even
    https -> http)."""
    stolen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            stolen.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    elsewhere = http_server(Elsewhere)

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{elsewhere}/collect")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = http_server(Redirect)
    authority = Authority(f"http://auditor:{SECRET}@127.0.0.1:{port}/tsr", load_ca(tsa.ca))
    with pytest.raises(TimestampError):
        timestamp.fetch_token(authority, b"log bytes")
    assert [] == [header for header in stolen if header], "the TSA credentials were sent to another host"


@pytest.fixture
def trickling_tsa() -> Iterator[str]:
    """A TSA that answers 200 at once, then sends its body one byte every 0.2 s (a slow-loris reply)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    connection.recv(65536)
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/timestamp-reply\r\n"
                                       b"Content-Length: 100\r\n\r\n")
                    for _ in range(100):
                        if stop.is_set():
                            return
                        connection.sendall(b"0")
                        time.sleep(0.2)
                except OSError:
                    continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/tsr"
    stop.set()
    listener.close()


def test_a_slow_loris_tsa_cannot_hold_the_run_past_the_timeout(tsa: TimestampAuthority, trickling_tsa: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """TIMEOUT_SECONDS is per socket read, not per request: a TSA trickling a byte at a time keeps the run (and its
    lock) for up to MAX_REPLY reads. Here a 1 s timeout lets a 100-byte trickle take 20 s."""
    monkeypatch.setattr(timestamp, "TIMEOUT_SECONDS", 1)
    authority = Authority(trickling_tsa, load_ca(tsa.ca))
    started = time.monotonic()
    with pytest.raises(TimestampError):
        timestamp.fetch_token(authority, b"log bytes")
    assert time.monotonic() - started < 5, "the TSA request outlived its timeout many times over"


def test_backfill_does_not_timestamp_a_run_that_fails_verification(tmp_path: Path, tsa: TimestampAuthority) -> None:
    """A signed run whose token was missed, then edited: the next run fetches a trusted token over the edited bytes
    (without_token looks only for a .sig file), so the TSA now vouches for a forgery."""
    box = stamped_sandbox(tmp_path / "sandbox", tsa.ca)
    first, _ = run(box, f"http://127.0.0.1:{free_port()}/tsr")
    data = bytearray(first.read_bytes())
    data[data.index(b'"changed":') + 10] ^= 1
    first.write_bytes(bytes(data))
    run(box, tsa.url)
    assert not Path(f"{first}.tsr").exists(), "a token was fetched for a run whose signature does not verify"


# --- 2. audit report ------------------------------------------------------------------------------------------------

def _report(sandbox: Sandbox, tmp_path: Path) -> tuple[int, str]:
    out = tmp_path / "report.html"
    result = sandbox.cli("audit", "report", "--out", str(out))
    return result.exit_code, out.read_text() if out.exists() else result.stderr[-600:]


def test_report_and_verify_survive_an_event_that_is_a_list(tmp_path: Path) -> None:
    """A crafted file in the audit dir whose `event` is a JSON array: `audit verify` and `audit report` crash with
    TypeError (unhashable list, `in EVENTS` / `in ENDED`) instead of reporting it and exiting 5."""
    sandbox = cookie_sandbox(tmp_path, runs=1)
    craft(sandbox, {"seq": 0, "event": ["run_started"], "run_id": "00000000000000ff"})
    verified = sandbox.cli("audit", "verify")
    assert 5 == verified.exit_code, verified.stderr[-600:]
    code, html = _report(sandbox, tmp_path)
    assert (5, True) == (code, CRAFTED in html), html


def test_report_survives_a_status_that_is_a_list(tmp_path: Path) -> None:
    """A crafted (unsigned) run whose run_finished has "status": [...]: the report shows every run as found, and
    `_status_class` crashes with TypeError on the unhashable status."""
    sandbox = cookie_sandbox(tmp_path, runs=1)
    craft(sandbox, {"seq": 0, "event": "run_started", "run_id": "00000000000000ff", "ts": "2026-01-01T00:00:00Z"},
          {"seq": 1, "event": "run_finished", "run_id": "00000000000000ff", "status": ["ok"]})
    code, html = _report(sandbox, tmp_path)
    assert (5, True) == (code, CRAFTED in html), html


def test_verify_and_report_survive_a_number_too_long_for_python(tmp_path: Path) -> None:
    """A 5000-digit integer in a crafted line: json.loads raises ValueError (int max_str_digits), which is no
    JSONDecodeError, so `audit verify` crashes instead of saying 'line 1 is not JSON' and exiting 5."""
    sandbox = cookie_sandbox(tmp_path, runs=1)
    craft(sandbox, b'{"seq":0,"event":"run_started","run_id":"00000000000000ff","matched":' + b"9" * 5000 + b"}")
    verified = sandbox.cli("audit", "verify")
    assert 5 == verified.exit_code, verified.stderr[-600:]
    code, html = _report(sandbox, tmp_path)
    assert (5, True) == (code, CRAFTED in html), html


def test_report_survives_a_start_time_out_of_range(tmp_path: Path) -> None:
    """`ts` = 0001-01-01T00:00:00+01:00 parses, and astimezone(UTC) raises OverflowError: the report crashes."""
    sandbox = cookie_sandbox(tmp_path, runs=1)
    craft(sandbox, {"seq": 0, "event": "run_started", "run_id": "00000000000000ff", "ts": "0001-01-01T00:00:00+01:00"})
    code, html = _report(sandbox, tmp_path)
    assert (5, True) == (code, CRAFTED in html), html


def test_report_out_may_not_replace_the_config_file(tmp_path: Path) -> None:
    """plan --save and requests certificate --out refuse the config file (output_path); audit report --out does not
    and replaces the config with HTML."""
    sandbox = cookie_sandbox(tmp_path, runs=1)
    before = sandbox.config.read_text()
    result = sandbox.cli("audit", "report", "--out", str(sandbox.config))
    assert 2 == result.exit_code
    assert before == sandbox.config.read_text()


def test_report_out_may_not_land_in_the_audit_dir(tmp_path: Path) -> None:
    """A report written into the audit dir is a foreign file there: every later `audit verify`, `audit find` and
    certificate fails (exit 5) until someone deletes it."""
    sandbox = cookie_sandbox(tmp_path, runs=1)
    result = sandbox.cli("audit", "report", "--out", str(sandbox.audit_dir / "report.html"))
    assert 2 == result.exit_code
    assert 0 == sandbox.cli("audit", "verify").exit_code


# --- 3. native expiry in check --------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    {"timeseries": {"timeField": "started_at"}, "expireAfterSeconds": 60},
    {"clusteredIndex": {"key": {"_id": 1}, "unique": True}, "expireAfterSeconds": 60},
], ids=["time-series", "clustered"])
def test_check_sees_a_collection_level_ttl(tmp_path: Path, mongo_store: MongoStore, options: dict[str, Any]) -> None:
    """MongoDB also expires whole collections by an option, not an index: a time-series collection's (or a clustered
    collection's) expireAfterSeconds deletes documents 60 s old under a 24-month rule. ttl_indexes reads only
    index_information(), so check exits 0 and says nothing."""
    mongo_store.database.create_collection("sessions", **options)
    mongo_store.database.create_collection("clients")
    box = make_sandbox(tmp_path / "sandbox", mongo_store)
    box.write(SESSIONS)
    result = box.cli("check")
    assert 1 == result.exit_code, result.stdout + result.stderr
    assert "earlier than the rule" in result.stdout


# --- 4. ops: retention-cron ----------------------------------------------------------------------------------------

def _wrapper_env(tmp_path: Path, content: bytes, timeout: float = 60) -> tuple[int, dict[str, str], str]:
    """Run deploy/cron/retention-cron under dash over an env file; the environment its command saw."""
    env_file = tmp_path / "env"
    env_file.write_bytes(content)
    seen = tmp_path / "seen.json"
    command = [shutil.which("dash") or "/bin/sh", str(WRAPPER), str(env_file), sys.executable, "-c",
               f"import json, os; json.dump(dict(os.environ), open({str(seen)!r}, 'w'))"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env={"PATH": "/usr/bin:/bin"})
    return result.returncode, json.loads(seen.read_text()) if seen.exists() else {}, result.stderr


def test_env_file_keys_that_are_the_wrappers_own_variables_do_not_change_how_it_parses(tmp_path: Path) -> None:
    """`cr=E` and `tab=a` are valid names systemd exports as any other; the wrapper exports them into its own
    parsing variables, after which every value loses a trailing E (the "CR" it strips) and its trailing a's (the
    "blanks" it trims): KEY=VALUE arrives as VALU, DATA=banana as banan. `number=x` kills it with 'Illegal
    number' and no JSON line."""
    code, seen, stderr = _wrapper_env(tmp_path, b"cr=E\ntab=a\nKEY=VALUE\nDATA=banana\n")
    assert 0 == code, stderr
    assert ("VALUE", "banana") == (seen.get("KEY"), seen.get("DATA"))
    code, seen, stderr = _wrapper_env(tmp_path, b"number=x\nA=1\n")
    assert (0, "1") == (code, seen.get("A")), stderr


def test_a_long_value_does_not_stall_the_wrapper(tmp_path: Path) -> None:
    """The parser walks a line one character at a time with ${rest#?}, copying the rest each time: a 6000-character
    value (a base64 credential, a long URL) takes about a minute under dash, 8000 more than 90 s, before the job
    even starts; cron starts the next one regardless."""
    value = "x" * 6000
    started = time.monotonic()
    code, seen, stderr = _wrapper_env(tmp_path, f"K={value}\n".encode(), timeout=300)
    assert (0, value) == (code, seen.get("K")), stderr
    assert time.monotonic() - started < 10


# --- 4. ops: metrics -----------------------------------------------------------------------------------------------

def test_a_damaged_last_success_marker_does_not_fail_every_run(tmp_path: Path) -> None:
    """state_dir/last_success is written in place (write_text: truncate, then write); a crash or a full disk in
    between leaves it empty, and float('') raises ValueError, which run() does not catch (only OSError): every
    later run then ends as an unexpected error (exit 1) after signing, and the metrics file is never written
    again until someone finds and deletes the marker."""
    sandbox = cookie_sandbox(tmp_path, runs=0)
    metrics = tmp_path / "metrics" / "retention.prom"
    sandbox.config.write_text(sandbox.config.read_text().replace(
        "batch_size = 2\n", f'batch_size = 2\nmetrics_file = "{metrics}"\n', 1))
    (sandbox.root / "state").mkdir(parents=True, exist_ok=True)
    (sandbox.root / "state" / "last_success").write_text("")
    result = sandbox.cli("run", "--dry-run")
    assert 0 == result.exit_code, result.stderr[-600:]
    assert metrics.exists()


# --- 6. fixes after the last review ---------------------------------------------------------------------------------

def test_a_dotted_age_field_through_an_array_of_documents_is_never_expired(mongo_store: MongoStore,
                                                                           tmp_path: Path) -> None:
    """The array fix guards `{field: {$not: {$type: "array"}}}`, but a dotted path through an array of subdocuments
    ("visits.at" over [{at: 800 days ago}, {at: yesterday}]) yields each element's date, none of them an array:
    `$lt: cutoff` matches by the old one and the document is deleted, though it also holds a recent date. Like
    [old, recent] it has no single age: it should be unknown_age and stay."""
    mongo_store.database["sessions"].insert_many([
        {"_id": 1, "visits": [{"at": NOW - timedelta(days=800)}, {"at": NOW - timedelta(days=1)}]},
        {"_id": 2, "visits": {"at": NOW - timedelta(days=800)}}])
    sandbox = make_sandbox(tmp_path / "sandbox", mongo_store)
    sandbox.write(SESSIONS_RULE.replace('connector = "events"', 'connector = "app"')
                  .replace('field = "started_at"', 'field = "visits.at"'), clients=False)
    rule = json.loads(sandbox.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json").stdout)["rules"][0]
    assert (1, 1) == (rule["matched"], rule["unknown_age"]), rule
    assert [1] == [d["_id"] for d in mongo_store.database["sessions"].find()]
