"""`audit find`: which runs changed or held one record, by its keyed hash in the runs' record-id sidecars.

An auditor samples a record they know (an order id, an end user's id) and asks whether the job touched it. The
sidecars name records only by HMAC-SHA256 under the record-id key, so the question needs that key, and the answer
says no more than the sidecar lines already do.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from retention.audit.events import RunFiles
from retention.errors import UsageError
from retention.ids import NotAnId, canonical_id, text_forms
from retention.transforms import pseudonym, record_text

KINDS = ("changed", "held")


@dataclass(frozen=True)
class Sighting:
    """One sidecar line naming the record: in which run, under which rule, and what happened to it."""

    run_id: str
    audit_file: Path
    rule: str
    kind: str  # changed | held

    def to_json(self) -> dict[str, str]:
        return {"run_id": self.run_id, "audit_file": str(self.audit_file), "rule": self.rule, "kind": self.kind}


def record_names(key: str, id_key: bytes, *, composite: bool) -> set[str]:
    """The keyed hashes the sidecars may name a record by: of its key's text as a run wrote it (a uuid in either
    case, as stores hold it), or for a composite key (given as a JSON array) of the canonical array of its
    columns' text forms. KEY is never echoed: it may be personal data."""
    if not composite:
        texts = dict.fromkeys([key, *(text_forms(canonical) if (canonical := _canonical(key)) else [])])
        return {_name(id_key, text) for text in texts}
    try:
        parts = json.loads(key)
    except (ValueError, RecursionError):
        raise UsageError("with --composite, KEY is a JSON array of the key's column values, in key order; "
                         "this KEY is not valid JSON") from None
    if not isinstance(parts, list) or len(parts) < 2 or any(isinstance(p, list | dict) for p in parts):
        raise UsageError("with --composite, KEY is a JSON array of two or more column values, in key order")
    return {_name(id_key, record_text([_text_form(part) for part in parts]))}


def _canonical(key: str) -> str | None:
    try:
        return canonical_id(key)
    except NotAnId:
        return None


def _name(id_key: bytes, text: str) -> str:
    name = pseudonym(id_key, text)
    assert name is not None
    return name


def _text_form(value: object) -> str:
    """A column value as the run wrote it: JSON's numbers and strings as Python's str() gives them."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def find(logs: Iterable[Path], rules: frozenset[str], names: set[str]) -> Iterator[Sighting]:
    """Every sidecar line under `rules` that names the record by one of `names`, run by run in the order given;
    streamed (a sidecar of a large run holds millions of lines) by searching the file's bytes for each hash."""
    for log in logs:
        for name in sorted(names):
            yield from _sightings(RunFiles(log), rules, f" {name}\n".encode("ascii"))


def _sightings(files: RunFiles, rules: frozenset[str], needle: bytes) -> Iterator[Sighting]:
    if not files.ids.exists() or files.ids.stat().st_size == 0:
        return
    with files.ids.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        at = data.find(needle)
        while at >= 0:
            start = data.rfind(b"\n", 0, at) + 1
            kind, _, rule = data[start:at].decode("utf-8", "replace").partition(" ")
            if kind in KINDS and rule in rules:
                yield Sighting(files.run_id or files.log.stem, files.log, rule, kind)
            at = data.find(needle, at + len(needle))
