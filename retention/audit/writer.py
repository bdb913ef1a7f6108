"""Writes one run's audit log: canonical JSON lines, each chained to the last, signed when the run ends."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from retention.audit.events import RUN_FILE, AuditEvent, RunFiles
from retention.errors import AuditError
from retention.timeutil import rfc3339

GENESIS = "0" * 64


def canonical(event: dict[str, Any]) -> bytes:
    """The one byte form of an event: sorted keys, no spaces, UTF-8, and no floats anywhere."""
    _reject_floats(event)
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise AuditError("audit events hold integers and strings only (durations in milliseconds), not floats")
    if isinstance(value, dict):
        for item in value.values():
            _reject_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_floats(item)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_files(directory: Path) -> list[Path]:
    """The run logs in `directory`, oldest first (their names sort in run order)."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if RUN_FILE.match(path.name))


def stamp(instant: datetime) -> str:
    return instant.strftime("%Y%m%dT%H%M%S%fZ")


@dataclass(frozen=True)
class ChainHead:
    """The newest run before this one: its file name, the SHA-256 of its bytes, and whether it was signed."""

    name: str
    sha256: str
    signed: bool


def local_head(directory: Path) -> ChainHead | None:
    existing = run_files(directory)
    if not existing:
        return None
    head = existing[-1]
    return ChainHead(head.name, sha256_hex(head.read_bytes()), RunFiles(head).signed)


class AuditWriter:
    """Appends events to `<start>-<run_id>.jsonl`, flushing each; `close()` signs the exact bytes."""

    def __init__(self, directory: Path, run_id: str, started: datetime, clock: Callable[[], datetime],
                 signing_key: Ed25519PrivateKey, *, hashed_ids: bool, remote_head: ChainHead | None = None) -> None:
        self.run_id = run_id
        self._clock = clock
        self._key = signing_key
        self._seq = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # the newest run anywhere: a fresh container's empty dir still chains to the WORM copy's newest
            heads = [h for h in (local_head(directory), remote_head) if h is not None]
            head = max(heads, key=lambda h: h.name) if heads else None
            name = stamp(started)
            head_stamp = head.name.split("-", 1)[0] if head else ""
            if head_stamp >= name:
                # the clock went back: keep the order of names equal to the order of runs
                name = stamp(datetime.strptime(head_stamp, "%Y%m%dT%H%M%S%fZ") + timedelta(microseconds=1))
            self.names = RunFiles.of(directory, name, run_id)
            self.path = self.names.log
            self.previous_incomplete = bool(head and not head.signed)
            self._prev = head.sha256 if head else GENESIS
            self._file: BinaryIO = open(self.path, "xb")  # noqa: SIM115 - open for the whole run
            self._ids: BinaryIO | None = open(self.ids_path, "xb") if hashed_ids else None  # noqa: SIM115
        except OSError as exc:
            raise AuditError(f"cannot write the audit log in {directory}: {exc.strerror}") from None
        self._ids_hash = hashlib.sha256()

    @property
    def ids_path(self) -> Path:
        return self.names.ids

    @property
    def hashed_ids(self) -> bool:
        return self._ids is not None

    def event(self, event: AuditEvent) -> None:
        """Append one event line and flush it to disk, so a crash loses at most the line being written."""
        line = canonical({**event.fields(), "seq": self._seq, "ts": rfc3339(self._clock()), "run_id": self.run_id,
                          "event": event.event, "prev": self._prev})
        self._file.write(line + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._prev = sha256_hex(line)
        self._seq += 1

    def record_ids(self, kind: str, rule: str, hashes: Iterable[str],
                   into: Callable[[bytes], object] | None = None) -> tuple[int, str]:
        """Append `kind rule hash` lines to the sidecar; return how many, and the SHA-256 of exactly those lines.

        `into` (a running SHA-256's `update`) is fed the same lines: one digest over lines written in several calls.
        """
        assert self._ids is not None
        digest, count = hashlib.sha256(), 0
        values = iter(hashes)
        prefix = f"{kind} {rule} "
        separator = "\n" + prefix
        while chunk := list(itertools.islice(values, 1000)):
            data = (prefix + separator.join(chunk) + "\n").encode("utf-8")
            self._ids.write(data)
            self._ids_hash.update(data)
            digest.update(data)
            if into is not None:
                into(data)
            count += len(chunk)
        self._ids.flush()
        return count, digest.hexdigest()

    def ids_sha256(self) -> str:
        return self._ids_hash.hexdigest()

    def close(self) -> Path:
        """Sign the finished log: the raw Ed25519 signature of its bytes, beside it as `.sig`."""
        self._file.close()
        if self._ids is not None:
            self._ids.close()
        signature = self._key.sign(self.path.read_bytes())
        signature_path = self.names.signature
        # a dot file, which `audit verify` passes over: one a crash leaves behind is no foreign file in the dir
        temporary = signature_path.with_name(f".{signature_path.name}.tmp")
        try:
            temporary.write_bytes(signature)
            os.replace(temporary, signature_path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return self.path

    def files(self) -> list[Path]:
        """The run's files: log, signature, the sidecar (when record ids are hashed) and the timestamp (once stored)."""
        timestamp = self.names.timestamp
        return [self.path, self.names.signature, *([self.ids_path] if self._ids is not None else []),
                *([timestamp] if timestamp.exists() else [])]
