"""The Prometheus textfile (for node_exporter's textfile collector), written atomically after every run."""

from __future__ import annotations

import math
import os
import tempfile
from datetime import datetime
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from retention.report import Report

log = structlog.get_logger("retention")

LAST_SUCCESS = "last_success"  # in job.state_dir: survives failed runs, so the gauge never goes back to zero
# node_exporter runs as its own user: the file must be world-readable and the folders we create traversable,
# whatever umask the job runs under (the systemd unit sets UMask=0077 for everything else it writes)
FILE_MODE = 0o644
FOLDER_MODE = 0o755


def write_metrics(path: Path, report: Report, state_dir: Path, finished: datetime) -> None:
    """Per-rule counts and duration, the run's status and exit code, and when a run last succeeded."""
    registry = CollectorRegistry()
    per_rule = {name: Gauge(f"retention_rule_{name}", help_text, ["rule"], registry=registry)
                for name, help_text in (("matched", "Records the rule matched in the last run"),
                                        ("changed", "Records the rule changed in the last run"),
                                        ("held", "Expired records kept by legal holds or Object Lock"),
                                        ("blocked", "Expired records the store refused to change"),
                                        ("unknown_age", "Records whose age or client could not be established"),
                                        ("remaining", "Expired, unheld, unprocessed records left after the rule"),
                                        ("oldest_expired_age_seconds",
                                         "Age of the oldest record left expired, from the run's now (0: none)"),
                                        ("duration_seconds", "How long the rule took"),
                                        ("failed", "1 if the rule failed, was interrupted or was skipped"))}
    for rule in report.rules:
        for name in ("matched", "changed", "held", "blocked", "unknown_age"):
            per_rule[name].labels(rule.name).set(getattr(rule, name))
        if rule.remaining is not None:  # not measured (the rule failed first): no sample, rather than a false 0
            per_rule["remaining"].labels(rule.name).set(rule.remaining)
            oldest = rule.oldest_expired
            per_rule["oldest_expired_age_seconds"].labels(rule.name).set(
                max(0.0, (report.now - oldest).total_seconds()) if oldest else 0)
        per_rule["duration_seconds"].labels(rule.name).set(rule.duration_ms / 1000)
        per_rule["failed"].labels(rule.name).set(0 if rule.status == "ok" else 1)
    Gauge("retention_run_exit_code", "Exit code of the last run", registry=registry).set(report.exit_code)
    Gauge("retention_run_success", "1 if the last run completed every rule", registry=registry).set(
        1 if report.exit_code == 0 else 0)
    Gauge("retention_run_dry_run", "1 if the last run was a dry run", registry=registry).set(int(report.dry_run))
    Gauge("retention_run_out_of_time", "1 if job.max_duration stopped the last run between batches",
          registry=registry).set(int(report.out_of_time))
    Gauge("retention_run_replica_wait_seconds", "Seconds the last run waited for lagging replicas",
          registry=registry).set(report.replica_wait_seconds)
    Gauge("retention_last_run_timestamp_seconds", "When the last run finished", registry=registry).set(
        finished.timestamp())
    marker = state_dir / LAST_SUCCESS
    if report.exit_code == 0 and not report.dry_run:
        state_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(marker, f"{finished.timestamp()}\n".encode("ascii"))
    last_success = _last_success(marker)
    Gauge("retention_last_success_timestamp_seconds", "When a run last completed every rule (0: never)",
          registry=registry).set(last_success)
    _make_folders(path.parent)
    _write_atomically(path, generate_latest(registry))


def _last_success(marker: Path) -> float:
    """When a run last succeeded; 0 when none has, or the marker is damaged (a full disk, a hand edit): the next
    success rewrites it, and a damaged marker must not fail every run meanwhile."""
    try:
        value = float(marker.read_text())
    except FileNotFoundError:
        return 0.0
    except (OSError, ValueError):
        log.warning("last_success_unreadable", path=str(marker))
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0


def _make_folders(folder: Path) -> None:
    """Create `folder` and its missing parents FOLDER_MODE; folders that exist keep the mode they have."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:  # another process made it meanwhile: its mode is its own
            continue
        created.chmod(FOLDER_MODE)  # mkdir's mode is masked by the umask; chmod's is not


def _write_atomically(path: Path, content: bytes) -> None:
    """A temporary file beside `path`, FILE_MODE before it is renamed into place: readers never see half a file,
    nor a file they may not read. Its name does not end in .prom, so the textfile collector skips it."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), FILE_MODE)  # mkstemp makes it 0600
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
