"""Benchmark: one large S3 delete rule, serial and on a Dask cluster of 1, 2 and 4 workers, against a hand-written
parallel delete, on a real SeaweedFS S3 server.

Not a test. Each contender gets its own bucket with the same N objects (`--objects`, default 200,000) under 16
prefixes, `events/p00/` to `events/p15/`, every one expired by an age rule on LastModified (`after = "0 days"`; the
run's now is taken after the writes, which cannot be back-dated), `record_ids = "hashed"`, `max_fraction = 1.0`:

- `serial`: the tool in-process (`bench.contenders.tool_in_process`) with `job.executor = "serial"`;
- `dask-1`, `dask-2`, `dask-4`: the same with `job.executor` the address of a `dask scheduler` with 1, 2, 4
  `dask worker` processes (one thread each; started before the timed part, stopped after); the coordinator splits
  the rule into shards of folders (`events/pNN/`) by itself, as many as the cluster has threads;
- `hand`: a hand-written parallel delete, one thread per prefix, each `list_objects_v2` + `delete_objects`
  (1,000 keys a call), nothing recorded.

All buckets of a run are written first (a pool of threads), then the contenders are timed in an order rotated from
run to run. After each, the bucket must be empty; for the tool, the audit log must count every object, and the
benchmark prints how many shards its `rule_started` events name and how many distinct workers its `batch_applied`
events name. Prints wall seconds, the ratios against `hand` and `serial` within each run and their min-max over
`--runs`, and the CPU seconds spent meanwhile by this process (the coordinator, or the hand-written threads), by
the Dask scheduler, by the Dask workers and by SeaweedFS.

Writing runs at about 450 objects a second on the 2-core development machine, so the default writes for over an hour;
`--objects 20000` gives the whole table in about 12 minutes.
Usage: python bench/bench_dask.py [--objects 200000] [--runs 2] [--contenders serial,dask-1,dask-2,dask-4,hand]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import psutil
from botocore.config import Config as BotoConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.contenders import s3_config, tool_in_process
from retention.audit import generate_keypair
from retention.logs import configure
from tests.servers import dask_cluster, seaweedfs_server

CONTENDERS = ("serial", "dask-1", "dask-2", "dask-4", "hand")
PREFIXES = [f"events/p{n:02d}/" for n in range(16)]
WRITERS = 24  # threads writing the objects
CPU_KINDS = ("bench", "scheduler", "workers", "weed")  # whose CPU seconds are counted (cpu_seconds)
SETTLE = 3.0  # seconds between the last write and the first contender (the connector's SETTLE is 2 s)


@dataclass
class Timing:
    """One contender in one run."""

    seconds: float
    shards: int = 1  # units the rule ran as
    workers: int = 1  # distinct `batch_applied.worker` values
    cpu: dict[str, float] | None = None  # CPU seconds meanwhile, by process: see cpu_seconds


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process (every thread) and of its live descendants: the Dask scheduler, the Dask
    workers (with their nannies), SeaweedFS."""
    totals = {"bench": time.process_time(), "scheduler": 0.0, "workers": 0.0, "weed": 0.0}
    for child in psutil.Process().children(recursive=True):
        try:
            kind = "weed" if child.name() == "weed" else "scheduler" if "scheduler" in child.cmdline() else "workers"
            times = child.cpu_times()
            totals[kind] += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return totals


def key(n: int) -> str:
    return f"{PREFIXES[n % len(PREFIXES)]}{n:08d}.json"


def write_bucket(s3: Any, bucket: str, objects: int) -> float:
    """A fresh bucket holding `objects` objects; seconds taken."""
    started = time.perf_counter()
    s3.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(lambda n: s3.put_object(Bucket=bucket, Key=key(n), Body=b"{}"), range(objects)))
    return time.perf_counter() - started


def listed(s3: Any, bucket: str, prefix: str = "") -> Iterator[dict[str, Any]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def hand_written(s3: Any, bucket: str, now: datetime) -> float:
    """One thread per prefix: list a page, delete what it lists that is expired (one DeleteObjects), next page."""
    def one_prefix(prefix: str) -> None:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            expired = [{"Key": o["Key"]} for o in page.get("Contents", []) if o["LastModified"] < now]
            if expired:
                response = s3.delete_objects(Bucket=bucket, Delete={"Objects": expired, "Quiet": True})
                assert not response.get("Errors"), response["Errors"][:3]

    started = time.perf_counter()
    with ThreadPoolExecutor(len(PREFIXES)) as pool:
        list(pool.map(one_prefix, PREFIXES))
    return time.perf_counter() - started


def write_config(url: str, bucket: str, work: Path, executor: str) -> Path:
    return s3_config(url, bucket, work, '{ after = "0 days" }', job=f'executor = "{executor}"')


def the_tool(url: str, bucket: str, work: Path, executor: str, objects: int) -> Timing:
    """The tool in-process; its audit log must count every object, and says how many shards and workers ran it."""
    seconds = tool_in_process(write_config(url, bucket, work, executor), datetime.now(UTC))
    [log] = (work / f"audit-{bucket}").glob("*.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    started = [e for e in events if e["event"] == "rule_started"]
    applied = [e for e in events if e["event"] == "batch_applied"]
    assert sum(e["count"] for e in applied) == objects, sum(e["count"] for e in applied)
    assert len(started) == 1 or sorted(e["shard"] for e in started) == [f"{n}/{len(started)}" for n in
                                                                         range(1, len(started) + 1)], started
    return Timing(seconds, len(started), len({e["worker"] for e in applied}))


def timed(contender: str, s3: Any, url: str, bucket: str, work: Path, objects: int) -> Timing:
    """One contender on its bucket: the CPU spent meanwhile, and the bucket empty afterwards."""
    environment = {name: os.environ[name] for name in
                   ("RETENTION_PSEUDONYM_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}

    def measured(contend: Callable[[], Timing]) -> Timing:
        before = cpu_seconds()
        timing = contend()
        timing.cpu = {kind: seconds - before[kind] for kind, seconds in cpu_seconds().items()}
        return timing

    if contender == "hand":
        timing = measured(lambda: Timing(hand_written(s3, bucket, datetime.now(UTC))))
    elif contender == "serial":
        timing = measured(lambda: the_tool(url, bucket, work, "serial", objects))
    else:
        with dask_cluster(int(contender.split("-")[1]), env=environment) as cluster:
            timing = measured(lambda: the_tool(url, bucket, work, cluster.address, objects))
    left = sum(1 for _ in listed(s3, bucket))
    assert left == 0, f"{contender}: {left:,} objects left in {bucket}"
    s3.delete_bucket(Bucket=bucket)
    return timing


def span(values: list[float], digits: int = 2) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def report(runs: list[dict[str, Timing]], objects: int) -> None:
    """Per contender: wall time, objects/s, ratios against hand and serial within each run, shards, workers, CPU."""
    print(f"\n{objects:,} objects, {len(runs)} run(s); min–max over the runs")
    print(f"{'contender':<9} {'wall s':>13} {'objects/s':>11} {'/ hand':>11} {'/ serial':>11} {'shards':>6} "
          f"{'workers':>7}   CPU s: {' '.join(f'{kind:>9}' for kind in CPU_KINDS)}")
    for contender in runs[0]:
        timings = [run[contender] for run in runs]

        def ratio(to: str, contender: str = contender) -> str:
            return span([run[contender].seconds / run[to].seconds for run in runs]) if to in runs[0] else "-"

        cpu = {kind: span([t.cpu[kind] for t in timings if t.cpu], 1) for kind in CPU_KINDS}
        print(f"{contender:<9} {span([t.seconds for t in timings], 1):>13} "
              f"{span([objects / t.seconds for t in timings], 0):>11} {ratio('hand'):>11} {ratio('serial'):>11} "
              f"{'/'.join(sorted({str(t.shards) for t in timings})):>6} "
              f"{'/'.join(sorted({str(t.workers) for t in timings})):>7}          "
              f"{' '.join(f'{cpu[kind]:>9}' for kind in CPU_KINDS)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated, of {', '.join(CONTENDERS)}")
    arguments = parser.parse_args()
    contenders = arguments.contenders.split(",")
    assert set(contenders) <= set(CONTENDERS), f"--contenders: only {', '.join(CONTENDERS)}"
    configure("console", -1)
    # SeaweedFS makes these its admin identity; the Dask workers get them, and the pseudonym secret, in their env
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "retention-bench-admin")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "retention-bench-secret-key")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("RETENTION_PSEUDONYM_KEY", secrets.token_hex(32))
    work = Path(tempfile.mkdtemp(prefix="retention-bench-dask-"))
    generate_keypair(work / "private.pem", work / "public.pem")
    runs: list[dict[str, Timing]] = []
    with seaweedfs_server() as url:
        s3 = boto3.client("s3", endpoint_url=url, config=BotoConfig(max_pool_connections=WRITERS + 8))
        for run in range(arguments.runs):
            buckets = {contender: f"bench-{run}-{contender}" for contender in contenders}
            for bucket in buckets.values():
                seconds = write_bucket(s3, bucket, arguments.objects)
                print(f"run {run + 1}: wrote {arguments.objects:,} objects into {bucket} in {seconds:.1f} s "
                      f"({arguments.objects / seconds:,.0f}/s)", flush=True)
            time.sleep(SETTLE)
            order = contenders[run % len(contenders):] + contenders[:run % len(contenders)]
            timings: dict[str, Timing] = {}
            for contender in order:
                timings[contender] = t = timed(contender, s3, url, buckets[contender], work, arguments.objects)
                print(f"run {run + 1}: {contender:<7} {t.seconds:7.1f} s  {arguments.objects / t.seconds:6,.0f}/s  "
                      f"shards {t.shards}, workers {t.workers}, CPU s "
                      f"{', '.join(f'{kind} {s:.1f}' for kind, s in (t.cpu or {}).items())}; "
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
            runs.append({contender: timings[contender] for contender in contenders})
    report(runs, arguments.objects)


if __name__ == "__main__":
    main()
