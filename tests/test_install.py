"""README's "Installing on a server", followed to a working nightly job in a throwaway tree.

The shell blocks are taken from README itself (so README and this test cannot drift) and run with dash, with
every system path (tests/installing.py, SYSTEM_PATHS) moved under a temporary ROOT. What needs root and a real
system is left out, each by a rule below that must still match README: installing packages, creating the
user, changing owners, switching to the user, systemctl. The tests run as whoever runs them; nothing is
installed outside the tree. The one substitution: `pip install .` gets --no-deps and the new venv borrows the
project venv's dependencies (a .pth file), which keeps the test to seconds instead of minutes of downloads;
so that they fit, the tests' own Python makes the venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from retention.config import load_config
from retention.demo.sandbox import build
from tests.installing import DEPLOY, REPO, SYSTEM_PATHS, read_crontab, rooted, run_cron_line

README = REPO / "README.md"
SHIPPED = load_config(REPO / "config" / "retention.toml")
assert SHIPPED.audit is not None and SHIPPED.job.metrics_file is not None  # the paths the tree is checked at
AUDIT_DIR, METRICS_FILE = SHIPPED.audit.dir, SHIPPED.job.metrics_file

# (what it stands for, pattern, replacement): applied to every block; each must match somewhere in README
RULES: list[tuple[str, str, str | Callable[[re.Match[str]], str]]] = [
    ("installing Debian packages", r"^apt-get install .*\n", ""),
    ("creating the system user", r"^useradd .*\n", ""),
    ("giving files to the user", r"^chown .*\n", ""),
    ("owners for install", r" -[og] retention\b", ""),
    ("switching to the user", r"runuser -u retention -- ", ""),
    ("systemctl", r"^systemctl .*\n", ""),
    # the tests' own Python makes the venv, so that the dependencies it borrows (below) are built for it
    ("the system's python3", r"^python3 -m venv ", f"{sys.executable} -m venv "),
    ("dependencies from PyPI", r"(/opt/retention/bin/pip install) \.",
     r'\1 --quiet --no-deps . && /opt/retention/bin/python -c "$BORROW_DEPENDENCIES"'),
]
# run by the new venv's python: a .pth file that appends the project venv's site-packages to its path
_PTH = f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})"
BORROW_DEPENDENCIES = ("import pathlib, sysconfig; "
                       f"pathlib.Path(sysconfig.get_paths()['purelib'], 'borrowed.pth').write_text({json.dumps(_PTH)})")


def readme_blocks() -> dict[str, str]:
    """The ```sh blocks that follow `<!-- install: NAME -->` in README, by NAME."""
    return dict(re.findall(r"<!-- install: (\w+) -->\n```sh\n(.*?)```", README.read_text(), re.DOTALL))


def for_the_tree(block: str, root: Path, used: set[str]) -> str:
    for name, pattern, replacement in RULES:
        block, count = re.subn(pattern, replacement, block, flags=re.MULTILINE)
        if count:
            used.add(name)
    block = rooted(block, root)
    moved = re.sub(re.escape(str(root)) + r"\S*", "", block.replace(sys.executable, ""))  # what is left outside
    outside = re.findall(r"(?<![\w/.-])/(?:etc|var|opt|usr|srv|home)/\S*", moved)
    assert not outside, f"README's install steps name paths the test does not move into the tree: {outside}"
    return block


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`sh -e` as an admin pastes the block into a root shell (umask 022, Debian's default for root)."""
    return subprocess.run([shutil.which("dash") or "/bin/sh", "-e", "-c", script], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False, umask=0o022,
                          env={**os.environ, "BORROW_DEPENDENCIES": BORROW_DEPENDENCIES})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def configure(root: Path, data: Path) -> str:
    """What README leaves to the admin: a config for their tables, and APP_DATABASE_URL. Here, the demo's SQLite
    database and config, with the shipped config's [job] and [audit] paths and every secret from the
    environment file. Returns the database URL, a query string with & and ? in it."""
    build(data, datetime.now(UTC))
    config = (data / "retention.toml").read_text()
    for pattern, replacement in (
            (r'^state_dir = ".*"$', f'state_dir = "{SHIPPED.job.state_dir}"\n'
                                    f'metrics_file = "{METRICS_FILE}"'),
            (r'^dir = ".*"$', f'dir = "{AUDIT_DIR}"'),
            (r'^signing_key = ".*"$', 'signing_key = "${RETENTION_AUDIT_KEY}"'),
            (r'^url = "sqlite:.*"$', 'url = "${APP_DATABASE_URL}"')):
        config, count = re.subn(pattern, replacement, config, flags=re.MULTILINE)
        assert 1 == count, pattern
    (root / "etc/retention/retention.toml").write_text(config)
    url = f"sqlite:///{data / 'app.db'}?timeout=30&cached_statements=50"
    env = root / "etc/retention/env"
    env.write_text(re.sub(r"^APP_DATABASE_URL=.*$", f"APP_DATABASE_URL={url}", env.read_text(), flags=re.MULTILINE))
    return url


@pytest.mark.slow
def test_readme_install_section_gives_a_working_nightly_job(tmp_path: Path) -> None:
    """Base install, the admin's two edits, the check, the cron block; then the crontab's line as cron runs it,
    under umask 0077 as the systemd unit would: exit 0, nothing for cron to mail, the result in last-run.txt,
    JSON lines in run.jsonl, a signed log that verifies, and metrics node_exporter can read through its link."""
    root, used = tmp_path / "root", set[str]()
    blocks = readme_blocks()
    assert {"base", "check", "cron", "systemd"} <= set(blocks)
    scripts = {name: for_the_tree(block, root, used) for name, block in blocks.items()}
    assert {name for name, _, _ in RULES} == used, "a rule no longer matches README: update the rules or README"
    textfiles = root / "var/lib/prometheus/node-exporter"
    textfiles.mkdir(parents=True)  # node_exporter is installed: the link is made
    for folder in ("etc/cron.d", "etc/logrotate.d", "etc/systemd/system"):  # there on any Debian
        (root / folder).mkdir(parents=True)

    result = sh(scripts["base"], REPO)
    assert 0 == result.returncode, result.stderr
    venv = root / "opt/retention"
    assert (0o600, 0o640, 0o750) == (mode(root / "etc/retention/audit-private.pem"), mode(root / "etc/retention/env"),
                                     mode(root / "etc/retention"))
    assert re.search(r"^RETENTION_PSEUDONYM_KEY=[0-9a-f]{64}$", (root / "etc/retention/env").read_text(), re.M)

    data = tmp_path / "data"
    data.mkdir()
    url = configure(root, data)
    result = sh(scripts["check"], REPO)
    assert 0 == result.returncode, result.stdout + result.stderr

    assert 0 == sh(scripts["cron"], REPO).returncode
    installed = (root / "etc/cron.d/retention").read_text()
    assert (DEPLOY / "crontab").read_text() == installed
    entry = read_crontab(installed)
    result = run_cron_line(entry, root, timeout=300, umask=0o077)  # under the systemd unit's umask
    assert (0, "", "") == (result.returncode, result.stdout, result.stderr), (root / "var/log/retention/run.jsonl"
                                                                              ).read_text()

    logs = [json.loads(line) for line in (root / "var/log/retention/run.jsonl").read_text().splitlines()]
    assert "run_finished" in {log["event"] for log in logs} and url not in json.dumps(logs)
    assert "cookie-data-24-months" in (root / "var/log/retention/last-run.txt").read_text()
    state = root / "var/lib/retention"
    audit = state / AUDIT_DIR
    assert 1 == len(list(audit.glob("*.jsonl"))) and 0o700 == mode(audit)
    verify = subprocess.run([str(venv / "bin/retention"), "--config", str(root / "etc/retention/retention.toml"),
                             "audit", "verify", "--public-key", str(root / "etc/retention/audit-public.pem")],
                            cwd=state, capture_output=True, text=True, check=False)
    assert 0 == verify.returncode, verify.stdout + verify.stderr

    metrics = state / METRICS_FILE
    assert 0o644 == mode(metrics) and "retention_run_success 1.0" in metrics.read_text()
    step = metrics.parent
    while step != state.parent:  # others (node_exporter) may enter each folder down to the file
        assert 0o005 == mode(step) & 0o005, step
        step = step.parent
    assert metrics.samefile(textfiles / "retention.prom")

    assert 0 == sh(scripts["systemd"], REPO).returncode  # the unit files only: systemctl needs a real system
    for unit in ("retention.service", "retention.timer"):
        assert (DEPLOY / unit).read_text() == (root / "etc/systemd/system" / unit).read_text()


def test_the_tree_covers_every_system_path_the_deploy_files_name() -> None:
    """SYSTEM_PATHS lists every absolute path of the crontab, the units and the logrotate file, so the runs
    above never reach the real system through one of them."""
    text = "\n".join((DEPLOY / name).read_text() for name in ("crontab", "retention.service", "logrotate"))
    named = set(re.findall(r"(?<![\w/.-])(/(?:etc|var|opt)/[\w.-]+(?:/[\w.-]+)?)", text))
    assert all(any(path.startswith(system) for system in SYSTEM_PATHS) for path in named), named
