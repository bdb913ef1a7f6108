"""A stop on S3 lets the calls in flight finish and starts no other, on the last listing page too."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3

from retention import run as coordinator
from retention.audit import generate_keypair
from retention.config import load_config
from retention.settings import Environment

OBJECTS = 60
BATCH = 2


class StopAfterFirstBatch:
    """A progress sink that asks the run to stop as soon as the first batch is reported (as SIGTERM would)."""

    def __init__(self) -> None:
        self.stop = False

    def start(self, rule: str, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        self.stop = True

    def finish(self) -> None:
        pass


def test_a_stop_on_the_last_listing_page_starts_no_other_delete(tmp_path: Path, moto_url: str) -> None:
    """60 objects on one listing page, a stop after the first batch: only the calls already in flight finish."""
    s3 = boto3.client("s3", endpoint_url=moto_url)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    for i in range(OBJECTS):
        s3.put_object(Bucket=bucket, Key=f"uploads/{i:03}.bin", Body=b"x",
                      Metadata={"collected-at": "2020-01-01T00:00:00Z"})
    generate_keypair(tmp_path / "private.pem", tmp_path / "public.pem")
    config_path = tmp_path / "retention.toml"
    config_path.write_text(f"""
[job]
state_dir = "{tmp_path}/state"
batch_size = {BATCH}

[audit]
dir = "{tmp_path}/audit"
signing_key = "{tmp_path}/private.pem"

[connectors.files]
type = "s3"
endpoint_url = "{moto_url}"

[[rules]]
name = "uploads"
connector = "files"
bucket = "{bucket}"
prefix = "uploads/"
expire = {{ after = "24 months", field = "metadata:collected-at" }}
action = "delete"
max_fraction = 1.0
""")
    progress = StopAfterFirstBatch()
    report = coordinator.run(load_config(config_path), Environment(), datetime.now(UTC), lambda: datetime.now(UTC),
                        should_stop=lambda: progress.stop, progress=progress)
    left = s3.list_objects_v2(Bucket=bucket, Prefix="uploads/").get("KeyCount", 0)
    assert report.interrupted or report.rules[0].status == "interrupted"
    # at the stop, at most IN_FLIGHT (4) calls plus the one being submitted may still complete
    assert OBJECTS - left <= 5 * BATCH, f"{OBJECTS - left} of {OBJECTS} objects deleted after a stop"
