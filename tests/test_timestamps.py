"""Trusted timestamps: an RFC 3161 token per signed run, checked by plain openssl; a TSA that is down costs no run."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from retention.audit import timestamp
from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, audit_files, make_sandbox
from tests.servers import TimestampAuthority, free_port
from tests.stores import SqliteStore

SECRET = "tsa-pass-w0rd-42"  # noqa: S105 - a made-up credential in the TSA's URL, which must never be printed


def stamped_sandbox(root: Path, ca: Path, *, audit: str = "", url: str = "${TSA_URL}") -> Sandbox:
    """A sandbox on SQLite whose runs ask the TSA at $TSA_URL for a token, trusting `ca`."""
    store = SqliteStore(root.parent / f"{root.name}.db")
    store.standard_schema()
    add_cookies(store, NOW, *[timedelta(days=800 + i) for i in range(3)], timedelta(days=3))
    box = make_sandbox(root, store)
    box.write(COOKIE_RULE)
    lines = f'timestamp = {{ url = "{url}", ca_file = "{ca}" }}\n{audit}'
    box.config.write_text(box.config.read_text().replace("[secrets]", f"{lines}\n[secrets]", 1))
    return box


@pytest.fixture
def box(tmp_path: Path, tsa: TimestampAuthority) -> Sandbox:
    return stamped_sandbox(tmp_path / "sandbox", tsa.ca)


def run(box: Sandbox, url: str, expect: int = 0) -> tuple[Path, str]:
    """One run asking the TSA at `url`; the run's log file and its stderr."""
    result = box.cli("run", "--format", "json", env={"TSA_URL": url})
    assert expect == result.exit_code, result.stdout + result.stderr
    return Path(json.loads(result.stdout)["audit_file"]), result.stderr


def verify(box: Sandbox, *args: str) -> tuple[int, list[dict[str, str]]]:
    result = box.cli("audit", "verify", "--format", "json", *args)
    return result.exit_code, json.loads(result.stdout) if result.stdout.startswith("[") else result.stderr


def events(stderr: str, name: str) -> list[dict[str, str]]:
    return [e for e in (json.loads(line) for line in stderr.splitlines() if line.startswith("{")) if e["event"] == name]


def openssl_verify(log: Path, ca: Path) -> subprocess.CompletedProcess[str]:
    """The README's command, as written: the TSA's certificate comes from the token itself."""
    return subprocess.run(["openssl", "ts", "-verify", "-data", str(log), "-in", f"{log}.tsr", "-CAfile", str(ca)],
                          capture_output=True, text=True)


def test_a_run_stores_a_token_that_openssl_verifies(box: Sandbox, tsa: TimestampAuthority) -> None:
    """The signed log gets `<name>.jsonl.tsr`: the TSA's reply, over the file's SHA-256, with a nonce and its cert."""
    log, stderr = run(box, tsa.url)
    assert Path(f"{log}.sig").exists()
    result = openssl_verify(log, tsa.ca)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "Verification: OK" in result.stdout
    text = subprocess.run(["openssl", "ts", "-reply", "-in", f"{log}.tsr", "-text"], capture_output=True,
                          text=True, check=True).stdout
    assert "Status: Granted." in text and "Nonce: unspecified" not in text and "Nonce: 0x" in text
    assert [log.name] == [e["file"] for e in events(stderr, "timestamp_stored")]
    code, checks = verify(box)
    assert (0, ["ok"]) == (code, [c["status"] for c in checks])
    assert checks[0]["detail"].startswith("timestamped 20")


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(box: Sandbox, tsa: TimestampAuthority) -> None:
    """`https://user:pass@tsa/...`: the TSA gets HTTP basic auth; neither output nor log shows the password."""
    result = box.cli("run", env={"TSA_URL": tsa.url.replace("http://", f"http://auditor:{SECRET}@")})
    assert 0 == result.exit_code, result.stderr
    log = audit_files(box)[0]
    assert Path(f"{log}.tsr").exists()
    expected = "Basic " + base64.b64encode(f"auditor:{SECRET}".encode()).decode()
    assert expected == tsa.authorizations[-1]
    assert SECRET not in result.stdout + result.stderr


def test_openssl_refuses_the_token_for_another_file_or_ca(box: Sandbox, tsa: TimestampAuthority) -> None:
    """The token vouches for these bytes only, issued under this CA only (the openssl check is not a formality)."""
    log, _ = run(box, tsa.url)
    assert 0 != openssl_verify(log, tsa.other_ca).returncode
    log.write_bytes(log.read_bytes() + b"\n")
    assert 0 != openssl_verify(log, tsa.ca).returncode


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A server that takes the connection and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/tsr"


@pytest.mark.parametrize(("fault", "reason"), [
    ("refused", "could not be reached"),
    ("silent", "no answer within"),
    ("http-500", "HTTP 500"),
    ("redirect", "redirect, not followed"),
    ("garbage", "not a TimeStampResp"),
    ("reject", "refused: rejection"),
    ("untrusted", "does not verify against the TSA's CA"),
])
def test_a_tsa_that_fails_costs_the_run_nothing(tmp_path: Path, tsa: TimestampAuthority, silent_port: str,
                                                monkeypatch: pytest.MonkeyPatch, fault: str, reason: str) -> None:
    """Down, silent, broken or untrusted: the run still exits 0 with its signature, no token is stored, the log says
    why (without the URL's credentials), and verify shows the gap but passes."""
    monkeypatch.setattr(timestamp, "TIMEOUT_SECONDS", 0.5)
    box = stamped_sandbox(tmp_path / "sandbox", tsa.other_ca if fault == "untrusted" else tsa.ca)
    base = {"refused": f"http://127.0.0.1:{free_port()}/tsr", "silent": silent_port,
            "untrusted": tsa.url}.get(fault, tsa.at(f"/{fault}"))
    url = base.replace("http://", f"http://auditor:{SECRET}@")
    result = box.cli("run", "--format", "json", env={"TSA_URL": url})
    assert 0 == result.exit_code, result.stderr
    log = Path(json.loads(result.stdout)["audit_file"])
    assert Path(f"{log}.sig").exists() and not Path(f"{log}.tsr").exists()
    failed = events(result.stderr, "timestamp_failed")
    assert [log.name] == [e["file"] for e in failed]
    assert reason in failed[0]["reason"], failed
    assert SECRET not in result.stdout + result.stderr
    assert "127.0.0.1" in failed[0]["tsa"]
    code, checks = verify(box)
    assert (0, ["ok (no timestamp yet)"]) == (code, [c["status"] for c in checks])
    assert "ok (no timestamp yet)" in box.cli("audit", "verify").stdout


def test_the_next_run_fetches_the_missing_tokens(box: Sandbox, tsa: TimestampAuthority) -> None:
    """Two runs while the TSA is down; the third, with it up, stamps itself and both earlier runs as they are."""
    down = f"http://127.0.0.1:{free_port()}/tsr"
    missed = [run(box, down)[0], run(box, down)[0]]
    log, stderr = run(box, tsa.url)
    assert [log.name, *(m.name for m in missed)] == [e["file"] for e in events(stderr, "timestamp_stored")]
    for path in [*missed, log]:
        assert 0 == openssl_verify(path, tsa.ca).returncode, path
    code, checks = verify(box)
    assert (0, ["ok"] * 3) == (code, [c["status"] for c in checks])


def test_backfilling_is_bounded_and_oldest_first(box: Sandbox, tsa: TimestampAuthority,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A run fetches at most BACKLOG earlier tokens, the oldest first; the rest follow with later runs."""
    monkeypatch.setattr(timestamp, "BACKLOG", 1)
    down = f"http://127.0.0.1:{free_port()}/tsr"
    first, second = run(box, down)[0], run(box, down)[0]
    third = run(box, tsa.url)[0]
    assert [True, False, True] == [Path(f"{p}.tsr").exists() for p in (first, second, third)]
    run(box, tsa.url)
    assert all(Path(f"{p}.tsr").exists() for p in audit_files(box))


def test_backfilling_stops_when_the_time_budget_is_spent(box: Sandbox, tsa: TimestampAuthority,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request may take TIMEOUT_SECONDS; a backfill request starts only while one still fits in the run's
    BUDGET_SECONDS. The rest is logged as deferred and left to the next run."""
    down = f"http://127.0.0.1:{free_port()}/tsr"
    missed = [run(box, down)[0], run(box, down)[0]]
    monkeypatch.setattr(timestamp, "BUDGET_SECONDS", timestamp.TIMEOUT_SECONDS)  # room for this run's own token only
    log, stderr = run(box, tsa.url)
    assert [log.name] == [e["file"] for e in events(stderr, "timestamp_stored")]
    assert [missed[0].name] == [e["file"] for e in events(stderr, "timestamp_deferred")]
    assert not any(Path(f"{m}.tsr").exists() for m in missed)
    monkeypatch.undo()
    _, stderr = run(box, tsa.url)
    assert all(Path(f"{p}.tsr").exists() for p in audit_files(box))


def test_backfill_skips_a_run_whose_signature_does_not_verify(box: Sandbox, tsa: TimestampAuthority) -> None:
    """A run edited after it was signed gets no token (the TSA would vouch for the forgery), is logged as
    timestamp_skipped with the reason, and does not hold up the runs after it."""
    down = f"http://127.0.0.1:{free_port()}/tsr"
    edited, intact = run(box, down)[0], run(box, down)[0]
    edited.write_bytes(edited.read_bytes().replace(b'"changed":', b'"changed": ', 1))
    log, stderr = run(box, tsa.url)
    skipped = events(stderr, "timestamp_skipped")
    assert [edited.name] == [e["file"] for e in skipped]
    assert "signature" in skipped[0]["reason"]
    assert [log.name, intact.name] == [e["file"] for e in events(stderr, "timestamp_stored")]
    assert not Path(f"{edited}.tsr").exists()
    _, stderr = run(box, tsa.url)  # still skipped, never stamped
    assert [edited.name] == [e["file"] for e in events(stderr, "timestamp_skipped")]
    assert not Path(f"{edited}.tsr").exists()


def test_no_temporary_token_file_is_left_behind(box: Sandbox, tsa: TimestampAuthority,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A token that cannot be put in place leaves no temporary file; one left by a crash (or an older version, which
    wrote `<name>.jsonl.tsr.tmp`) is removed by the next run, so `audit verify` never sees a foreign file."""
    def failing(*args: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(timestamp, "os", SimpleNamespace(replace=failing))  # this module's os only: the .sig goes in
        first, stderr = run(box, tsa.url)
    assert "cannot read the log or write its token" in events(stderr, "timestamp_failed")[0]["reason"]
    assert [] == [p.name for p in box.audit_dir.iterdir() if p.name.endswith(".tmp")]
    Path(f"{first}.tsr.tmp").write_bytes(b"half a token")  # as a crash of an older version leaves it
    (box.audit_dir / f".{first.name}.tsr.tmp").write_bytes(b"half a token")
    assert 5 == verify(box)[0]
    run(box, tsa.url)
    assert [] == [p.name for p in box.audit_dir.iterdir() if p.name.endswith(".tmp")]
    code, checks = verify(box)
    assert (0, ["ok", "ok"]) == (code, [c["status"] for c in checks])


def test_a_run_asks_once_while_the_tsa_is_down(box: Sandbox, tsa: TimestampAuthority) -> None:
    """With the TSA down, a run asks once, for its own token, not once per earlier run (each would time out)."""
    down = f"http://127.0.0.1:{free_port()}/tsr"
    run(box, down)
    _, stderr = run(box, down)
    assert 1 == len(events(stderr, "timestamp_failed"))


def test_a_tampered_token_fails_verification(box: Sandbox, tsa: TimestampAuthority) -> None:
    """One byte of the TSA's signature changed: `audit verify` reports a bad timestamp and exits 5."""
    log, _ = run(box, tsa.url)
    token = bytearray(Path(f"{log}.tsr").read_bytes())
    token[-10] ^= 1
    Path(f"{log}.tsr").write_bytes(bytes(token))
    code, checks = verify(box)
    assert (5, "bad timestamp") == (code, checks[0]["status"])
    assert "FAIL" in box.cli("audit", "verify").stdout


def test_a_token_of_another_run_fails_verification(box: Sandbox, tsa: TimestampAuthority) -> None:
    """A genuine token, but over another run's file: the imprint differs, exit 5."""
    first, _ = run(box, tsa.url)
    second, _ = run(box, tsa.url)
    shutil.copy(f"{first}.tsr", f"{second}.tsr")
    code, checks = verify(box)
    assert (5, ["ok", "bad timestamp"]) == (code, [c["status"] for c in checks])
    assert "other bytes" in checks[1]["detail"]


def test_garbage_in_a_token_file_fails_verification(box: Sandbox, tsa: TimestampAuthority) -> None:
    log, _ = run(box, tsa.url)
    Path(f"{log}.tsr").write_bytes(b"not a token")
    code, checks = verify(box)
    assert (5, "bad timestamp") == (code, checks[0]["status"])


def test_verify_checks_the_token_against_the_ca_it_is_given(box: Sandbox, tsa: TimestampAuthority) -> None:
    """`--tsa-ca` names the CA to trust: a token from a TSA it did not certify fails, exit 5."""
    run(box, tsa.url)
    assert (0, "ok") == (verify(box, "--tsa-ca", str(tsa.ca))[0], verify(box, "--tsa-ca", str(tsa.ca))[1][0]["status"])
    code, checks = verify(box, "--tsa-ca", str(tsa.other_ca))
    assert (5, "bad timestamp") == (code, checks[0]["status"])
    assert "CA" in checks[0]["detail"]


def test_without_a_configured_tsa(tmp_path: Path, tsa: TimestampAuthority) -> None:
    """No TSA configured: no token, plain `ok` as before; a token that is there is still matched to its file, and
    verify says its signature went unchecked."""
    box = stamped_sandbox(tmp_path / "sandbox", tsa.ca)
    stamped, _ = run(box, tsa.url)
    setting = f'timestamp = {{ url = "${{TSA_URL}}", ca_file = "{tsa.ca}" }}'
    box.config.write_text(box.config.read_text().replace(setting, ""))
    plain, _ = run(box, tsa.url)
    assert not Path(f"{plain}.tsr").exists()
    code, checks = verify(box)
    assert (0, ["ok", "ok"]) == (code, [c["status"] for c in checks])
    assert "not checked" in checks[0]["detail"] and "" == checks[1]["detail"]
    shutil.copy(f"{stamped}.tsr", f"{plain}.tsr")
    assert (5, "bad timestamp") == (verify(box)[0], verify(box)[1][1]["status"])


@pytest.mark.parametrize(("setting", "key", "message"), [
    ('{ url = "${TSA_URL}", ca_file = "ca.pem", colour = "blue" }', "audit.timestamp.colour", "unknown key"),
    ('{ ca_file = "ca.pem" }', "audit.timestamp.url", "is required"),
    ('{ url = "${TSA_URL}" }', "audit.timestamp.ca_file", "is required"),
    ('{ url = 443, ca_file = "ca.pem" }', "audit.timestamp.url", "expected a string"),
    (f'{{ url = "ftp://auditor:{SECRET}@tsa.example/", ca_file = "ca.pem" }}', "audit.timestamp.url", "http://"),
    ('"https://tsa.example/"', "audit.timestamp", "expected a table"),
])
def test_config_errors(tmp_path: Path, setting: str, key: str, message: str) -> None:
    """Strictly validated before anything runs: exit 2 naming the file and key; the URL's credentials unprinted."""
    box = stamped_sandbox(tmp_path / "sandbox", tmp_path / "ca.pem")
    text = box.config.read_text()
    start = text.index("timestamp = ")
    box.config.write_text(text[:start] + f"timestamp = {setting}" + text[text.index("\n", start):])
    for command in (("check", "--offline"), ("run",)):
        result = box.cli(*command, env={"TSA_URL": "http://127.0.0.1:9/tsr"})
        assert 2 == result.exit_code, result.stdout + result.stderr
        assert f"{box.config}: {key}: " in result.stderr and message in result.stderr, result.stderr
        assert SECRET not in result.stdout + result.stderr
    assert [] == audit_files(box)


def test_an_unusable_ca_file_or_url_stops_the_run_before_it_starts(tmp_path: Path, tsa: TimestampAuthority) -> None:
    """A CA file that is missing or holds no certificate, or a $TSA_URL that is no URL: exit 2, nothing written."""
    box = stamped_sandbox(tmp_path / "sandbox", tmp_path / "missing.pem")
    result = box.cli("run", env={"TSA_URL": tsa.url})
    assert 2 == result.exit_code and "audit.timestamp.ca_file" in result.stderr, result.stderr
    (tmp_path / "missing.pem").write_text("not a certificate\n")
    result = box.cli("run", env={"TSA_URL": tsa.url})
    assert 2 == result.exit_code and "holds no PEM certificate" in result.stderr, result.stderr
    result = box.cli("run", env={"TSA_URL": f"tsa.example:{SECRET}"})
    assert 2 == result.exit_code and "audit.timestamp.url" in result.stderr, result.stderr
    assert SECRET not in result.stderr
    result = box.cli("run")
    assert 2 == result.exit_code and "TSA_URL is not set" in result.stderr, result.stderr
    assert [] == audit_files(box)


def test_the_worm_copy_gets_the_tokens(tmp_path: Path, tsa: TimestampAuthority, moto_url: str) -> None:
    """The token goes to the WORM bucket with its run; one fetched late follows with the run that fetched it."""
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    worm = f's3 = {{ connector = "files", bucket = "{bucket}", prefix = "runs/", retain_days = 1 }}\n'
    box = stamped_sandbox(tmp_path / "sandbox", tsa.ca, audit=worm)
    box.config.write_text(box.config.read_text() + f'\n[connectors.files]\ntype = "s3"\nendpoint_url = "{moto_url}"\n'
                                                   'region = "us-east-1"\n')
    missed, _ = run(box, f"http://127.0.0.1:{free_port()}/tsr")
    names = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"runs/{missed.name}" in names and f"runs/{missed.name}.tsr" not in names
    log, _ = run(box, tsa.url)
    for path in (missed, log):
        copy = s3.get_object(Bucket=bucket, Key=f"runs/{path.name}.tsr")
        assert Path(f"{path}.tsr").read_bytes() == copy["Body"].read()
        assert "COMPLIANCE" == s3.head_object(Bucket=bucket, Key=f"runs/{path.name}.tsr")["ObjectLockMode"]
