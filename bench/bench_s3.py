"""Benchmark: the tool's S3 delete rule against a hand-written list_objects_v2 + delete_objects loop.

Not a test. 20,000 objects per contender on moto's S3 server (started here, in its own process), half of them
older than the cutoff; each contender gets its own bucket with the same keys. LastModified cannot be back-dated,
so the older half is written first and the cutoff is the instant between the halves (the rule says
`after = "0 days"` and the run is given `--now` = that instant). Prints times, ratios and the tool's peak RSS.
Usage: python bench/bench_s3.py [--objects 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.contenders import tool_cli, tool_in_process
from retention.audit import generate_keypair
from retention.logs import configure
from tests.servers import moto_server

CONTENDERS = ("hand", "inproc", "cli")


def put_half(s3: object, keys: range) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        for contender in CONTENDERS:
            list(pool.map(lambda n, b=f"bench-{contender}": s3.put_object(  # type: ignore[attr-defined]
                Bucket=b, Key=f"events/{n:08d}.json", Body=b"{}"), keys))


def hand_written(s3: object, bucket: str, cutoff: datetime) -> tuple[float, int]:
    started, deleted = time.perf_counter(), 0
    paginator = s3.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=bucket, Prefix="events/"):
        expired = [{"Key": o["Key"]} for o in page.get("Contents", []) if o["LastModified"] < cutoff]
        if expired:
            response = s3.delete_objects(Bucket=bucket, Delete={"Objects": expired, "Quiet": True})  # type: ignore[attr-defined]
            deleted += len(expired) - len(response.get("Errors", []))
    return time.perf_counter() - started, deleted


def write_config(url: str, bucket: str, work: Path) -> Path:
    config = work / f"{bucket}.toml"
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
[[rules]]
name = "events"
connector = "files"
bucket = "{bucket}"
prefix = "events/"
expire = {{ after = "0 days" }}
action = "delete"
max_fraction = 1.0
""")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=20_000)
    objects = parser.parse_args().objects
    configure("console", -1)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    work = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    generate_keypair(work / "private.pem", work / "public.pem")
    with moto_server() as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        for contender in CONTENDERS:
            s3.create_bucket(Bucket=f"bench-{contender}")
        print(f"writing 3 x {objects:,} objects...", flush=True)
        put_half(s3, range(objects // 2))
        time.sleep(1.1)
        cutoff = datetime.now(UTC)
        time.sleep(1.1)
        put_half(s3, range(objects // 2, objects))
        hand_seconds, deleted = hand_written(s3, "bench-hand", cutoff)
        inproc_seconds = tool_in_process(write_config(url, "bench-inproc", work), cutoff)
        cli_seconds, rss = tool_cli(write_config(url, "bench-cli", work), cutoff)
        left = [sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=f"bench-{c}")) for c in CONTENDERS]
    assert left == [objects - deleted] * 3, left
    print(f"{deleted:,} objects deleted by each\n")
    print(f"{'hand-written':>12} {'in-process':>10} {'ratio':>6} {'command':>8} {'ratio':>6} {'peak RSS':>9}")
    print(f"{hand_seconds:>11.2f}s {inproc_seconds:>9.2f}s {inproc_seconds / hand_seconds:>6.2f} "
          f"{cli_seconds:>7.2f}s {cli_seconds / hand_seconds:>6.2f} {rss:>7.0f}MB")


if __name__ == "__main__":
    main()
