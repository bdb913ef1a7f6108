"""`audit verify` on crafted audit dirs: forged, cut, empty and unsealed runs."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, audit_files, make_sandbox
from tests.stores import SqliteStore


@pytest.fixture
def audited(tmp_path: Path) -> Sandbox:
    store = SqliteStore(tmp_path / "app.db")
    store.standard_schema()
    add_cookies(store, NOW, *[timedelta(days=800 + i) for i in range(5)], timedelta(days=3))
    sandbox = make_sandbox(tmp_path / "sandbox", store)
    sandbox.write(COOKIE_RULE)
    for _ in range(2):
        assert 0 == sandbox.cli("run").exit_code
    return sandbox


def verify(sandbox: Sandbox) -> tuple[int, list[str]]:
    result = sandbox.cli("audit", "verify", "--format", "json")
    return result.exit_code, [c["status"] for c in json.loads(result.stdout)]


def line(event: dict) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def forged_run(name_stamp: str, run_id: str, prev: str, *, previous_incomplete: bool) -> bytes:
    first = line({"seq": 0, "ts": "2026-11-29T03:00:00Z", "run_id": run_id, "event": "run_started", "prev": prev,
                  "previous_incomplete": previous_incomplete, "dry_run": False, "rules": ["cookies"]})
    second = line({"seq": 1, "ts": "2026-11-29T03:00:01Z", "run_id": run_id, "event": "rule_started",
                   "prev": hashlib.sha256(first).hexdigest(), "rule": "cookies"})
    return first + b"\n" + second + b"\n"


def test_forged_dead_run_between_two_signed_runs(audited: Sandbox) -> None:
    """An unsigned run slipped between two signed runs breaks the chain: exit 5."""
    from datetime import datetime
    a, b = audit_files(audited)
    fmt = "%Y%m%dT%H%M%S%fZ"
    stamp = (datetime.strptime(a.name.split("-")[0], fmt) + timedelta(microseconds=1)).strftime(fmt)
    assert stamp < b.name.split("-")[0]
    prev = hashlib.sha256(a.read_bytes()).hexdigest()
    (a.parent / f"{stamp}-abcdef0123456789.jsonl").write_bytes(
        forged_run(stamp, "abcdef0123456789", prev, previous_incomplete=False))
    code, statuses = verify(audited)
    assert 5 == code, statuses


def test_unsigned_run_claiming_previous_incomplete_with_a_wrong_prev(audited: Sandbox) -> None:
    """An unsigned newest run that chains to nothing is a missing predecessor: exit 5."""
    b = audit_files(audited)[-1]
    stamp = "29991231T235959999999Z"
    (b.parent / f"{stamp}-abcdef0123456789.jsonl").write_bytes(
        forged_run(stamp, "abcdef0123456789", "1" * 64, previous_incomplete=True))
    code, statuses = verify(audited)
    assert 5 == code, statuses


def _crash(run: Path, keep: int | None = -1) -> None:
    Path(f"{run}.sig").unlink()
    run.write_bytes(b"".join(run.read_bytes().splitlines(keepends=True)[:keep]))


def test_dead_then_dead_then_nothing(audited: Sandbox) -> None:
    """Two dead runs with no signed run after them stay unacknowledged: exit 5."""
    _crash(audit_files(audited)[-1])
    assert 0 == audited.cli("run").exit_code
    _crash(audit_files(audited)[-1])
    code, statuses = verify(audited)
    assert 5 == code, statuses


def test_dead_run_whose_successor_signature_is_bad(audited: Sandbox) -> None:
    """A dead run is not sealed by a successor whose signature fails: exit 5."""
    _crash(audit_files(audited)[-1])
    assert 0 == audited.cli("run").exit_code
    last = audit_files(audited)[-1]
    Path(f"{last}.sig").write_bytes(b"\0" * 64)
    code, statuses = verify(audited)
    assert 5 == code, statuses


def test_a_run_that_died_writing_its_first_line_is_acknowledged_once_sealed(audited: Sandbox) -> None:
    """README: 'a crash can cut the last line short'; a run that dies leaves an unsigned file, the next run
    chains to it (previous_incomplete) and verify reports it acknowledged. Here the crash cut run_started short."""
    last = audit_files(audited)[-1]
    Path(f"{last}.sig").unlink()
    last.write_bytes(last.read_bytes()[:40])  # died in the middle of writing run_started
    assert 0 == audited.cli("run").exit_code
    first_line = json.loads(audit_files(audited)[-1].read_text().splitlines()[0])
    assert first_line["previous_incomplete"] is True
    code, statuses = verify(audited)
    assert (0, "incomplete (acknowledged by a later run)") == (code, statuses[-2]), statuses


def test_a_run_that_died_before_its_first_line_is_acknowledged_once_sealed(audited: Sandbox) -> None:
    """The writer creates the file, then writes run_started: a kill in between leaves an empty file."""
    last = audit_files(audited)[-1]
    Path(f"{last}.sig").unlink()
    Path(str(last)[:-6] + ".ids").unlink()
    last.write_bytes(b"")
    assert 0 == audited.cli("run").exit_code
    code, statuses = verify(audited)
    assert (0, "incomplete (acknowledged by a later run)") == (code, statuses[-2]), statuses
