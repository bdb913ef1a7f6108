"""Checks audit logs: signatures, line chains, run-to-run chains, sidecar digests and completeness."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from retention.audit.events import EVENTS, RUN_FILE, RunFiles
from retention.audit.timestamp import TimestampPolicy, check_token, token_time
from retention.audit.writer import GENESIS, sha256_hex
from retention.timeutil import rfc3339

OK = "ok"
BAD_SIGNATURE = "bad signature"
BROKEN_CHAIN = "broken chain"
MISSING_PREDECESSOR = "missing predecessor"
ACKNOWLEDGED = "incomplete (acknowledged by a later run)"
UNACKNOWLEDGED = "incomplete (unacknowledged)"
NOT_A_RUN = "not an audit run file"
NO_TIMESTAMP = "ok (no timestamp yet)"  # signed and sound; its RFC 3161 token is fetched by a later run
BAD_TIMESTAMP = "bad timestamp"


@dataclass
class RunCheck:
    """The verdict on one file of the audit directory."""

    path: Path
    status: str
    run_id: str | None = None
    detail: str = ""
    events: list[dict[str, Any]] = field(default_factory=list, repr=False)
    sha256: str | None = None  # of the file's bytes, when it could be read

    @property
    def ok(self) -> bool:
        return self.status in (OK, ACKNOWLEDGED, NO_TIMESTAMP)


def verify(paths: Sequence[Path], keys: Sequence[Ed25519PublicKey],
           timestamps: TimestampPolicy | None = None) -> list[RunCheck]:
    """Check every run file under `paths` (files or folders), oldest first; one RunCheck per file.

    A run's `.tsr` token, where there is one, is checked too (against `timestamps.roots` when given).
    """
    files, foreign, whole_folders = _collect(paths)
    checks = [_check_file(path, keys) for path in files]
    digests = {check.sha256: index for index, check in enumerate(checks) if check.sha256}
    for index, check in enumerate(checks):
        if not check.events or check.status not in (OK, UNACKNOWLEDGED):
            continue
        prev = check.events[0].get("prev")
        expected = checks[index - 1].sha256 if index else GENESIS
        if prev == expected or (index == 0 and not whole_folders):
            continue
        if prev in digests:
            check.status, check.detail = BROKEN_CHAIN, f"chains to {files[digests[prev]].name}, out of order"
        else:
            check.status = MISSING_PREDECESSOR
            check.detail = "the run before it is missing" if index else "its predecessor is not in the audit dir"
    # Newest first, so that acknowledgement follows the chain: a dead run is sealed by the next run's header,
    # which is itself sealed when that run was signed or is acknowledged in turn, however many runs died
    for index in range(len(checks) - 2, -1, -1):
        check, following = checks[index], checks[index + 1]
        if check.status == UNACKNOWLEDGED and following.ok and following.events and \
                following.events[0].get("previous_incomplete") is True:
            check.status = ACKNOWLEDGED
    for check in checks:
        _check_timestamp(check, timestamps or TimestampPolicy())
    return checks + [RunCheck(path, NOT_A_RUN, detail="foreign file in the audit dir") for path in foreign]


def _check_timestamp(check: RunCheck, policy: TimestampPolicy) -> None:
    """A sound signed run: its token must vouch for its bytes; without one it is a gap when tokens are expected."""
    if check.status != OK or check.sha256 is None:
        return  # a worse verdict stands; an unsigned run is covered by the token of the run that chains to it
    path = RunFiles(check.path).timestamp
    try:
        reply = path.read_bytes()
    except FileNotFoundError:
        if policy.expected:
            check.status = NO_TIMESTAMP
        return
    except OSError as exc:
        check.status, check.detail = BAD_TIMESTAMP, f"{path.name} is unreadable: {exc.strerror}"
        return
    problem = check_token(reply, check.sha256, policy.roots)
    if problem:
        check.status, check.detail = BAD_TIMESTAMP, f"{path.name}: {problem}"
        return
    check.detail = f"timestamped {rfc3339(token_time(reply))}"
    if not policy.roots:
        check.detail += " (the token matches the file; its signature was not checked: no TSA CA given)"


def _collect(paths: Sequence[Path]) -> tuple[list[Path], list[Path], bool]:
    files: list[Path] = []
    foreign: list[Path] = []
    whole_folders = False
    for path in paths:
        if path.is_dir():
            whole_folders = True
            for child in sorted(path.iterdir()):
                if RUN_FILE.match(child.name):
                    files.append(child)
                elif not _is_companion(child) and not child.name.startswith("."):
                    foreign.append(child)
        else:
            files.append(path)
    return sorted(set(files), key=lambda p: p.name), foreign, whole_folders


def _is_companion(path: Path) -> bool:
    log = RunFiles.companion_of(path)
    return log is not None and log.exists()


def _check_file(path: Path, keys: Sequence[Ed25519PublicKey]) -> RunCheck:
    try:
        data = path.read_bytes()
        signature_path = RunFiles(path).signature
        signature = signature_path.read_bytes() if signature_path.exists() else None
    except OSError as exc:
        return RunCheck(path, BROKEN_CHAIN, detail=f"unreadable: {exc.strerror}")
    match = RUN_FILE.match(path.name)
    check = RunCheck(path, OK, run_id=match.group(2) if match else None, sha256=sha256_hex(data))
    signed = signature is not None
    if signature is not None and not _signature_ok(data, signature, keys):
        check.status, check.detail = BAD_SIGNATURE, "no key in the keyring verifies this file's signature"
        return check
    problem = _check_lines(data, check, complete=signed)
    if problem:
        check.status, check.detail = BROKEN_CHAIN, problem
        return check
    if not signed:
        check.status, check.detail = UNACKNOWLEDGED, "no signature: the run did not finish"
        return check
    problem = _check_sidecar(path, check.events)
    if problem:
        check.status, check.detail = BROKEN_CHAIN, problem
    return check


def _signature_ok(data: bytes, signature: bytes, keys: Sequence[Ed25519PublicKey]) -> bool:
    for key in keys:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        return True
    return False


def _check_lines(data: bytes, check: RunCheck, *, complete: bool) -> str | None:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif not complete and lines:
        lines.pop()  # a crash can cut the last line short; the lines before it still count
    prev: str | None = None
    for seq, line in enumerate(lines):
        try:
            event = json.loads(line)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError, a number too long for int()
            return f"line {seq + 1} is not JSON"
        if not isinstance(event, dict):
            return f"line {seq + 1} is not a JSON object"
        if event.get("seq") != seq:
            return f"line {seq + 1} has seq {event.get('seq')!r}, expected {seq}"
        if prev is not None and event.get("prev") != prev:
            return f"line {seq + 1} does not chain to line {seq}"
        if not isinstance(event.get("event"), str) or event["event"] not in EVENTS:
            return f"line {seq + 1} has an unknown event {event.get('event')!r}"
        if check.run_id and event.get("run_id") != check.run_id:
            return f"line {seq + 1} belongs to run {event.get('run_id')!r}, not {check.run_id}"
        prev = sha256_hex(line)
        check.events.append(event)
    if not check.events and not complete:
        return None  # the run died before its first line was whole: an incomplete run, like any other
    if not check.events or check.events[0]["event"] != "run_started":
        return "the log does not begin with run_started"
    if complete and check.events[-1]["event"] != "run_finished":
        return "a signed log that does not end with run_finished"
    return None


def _check_sidecar(path: Path, events: list[dict[str, Any]]) -> str | None:
    """Each batch's `ids_digest` covers its lines of `<name>.ids`; run_finished covers the whole file."""
    expected_total = events[-1].get("ids_sha256")
    if expected_total is None:
        return None
    ids_path = RunFiles(path).ids
    try:
        data = ids_path.read_bytes()
    except OSError:
        return f"the record-id sidecar {ids_path.name} is missing"
    if hashlib.sha256(data).hexdigest() != expected_total:
        return f"the record-id sidecar {ids_path.name} does not match its digest"
    lines = data.splitlines(keepends=True)
    position = 0
    for event in events:
        for count_key, digest_key in (("count", "ids_digest"), ("held_ids", "held_ids_digest")):
            if digest_key in event:
                count = int(event[count_key])
                if sha256_hex(b"".join(lines[position: position + count])) != event[digest_key]:
                    return f"sidecar lines for seq {event['seq']} do not match {digest_key}"
                position += count
    if position != len(lines):
        return "the record-id sidecar has lines no event accounts for"
    return None
