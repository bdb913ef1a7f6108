"""Benchmark: the tool's MongoDB delete rule against a hand-written batched delete_many, same data, same run.

Not a test. Uses the server named by MONGODB_URI (1,000,000 documents by default), or starts SecantusDB
(`secantusd-py`) in its own process (10,000 documents by default: its `$in` matching costs O(batch x collection),
so a million documents would take hours there). Prints the time of each, their ratio (tool / hand-written),
and the tool's peak RSS.
Usage: python bench/bench_mongodb.py [--documents N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random

import pymongo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.contenders import tool_cli, tool_in_process
from retention.audit import generate_keypair
from retention.logs import configure
from retention.timeutil import Duration
from tests.servers import free_port

NOW = datetime.now(UTC)
CUTOFF = Duration(24, "month").before(NOW)
BATCH = 5000


@contextlib.contextmanager
def mongodb_server() -> Iterator[str]:
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    port = free_port()
    storage = tempfile.mkdtemp(prefix="retention-bench-mongo-")
    process = subprocess.Popen([str(Path(sys.executable).parent / "secantusd-py"), "--host", "127.0.0.1",
                                "--port", str(port), "--storage-path", storage, "--log-level", "WARNING"])
    url = f"mongodb://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(pymongo.errors.PyMongoError), pymongo.MongoClient(
                    url, serverSelectionTimeoutMS=500) as probe:
                probe.admin.command("ping")
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the MongoDB server did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def seed(url: str, database: str, documents: int) -> None:
    rng = Random(7)
    with pymongo.MongoClient(url) as client:
        sessions = client[database]["web_sessions"]
        for start in range(0, documents, 10_000):
            sessions.insert_many([{"_id": i, "visitor": f"visitor-{i}", "page": "/pricing",
                                   "started_at": NOW - timedelta(minutes=rng.randrange(4 * 365 * 24 * 60))}
                                  for i in range(start, min(start + 10_000, documents))], ordered=False)
        sessions.create_index("started_at")


def hand_written(url: str, database: str) -> tuple[float, int]:
    started, total = time.perf_counter(), 0
    with pymongo.MongoClient(url) as client:
        sessions = client[database]["web_sessions"]
        while True:
            keys = [d["_id"] for d in sessions.find({"started_at": {"$lt": CUTOFF}}, {"_id": 1}).limit(BATCH)]
            if not keys:
                break
            total += sessions.delete_many({"_id": {"$in": keys}}).deleted_count
    return time.perf_counter() - started, total


def write_config(url: str, database: str, work: Path) -> Path:
    config = work / f"{database}.toml"
    config.write_text(f"""
[job]
state_dir = "{work}/state"
batch_size = {BATCH}
[audit]
dir = "{work}/audit-{database}"
signing_key = "{work}/private.pem"
[connectors.events]
type = "mongodb"
url = "{url}"
database = "{database}"
[[rules]]
name = "web-sessions-24-months"
connector = "events"
collection = "web_sessions"
expire = {{ after = "24 months", field = "started_at" }}
action = "delete"
max_fraction = 1.0
""")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=None)
    documents = parser.parse_args().documents or (1_000_000 if os.environ.get("MONGODB_URI") else 10_000)
    configure("console", -1)
    work = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    generate_keypair(work / "private.pem", work / "public.pem")
    with mongodb_server() as url:
        print(f"seeding 3 x {documents:,} documents (half older than 24 months)...", flush=True)
        for database in ("hand", "inproc", "cli"):
            seed(url, f"bench_{database}", documents)
        hand_seconds, deleted = hand_written(url, "bench_hand")
        inproc_seconds = tool_in_process(write_config(url, "bench_inproc", work), NOW)
        cli_seconds, rss = tool_cli(write_config(url, "bench_cli", work), NOW)
        with pymongo.MongoClient(url) as client:
            left = sum(client[f"bench_{d}"]["web_sessions"].count_documents({"started_at": {"$lt": CUTOFF}})
                       for d in ("inproc", "cli"))
    assert left == 0, left
    print(f"{deleted:,} expired documents deleted by each; batch size {BATCH}\n")
    print(f"{'hand-written':>12} {'in-process':>10} {'ratio':>6} {'command':>8} {'ratio':>6} {'peak RSS':>9}")
    print(f"{hand_seconds:>11.2f}s {inproc_seconds:>9.2f}s {inproc_seconds / hand_seconds:>6.2f} "
          f"{cli_seconds:>7.2f}s {cli_seconds / hand_seconds:>6.2f} {rss:>7.0f}MB")


if __name__ == "__main__":
    main()
