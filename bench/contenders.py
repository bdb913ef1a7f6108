"""How every benchmark times the tool: `retention.run.run` in-process (imports warm) and the `retention run` command."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retention import run as coordinator
from retention.config import load_config
from retention.settings import Environment


def tool_in_process(config: Path, now: datetime) -> float:
    """The enforcement itself, as the CLI calls it; seconds."""
    loaded = load_config(config)
    started = time.perf_counter()
    report = coordinator.run(loaded, Environment(), now, lambda: datetime.now(UTC))
    assert report.exit_code == 0, report.to_json()
    return time.perf_counter() - started


# The command's entry point (as the `retention` script runs it), reporting its own peak RSS on the way out. The
# rusage of a child (wait4, RUSAGE_CHILDREN) will not do: Linux carries the parent's high-water RSS into a child at
# exec (vfork), so it reported the benchmark's own peak (80+ MB after in-process runs) instead of the command's.
# VmHWM belongs to the memory of the program exec'd.
_PEAK_RSS_ENTRY = """
import atexit, os, sys

def _peak_rss():
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["RETENTION_BENCH_PEAK_RSS"], "w") as out:
        out.write(kb)

if os.path.exists("/proc/self/status"):
    atexit.register(_peak_rss)
sys.argv[0] = "retention"
from retention.cli import main
sys.exit(main())
"""


def tool_cli(config: Path, now: datetime) -> tuple[float, float]:
    """`retention run` as ops run it, interpreter start-up included; seconds and its own peak RSS in MB."""
    command = [sys.executable, "-c", _PEAK_RSS_ENTRY, "--config", str(config), "-q", "run", "--now", now.isoformat()]
    with tempfile.TemporaryDirectory(prefix="retention-bench-rss-") as folder:
        report = Path(folder) / "peak-rss-kb"
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   env={**os.environ, "RETENTION_BENCH_PEAK_RSS": str(report)})
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        assert os.waitstatus_to_exitcode(status) == 0, f"retention run exited {os.waitstatus_to_exitcode(status)}"
        # without /proc (not Linux), the rusage figure: an upper bound
        peak_kb = int(report.read_text()) if report.exists() else usage.ru_maxrss
    return seconds, peak_kb / 1024


def s3_config(url: str, bucket: str, work: Path, expire: str, job: str = "") -> Path:
    """A config in `work` with one delete rule over `events/` of `bucket` (record ids hashed, no threshold)."""
    config = work / f"{bucket}.toml"
    config.write_text(f"""
[job]
state_dir = "{work}/state"
{job}
[audit]
dir = "{work}/audit-{bucket}"
signing_key = "{work}/private.pem"
record_ids = "hashed"
[secrets]
pseudonym_key = "${{RETENTION_PSEUDONYM_KEY}}"
[connectors.files]
type = "s3"
endpoint_url = "{url}"
region = "us-east-1"
[[rules]]
name = "events"
connector = "files"
bucket = "{bucket}"
prefix = "events/"
expire = {expire}
action = "delete"
max_fraction = 1.0
""")
    return config
