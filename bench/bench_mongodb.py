"""Benchmark: the tool's MongoDB delete rule against one hand-written `delete_many`, same data, same run.

Not a test. Uses the server named by MONGODB_URI, or starts SecantusDB (`secantusd-py`) in its own process.
60,000 documents by default, half of them older than the cutoff, the age field indexed; each contender gets its
own copy of the same data. Every run seeds afresh and times, for each scenario, the hand-written
`delete_many({"started_at": {"$lt": cutoff}})`, the run in-process, and the `retention run` command; the order of
the three turns from run to run. Prints each run, then the range of every figure over the runs.

Wall-clock seconds are what the ratios compare. On a shared machine they also measure the neighbours, so with a
server it started itself the benchmark prints CPU seconds as well (the server's plus the client's: the bench
process for the hand-written call and the run in-process, the command's own process for the command), which
other processes' load disturbs far less.
Usage: python bench/bench_mongodb.py [--documents N] [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
EXPIRED = {"started_at": {"$lt": CUTOFF}}
BATCH = 5000
SCENARIOS = {"delete": "none", "delete+ids": "hashed"}  # scenario: the audit's record_ids


@contextlib.contextmanager
def mongodb_server() -> Iterator[tuple[str, int | None]]:
    """The server's URL, and its process id when this benchmark started it."""
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"], None
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
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user and system) a process has used so far; 0 when there is none to look at."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


def seed(url: str, database: str, documents: int) -> int:
    """`documents` web sessions over four years (the same ones in every copy); returns how many are expired."""
    rng = Random(7)
    with pymongo.MongoClient(url) as client:
        client.drop_database(database)
        sessions = client[database]["web_sessions"]
        for start in range(0, documents, 10_000):
            sessions.insert_many([{"_id": i, "visitor": f"visitor-{i}", "page": "/pricing",
                                   "started_at": NOW - timedelta(minutes=rng.randrange(4 * 365 * 24 * 60))}
                                  for i in range(start, min(start + 10_000, documents))], ordered=False)
        sessions.create_index("started_at")
        return sessions.count_documents(EXPIRED)


def hand_written(url: str, database: str) -> float:
    with pymongo.MongoClient(url) as client:
        started = time.perf_counter()
        client[database]["web_sessions"].delete_many(EXPIRED)
        return time.perf_counter() - started


def write_config(url: str, database: str, work: Path, record_ids: str) -> Path:
    config = work / f"{database}.toml"
    config.write_text(f"""
[job]
state_dir = "{work}/state"
batch_size = {BATCH}
[audit]
dir = "{work}/audit-{database}"
signing_key = "{work}/private.pem"
record_ids = "{record_ids}"
[secrets]
pseudonym_key = "bench-pseudonym-root-secret-of-32-bytes-or-more"
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


Figures = tuple[float, float, float, float, float, float, float]  # wall s (hand, in-process, command), CPU s, RSS


def one_run(url: str, server: int | None, work: Path, documents: int, turn: int) -> dict[str, Figures]:
    """Per scenario: hand-written, in-process and command seconds, the same in CPU seconds, and the command's
    peak RSS (MB)."""
    results = {}
    for scenario, record_ids in SCENARIOS.items():
        name = scenario.replace("+", "_")
        expired = {copy: seed(url, f"bench_{name}_{copy}", documents) for copy in ("hand", "inproc", "cli")}
        assert len(set(expired.values())) == 1, expired
        contenders: dict[str, Callable[[], tuple[float, float]]] = {
            "hand": lambda n=name: (hand_written(url, f"bench_{n}_hand"), 0.0),
            "inproc": lambda n=name, r=record_ids: (
                tool_in_process(write_config(url, f"bench_{n}_inproc", work, r), NOW), 0.0),
            "cli": lambda n=name, r=record_ids: tool_cli(write_config(url, f"bench_{n}_cli", work, r), NOW),
        }
        order = list(contenders)[turn % 3:] + list(contenders)[:turn % 3]
        wall, cpu, rss = {}, {}, 0.0
        for copy in order:
            server_before, own_before = cpu_seconds(server), own_cpu()
            wall[copy], peak = contenders[copy]()
            cpu[copy] = cpu_seconds(server) - server_before + own_cpu() - own_before
            rss = max(rss, peak)
        with pymongo.MongoClient(url) as client:
            left = sum(client[f"bench_{name}_{c}"]["web_sessions"].count_documents(EXPIRED) for c in contenders)
            for copy in contenders:
                client.drop_database(f"bench_{name}_{copy}")
        assert left == 0, left
        results[scenario] = (wall["hand"], wall["inproc"], wall["cli"], cpu["hand"], cpu["inproc"], cpu["cli"], rss)
        cpus = f"  CPU {cpu['hand']:.1f} / {cpu['inproc']:.1f} / {cpu['cli']:.1f}s" if server else ""
        print(f"  {scenario:<11} {expired['hand']:>8,} expired  hand-written {wall['hand']:6.2f}s  "
              f"in-process {wall['inproc']:6.2f}s ({wall['inproc'] / wall['hand']:.2f})  "
              f"command {wall['cli']:6.2f}s ({wall['cli'] / wall['hand']:.2f})  peak RSS {rss:.0f}MB{cpus}  "
              f"[order: {', '.join(order)}]", flush=True)
    return results


def spread(values: list[float], unit: str = "") -> str:
    return f"{min(values):.2f}-{max(values):.2f}{unit}" if len(values) > 1 else f"{values[0]:.2f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=60_000)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    configure("console", -1)
    work = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    generate_keypair(work / "private.pem", work / "public.pem")
    runs = []
    with mongodb_server() as (url, server):
        print(f"{arguments.runs} runs of {arguments.documents:,} documents (half older than 24 months), "
              f"batch size {BATCH}; ratios are tool / hand-written", flush=True)
        for turn in range(arguments.runs):
            print(f"run {turn + 1}:", flush=True)
            runs.append(one_run(url, server, work, arguments.documents, turn))
    print(f"\nwall clock\n{'scenario':<11} {'hand-written':>14} {'in-process':>14} {'ratio':>10} {'command':>14} "
          f"{'ratio':>10} {'peak RSS':>10}")
    for scenario in SCENARIOS:
        hand, inproc, cli, _, _, _, rss = (list(column) for column in zip(*(run[scenario] for run in runs),
                                                                           strict=True))
        print(f"{scenario:<11} {spread(hand, 's'):>14} {spread(inproc, 's'):>14} {ratios(inproc, hand):>10} "
              f"{spread(cli, 's'):>14} {ratios(cli, hand):>10} {spread(rss, 'MB'):>10}")
    if server is None:
        return
    print(f"\nCPU seconds, the server's and the client's\n{'scenario':<11} {'hand-written':>14} {'in-process':>14} "
          f"{'ratio':>10} {'command':>14} {'ratio':>10}")
    for scenario in SCENARIOS:
        _, _, _, hand, inproc, cli, _ = (list(column) for column in zip(*(run[scenario] for run in runs),
                                                                         strict=True))
        print(f"{scenario:<11} {spread(hand, 's'):>14} {spread(inproc, 's'):>14} {ratios(inproc, hand):>10} "
              f"{spread(cli, 's'):>14} {ratios(cli, hand):>10}")


def ratios(tool: list[float], hand: list[float]) -> str:
    return spread([t / h for t, h in zip(tool, hand, strict=True)])


if __name__ == "__main__":
    main()
