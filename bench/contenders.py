"""How every benchmark times the tool: `retention.run.run` in-process (imports warm) and the `retention run` command."""

from __future__ import annotations

import os
import subprocess
import sys
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


def tool_cli(config: Path, now: datetime) -> tuple[float, float]:
    """`retention run` as ops run it, interpreter start-up included; seconds and peak RSS in MB."""
    command = [str(Path(sys.executable).parent / "retention"), "--config", str(config), "-q", "run",
               "--now", now.isoformat()]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"retention run exited {os.waitstatus_to_exitcode(status)}"
    return time.perf_counter() - started, usage.ru_maxrss / 1024
