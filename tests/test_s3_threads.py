"""One S3 connector shared by two lanes (job.executor = "threads"), from an adversarial review."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import structlog
from retention.connectors.s3 import S3Connector

from retention.pacing import Pace
from tests.test_s3 import OLD, S3Sandbox

RULES = "".join(f"""
[[rules]]
name = "uploads-{name}"
connector = "files"
bucket = "{{bucket}}"
prefix = "{name}/"
expire = {{{{ after = "24 months", field = "metadata:collected-at" }}}}
action = "delete"
max_fraction = 1.0
batch_size = 500
""" for name in ("a", "b"))


def test_two_rules_on_one_s3_connector_in_threads_do_not_close_each_others_records(
        tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3Connector keeps the records its last `count` matched on the connector itself (`_collection`), and each
    count releases the one before: with executor = "threads" the second rule's count closes the spool the first rule
    is deleting from. (The seams only order the two lanes: rule b counts while rule a is between two batches.)"""
    box = S3Sandbox(tmp_path / "s3", moto_url)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: box.put(k, collected_at=OLD), [f"a/{n:05}" for n in range(1010)]
                      + [f"b/{n:05}" for n in range(5)]))
    box.write(RULES.format(bucket=box.bucket), extra="")
    config = box.root / "retention.toml"
    config.write_text(config.read_text().replace("batch_size = 2\n", 'batch_size = 2\nexecutor = "threads"\n', 1))
    monkeypatch.setattr(S3Connector, "memory_bound", 1)  # the count's records spill to the temporary file
    a_between_batches, b_counted = threading.Event(), threading.Event()
    real_count = S3Connector.count

    def count(self: S3Connector, selection: Any) -> Any:
        if selection.scope.get("prefix") == "b/":
            a_between_batches.wait(10)
        try:
            return real_count(self, selection)
        finally:
            if selection.scope.get("prefix") == "b/":
                b_counted.set()

    def pause(self: Pace, store: object) -> None:
        if structlog.contextvars.get_contextvars().get("rule") == "uploads-a":
            a_between_batches.set()
            b_counted.wait(10)

    monkeypatch.setattr(S3Connector, "count", count)
    monkeypatch.setattr(Pace, "before_next_batch", pause)
    monkeypatch.setattr(Pace, "must_wait", lambda self, store: True)  # replicas lag: every pause is taken
    result = box.run(expect=0)
    assert [("uploads-a", "ok", 1010), ("uploads-b", "ok", 5)] == \
        [(rule["name"], rule["status"], rule["changed"]) for rule in result["rules"]], result
    assert [] == box.keys()
