"""The audit log: openssl-verifiable signatures, hash chains, and `audit verify` catching every tampering."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, audit_files, make_sandbox
from tests.stores import SqliteStore

RUNS = 3


@pytest.fixture
def audited(tmp_path: Path) -> Sandbox:
    """A sandbox on SQLite with three completed runs in its audit dir."""
    store = SqliteStore(tmp_path / "app.db")
    store.standard_schema()
    add_cookies(store, NOW, *[timedelta(days=800 + i) for i in range(5)], timedelta(days=3))
    sandbox = make_sandbox(tmp_path / "sandbox", store)
    sandbox.write(COOKIE_RULE)
    for _ in range(RUNS):
        assert 0 == sandbox.cli("run").exit_code
    return sandbox


def verify(sandbox: Sandbox, *paths: Path) -> tuple[int, list[dict]]:
    result = sandbox.cli("audit", "verify", "--format", "json", *map(str, paths))
    return result.exit_code, json.loads(result.stdout)


def test_openssl_verifies_a_run_without_this_project(audited: Sandbox) -> None:
    """Compliance can check a signature with plain openssl and the public key."""
    log = audit_files(audited)[0]
    result = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(audited.public_key),
                             "-rawin", "-in", str(log), "-sigfile", f"{log}.sig"], capture_output=True, text=True)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "Signature Verified Successfully" in result.stdout


def test_lines_are_canonical_and_chained(audited: Sandbox) -> None:
    """Sorted keys, no spaces, seq from 0, each `prev` the SHA-256 of the line before; runs chain file to file."""
    import hashlib

    files = audit_files(audited)
    previous_file = "0" * 64
    for path in files:
        lines = path.read_bytes().splitlines()
        for seq, line in enumerate(lines):
            event = json.loads(line)
            assert json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() == line
            assert seq == event["seq"]
            expected = previous_file if seq == 0 else hashlib.sha256(lines[seq - 1]).hexdigest()
            assert expected == event["prev"]
        previous_file = hashlib.sha256(path.read_bytes()).hexdigest()


def test_untouched_logs_verify(audited: Sandbox) -> None:
    """Three honest runs: every one ok, exit 0."""
    code, checks = verify(audited)
    assert (0, ["ok"] * RUNS) == (code, [c["status"] for c in checks])


def test_one_edited_byte_is_a_bad_signature(audited: Sandbox) -> None:
    """Changing a single byte of a run file breaks its signature."""
    log = audit_files(audited)[1]
    data = bytearray(log.read_bytes())
    data[data.index(b'"changed":') + 10] ^= 1
    log.write_bytes(bytes(data))
    code, checks = verify(audited)
    assert (5, "bad signature") == (code, checks[1]["status"])


def test_a_removed_line_is_caught(audited: Sandbox) -> None:
    """Dropping a line (re-signing is impossible without the key) fails verification."""
    log = audit_files(audited)[0]
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:2] + lines[3:]))
    code, checks = verify(audited)
    assert (5, "bad signature") == (code, checks[0]["status"])


def test_a_swapped_signature_is_caught(audited: Sandbox) -> None:
    """A valid signature of another run does not verify this one."""
    first, second = audit_files(audited)[:2]
    shutil.copy(f"{second}.sig", f"{first}.sig")
    code, checks = verify(audited)
    assert (5, "bad signature") == (code, checks[0]["status"])


def test_a_run_deleted_from_the_middle_is_caught(audited: Sandbox) -> None:
    """Removing a whole run (and its signature) leaves the next run without its predecessor."""
    middle = audit_files(audited)[1]
    for path in middle.parent.glob(middle.name.removesuffix(".jsonl") + "*"):
        path.unlink()
    code, checks = verify(audited)
    assert (5, ["ok", "missing predecessor"]) == (code, [c["status"] for c in checks])


def test_reordered_runs_are_caught(audited: Sandbox) -> None:
    """Renaming files so two runs swap places breaks the run-to-run chain."""
    first, second = audit_files(audited)[:2]
    stamp_a, stamp_b = first.name.split("-")[0], second.name.split("-")[0]
    for path in list(first.parent.iterdir()):
        if path.name.startswith(stamp_a):
            path.rename(path.with_name(path.name.replace(stamp_a, stamp_b)))
        elif path.name.startswith(stamp_b):
            path.rename(path.with_name(path.name.replace(stamp_b, stamp_a)))
    code, checks = verify(audited)
    assert 5 == code
    assert "broken chain" in {c["status"] for c in checks}


def test_a_crashed_run_is_reported_until_a_later_run_seals_it(audited: Sandbox) -> None:
    """An unsigned run is a problem on its own; the next run chains to it and acknowledges it."""
    last = audit_files(audited)[-1]
    Path(f"{last}.sig").unlink()
    lines = last.read_bytes().splitlines(keepends=True)
    last.write_bytes(b"".join(lines[:-1]))  # the run died before run_finished
    code, checks = verify(audited)
    assert (5, "incomplete (unacknowledged)") == (code, checks[-1]["status"])
    assert 0 == audited.cli("run").exit_code
    first_line = json.loads(audit_files(audited)[-1].read_text().splitlines()[0])
    assert first_line["previous_incomplete"] is True
    code, checks = verify(audited)
    assert (0, "incomplete (acknowledged by a later run)", "ok") == (code, checks[-2]["status"], checks[-1]["status"])


def test_a_run_that_dies_while_signing_is_sealed_by_the_next(audited: Sandbox,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between writing the signature's temporary file and renaming it: the temporary file left behind is no
    foreign file (which would fail every later `audit verify`); the run is incomplete until the next one seals it."""
    import os

    from retention.audit import writer

    temporary: list[str] = []

    def killed(source: object, target: object) -> None:
        temporary.append(Path(str(source)).name)  # a SIGKILL here would leave it: a dot file, which verify passes over
        raise KeyboardInterrupt  # the process dies here: the signature never takes its name

    real = os.replace
    monkeypatch.setattr(writer.os, "replace", killed)
    assert 1 == audited.cli("run").exit_code
    assert temporary and temporary[0].startswith(".") and temporary[0].endswith(".jsonl.sig.tmp"), temporary
    monkeypatch.setattr(writer.os, "replace", real)
    again = audited.cli("run")
    assert 0 == again.exit_code, again.stderr
    code, checks = verify(audited)
    assert (0, "incomplete (acknowledged by a later run)") == (code, checks[-2]["status"]), checks


def test_sidecar_names_changed_records_by_keyed_hash(audited: Sandbox) -> None:
    """The .ids sidecar lists one keyed hash per changed record, and tampering with it is caught."""
    first = audit_files(audited)[0]
    sidecar = first.with_name(first.name.replace(".jsonl", ".ids"))
    lines = sidecar.read_text().splitlines()
    assert 5 == len(lines) and all(line.startswith("changed cookies ") for line in lines)
    sidecar.write_text("\n".join(lines[:-1]) + "\n")
    code, checks = verify(audited)
    assert (5, "broken chain") == (code, checks[0]["status"])


def test_a_rotated_key_still_verifies_old_runs(audited: Sandbox, tmp_path: Path) -> None:
    """With a keyring (--public-key twice), runs signed by the old and the new key both verify."""
    from retention.audit import generate_keypair

    old_public = tmp_path / "old-public.pem"
    shutil.copy(audited.public_key, old_public)
    new_private, new_public = tmp_path / "new-private.pem", tmp_path / "new-public.pem"
    generate_keypair(new_private, new_public)
    assert 0 == audited.cli("run", env={"RETENTION_AUDIT_KEY": str(new_private)}).exit_code
    result = audited.cli("audit", "verify", "--public-key", str(old_public), "--public-key", str(new_public))
    assert 0 == result.exit_code, result.stdout
    assert 5 == audited.cli("audit", "verify", "--public-key", str(old_public)).exit_code


def test_run_events_use_the_closed_vocabulary_without_floats(audited: Sandbox) -> None:
    """Every event is from the SPEC's vocabulary; values are integers, strings, booleans, lists or null."""
    allowed = {"run_started", "rule_started", "batch_applied", "rule_finished", "rule_skipped", "rule_failed",
               "run_finished"}
    for path in audit_files(audited):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            assert event["event"] in allowed
            assert not any(isinstance(v, float) for v in event.values())
    header = json.loads(audit_files(audited)[0].read_text().splitlines()[0])
    assert {"tool_version", "config_sha256", "host", "user", "now", "clock_override", "dry_run", "rules",
            "public_key_fingerprint", "previous_incomplete"} <= set(header)


def test_audit_list_and_show_summarize_runs(audited: Sandbox) -> None:
    """`audit list` has one row per run; `audit show` gives per-rule counts of one run."""
    listed = json.loads(audited.cli("audit", "list", "--format", "json").stdout)
    assert [5, 0, 0] == [run["changed"] for run in listed]
    shown = json.loads(audited.cli("audit", "show", listed[0]["run_id"], "--format", "json").stdout)
    rule = shown["rules"][0]
    assert ("cookies", 5, "ok") == (rule["rule"], rule["changed"], rule["status"])


def _crash(run: Path) -> None:
    """Make a finished run look like one that died before run_finished: no signature, last line gone."""
    Path(f"{run}.sig").unlink()
    run.write_bytes(b"".join(run.read_bytes().splitlines(keepends=True)[:-1]))


def test_acknowledgement_follows_the_chain_across_several_dead_runs(audited: Sandbox) -> None:
    """Two runs die in a row; the next signed run seals both, and `audit verify` passes."""
    _crash(audit_files(audited)[-1])
    assert 0 == audited.cli("run").exit_code
    _crash(audit_files(audited)[-1])
    assert 0 == audited.cli("run").exit_code
    code, checks = verify(audited)
    acknowledged = "incomplete (acknowledged by a later run)"
    assert (0, [acknowledged, acknowledged, "ok"]) == (code, [c["status"] for c in checks[-3:]])
