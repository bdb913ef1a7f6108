"""The metrics file is readable by node_exporter, whatever umask the job runs under (the systemd unit's is 0077)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conformance import COOKIE_RULE, NOW, add_cookies
from tests.helpers import make_sandbox
from tests.stores import SqliteStore


@pytest.fixture
def strict_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("strict_umask")
def test_a_run_under_umask_0077_writes_the_metrics_file_0644_in_folders_0755(tmp_path: Path) -> None:
    """Folders the run creates are 0755, the file 0644, with no temporary file left; a folder that already
    exists keeps its own mode, and the next run replaces the file keeping 0644."""
    store = SqliteStore(tmp_path / "app.db")
    store.standard_schema()
    add_cookies(store, NOW, *[timedelta(days=800)] * 3, timedelta(days=1))
    box = make_sandbox(tmp_path / "sandbox", store)
    existing = tmp_path / "textfile"
    existing.mkdir()
    existing.chmod(0o750)
    metrics = existing / "node" / "retention" / "retention.prom"
    box.write(COOKIE_RULE, clients=False)
    box.config.write_text(box.config.read_text().replace(
        "batch_size = 2\n", f'batch_size = 2\nmetrics_file = "{metrics}"\n'))
    for _ in range(2):
        result = box.cli("run")
        assert 0 == result.exit_code, result.stderr
        assert 0o644 == mode(metrics)
        assert (0o755, 0o755, 0o750) == (mode(metrics.parent), mode(metrics.parent.parent), mode(existing))
        assert ["retention.prom"] == sorted(path.name for path in metrics.parent.iterdir())
        assert 'retention_rule_matched{rule="cookies"}' in metrics.read_text()
    # everything else the run wrote keeps the umask: the audit log is private
    assert all(0o600 == mode(path) for path in box.audit_dir.glob("*.jsonl"))
