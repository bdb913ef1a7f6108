"""Benchmark: the tool's S3 delete rule against a hand-written list_objects_v2 + delete_objects loop.

Not a test. 20,000 objects per contender on moto's S3 server (started here, in its own process), half of them
older than the cutoff; each contender gets its own bucket with the same keys. LastModified cannot be back-dated,
so the older half is written first and the cutoff is the instant between the halves (the rule says
`after = "0 days"` and the run is given `--now` = that instant). Each run writes fresh buckets and times the
contenders in a rotated order (so drift on a shared machine falls on each in turn); prints each run's times, the
ratios tool / hand-written, the tool's peak RSS, and the spread of the ratios over the runs.

`--rule client` times a client-lifetime rule instead: keys `events/clients/c-NN/...` of 20 clients, the 10 even ones
closed 90 days ago in a SQLite registry (grace 30 days), so half the objects expire by key; the hand-written loop
deletes the keys of those clients page by page.
`--rss [N ...]` measures the command's memory instead: a prefix of N objects (default 200,000 and 1,000,000), the
even ones 3 years old and the odd ones 1 day old, on the synthetic endpoint of bench/s3_synthetic.py (computed
objects; writing a million into moto takes hours); an age rule of 24 months with `record_ids = "hashed"` deletes
the even half. Prints the command's wall time (meaningless against that endpoint), its peak RSS (VmHWM) and what
the endpoint saw deleted, which must be exactly the even half.
Usage: python bench/bench_s3.py [--objects 20000] [--runs 3] [--rule age|client] [--rss [N ...]]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.contenders import s3_config, tool_cli, tool_in_process
from bench.s3_synthetic import VirtualBucket, serving
from retention.audit import generate_keypair
from retention.logs import configure
from tests.servers import moto_server

CONTENDERS = ("hand", "inproc", "cli")
CLIENTS = 20  # --rule client: c-00 ... c-19, the even ones closed
RSS_OBJECTS = (200_000, 1_000_000)


def key(rule: str, n: int) -> str:
    return f"events/{n:08d}.json" if rule == "age" else f"events/clients/c-{n % CLIENTS:02d}/{n:08d}.json"


def put_half(s3: object, buckets: list[str], keys: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        for bucket in buckets:
            list(pool.map(lambda k, b=bucket: s3.put_object(  # type: ignore[attr-defined]
                Bucket=b, Key=k, Body=b"{}"), keys))


def expired_by(rule: str, cutoff: datetime) -> Callable[[dict[str, Any]], bool]:
    if rule == "age":
        return lambda item: bool(item["LastModified"] < cutoff)
    return lambda item: int(item["Key"].split("/")[2][2:]) % 2 == 0


def hand_written(s3: object, bucket: str, expired_object: Callable[[dict[str, Any]], bool]) -> tuple[float, int]:
    started, deleted = time.perf_counter(), 0
    paginator = s3.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=bucket, Prefix="events/"):
        expired = [{"Key": o["Key"]} for o in page.get("Contents", []) if expired_object(o)]
        if expired:
            response = s3.delete_objects(Bucket=bucket, Delete={"Objects": expired, "Quiet": True})  # type: ignore[attr-defined]
            deleted += len(expired) - len(response.get("Errors", []))
    return time.perf_counter() - started, deleted


def write_config(url: str, bucket: str, work: Path, rule: str) -> Path:
    config = work / f"{bucket}.toml"
    expire = 'expire = { after = "0 days" }' if rule == "age" else \
        'client_key = "events/clients/{client_id}/"\nexpire = { grace = "30 days" }'
    registry = "" if rule == "age" else f"""
[connectors.registry]
type = "sql"
url = "sqlite:///{work}/registry.db"
[clients]
connector = "registry"
table = "clients"
ended_at_field = "closed_at"
active_statuses = ["active"]
ended_statuses = ["closed"]
"""
    config.write_text(f"""
[job]
state_dir = "{work}/state"
[audit]
dir = "{work}/audit-{bucket}"
signing_key = "{work}/private.pem"
[connectors.files]
type = "s3"
endpoint_url = "{url}"
region = "us-east-1"
{registry}
[[rules]]
name = "events"
connector = "files"
bucket = "{bucket}"
prefix = "events/"
{expire}
action = "delete"
max_fraction = 1.0
""")
    return config


def write_registry(work: Path) -> None:
    """--rule client: the even clients closed 90 days ago, the odd ones active."""
    closed = (datetime.now(UTC) - timedelta(days=90)).strftime("%Y-%m-%d %H:%M:%S")
    with sqlite3.connect(work / "registry.db") as db:
        db.execute("CREATE TABLE clients (id TEXT PRIMARY KEY, status TEXT, closed_at DATETIME)")
        db.executemany("INSERT INTO clients VALUES (?, ?, ?)", [
            (f"c-{n:02d}", "closed" if n % 2 == 0 else "active", closed if n % 2 == 0 else None)
            for n in range(CLIENTS)])


def one_run(s3: object, url: str, work: Path, run: int, objects: int, rule: str) -> dict[str, float]:
    """Fresh buckets, the contenders in a rotated order; seconds per contender and the command's peak RSS."""
    buckets = {contender: f"bench-{run}-{contender}" for contender in CONTENDERS}
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    print(f"run {run + 1}: writing 3 x {objects:,} objects...", flush=True)
    put_half(s3, list(buckets.values()), [key(rule, n) for n in range(objects // 2)])
    time.sleep(1.1)  # LastModified has one-second resolution; the cutoff falls between the halves
    cutoff = datetime.now(UTC)
    time.sleep(1.1)
    put_half(s3, list(buckets.values()), [key(rule, n) for n in range(objects // 2, objects)])
    times: dict[str, float] = {}
    for contender in CONTENDERS[run % 3:] + CONTENDERS[:run % 3]:
        if contender == "hand":
            times["hand"], times["deleted"] = hand_written(s3, buckets["hand"], expired_by(rule, cutoff))
        elif contender == "inproc":
            times["inproc"] = tool_in_process(write_config(url, buckets["inproc"], work, rule), cutoff)
        else:
            times["cli"], times["rss"] = tool_cli(write_config(url, buckets["cli"], work, rule), cutoff)
    left = [sum(page.get("KeyCount", 0) for page in s3.get_paginator(  # type: ignore[attr-defined]
        "list_objects_v2").paginate(Bucket=bucket)) for bucket in buckets.values()]
    assert left == [objects - times["deleted"]] * 3, left
    return times


def rss_config(url: str, bucket: str, work: Path) -> Path:
    return s3_config(url, bucket, work, '{ after = "24 months", field = "LastModified" }')


def rss(sizes: list[int], work: Path) -> None:
    """The command's peak RSS and wall time on each size of prefix; the even half, and only it, must be deleted."""
    os.environ.setdefault("RETENTION_PSEUDONYM_KEY", secrets.token_hex(32))
    for objects in sizes:
        bucket = VirtualBucket(f"rss-{objects}", "events/", objects, old=timedelta(days=3 * 365),
                               new=timedelta(days=1))
        with serving(bucket) as server:
            seconds, peak_mb = tool_cli(rss_config(server.url, bucket.name, work), datetime.now(UTC))
            calls = dict(sorted(server.calls.items()))
        gone = bucket.gone()
        print(f"{objects:>10,} objects: {seconds:7.1f} s, peak RSS {peak_mb:4.0f} MB, {bucket.deleted:,} deleted; "
              f"requests {calls}", flush=True)
        assert bucket.deleted == (objects + 1) // 2, bucket.deleted
        assert gone[0::2].count(1) == len(gone[0::2]) and gone[1::2].count(1) == 0, "not exactly the even half"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rule", choices=("age", "client"), default="age")
    parser.add_argument("--rss", type=int, nargs="*", metavar="N",
                        help="the command's peak RSS on prefixes of N objects (synthetic endpoint); "
                             f"default {' and '.join(f'{n:,}' for n in RSS_OBJECTS)}")
    arguments = parser.parse_args()
    configure("console", -1)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    work = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    generate_keypair(work / "private.pem", work / "public.pem")
    if arguments.rss is not None:
        rss(arguments.rss or list(RSS_OBJECTS), work)
        return
    if arguments.rule == "client":
        write_registry(work)
    runs: list[dict[str, float]] = []
    header = f"{'run':>3} {'deleted':>8} {'hand-written':>12} {'in-process':>10} {'ratio':>6} {'command':>8} " \
             f"{'ratio':>6} {'peak RSS':>9}"
    with moto_server() as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        for run in range(arguments.runs):
            runs.append(one_run(s3, url, work, run, arguments.objects, arguments.rule))
            print(header)
            for n, r in enumerate(runs, 1):
                print(f"{n:>3} {r['deleted']:>8,.0f} {r['hand']:>11.2f}s {r['inproc']:>9.2f}s "
                      f"{r['inproc'] / r['hand']:>6.2f} {r['cli']:>7.2f}s {r['cli'] / r['hand']:>6.2f} "
                      f"{r['rss']:>7.0f}MB", flush=True)
    for name, label in (("inproc", "the run in-process"), ("cli", "the command")):
        ratios = sorted(r[name] / r["hand"] for r in runs)
        print(f"ratio {label} / hand-written over {len(runs)} runs: {ratios[0]:.2f}–{ratios[-1]:.2f} "
              f"(median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
