"""The shipped deploy files read the way cron and an admin read them, with their absolute paths pointed into a
throwaway tree standing in for /etc, /var/lib, /var/log and /opt: what the cron and install tests run."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "cron"
# every absolute path the crontab, the units and README's install section write to or run from
SYSTEM_PATHS = ("/etc/retention", "/etc/cron.d", "/etc/logrotate.d", "/etc/systemd/system", "/var/lib/retention",
                "/var/lib/prometheus/node-exporter", "/var/log/retention", "/opt/retention")
_SYSTEM_PATH = re.compile(r"(?<![\w/.-])(" + "|".join(re.escape(path) for path in SYSTEM_PATHS) + r")(?=[/\s'\"]|$)",
                          re.MULTILINE)


@dataclass(frozen=True)
class CronEntry:
    """One /etc/cron.d line, with the NAME=value lines above it (cron sets them in the command's environment)."""

    environment: dict[str, str]
    schedule: list[str]
    user: str
    command: str


def read_crontab(text: str) -> CronEntry:
    """The file's only job line and its environment lines, split as Debian's cron splits them."""
    environment: dict[str, str] = {}
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"([A-Za-z_]\w*)\s*=\s*(.*)", line)
        if assignment:
            environment[assignment[1]] = assignment[2]
        else:
            *schedule, user, command = line.split(None, 6)
            entries.append(CronEntry(environment.copy(), schedule, user, command))
    assert 1 == len(entries), entries
    return entries[0]


def shipped_crontab() -> CronEntry:
    return read_crontab((DEPLOY / "crontab").read_text())


def rooted(text: str, root: Path) -> str:
    """`text` with every system path (SYSTEM_PATHS) moved under `root`; paths already under it stay."""
    return _SYSTEM_PATH.sub(lambda match: f"{root}{match[1]}", text)


def cron_shell(entry: CronEntry) -> str:
    """The shell cron runs the line with: the crontab's SHELL, as dash when there is one (Debian's /bin/sh)."""
    shell = entry.environment.get("SHELL", "/bin/sh")
    return (shutil.which("dash") or shell) if shell == "/bin/sh" else shell


def run_cron_line(entry: CronEntry, root: Path, timeout: float = 120,
                  umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """Run the entry's command as Debian's cron would for its user, in the tree at `root`: `SHELL -c COMMAND`
    from the user's home, with cron's minimal environment (HOME, LOGNAME, SHELL, PATH) and the crontab's
    assignments, nothing on stdin, under cron's umask (022) unless told; what it prints unredirected is what
    cron would mail."""
    assert "%" not in entry.command, "cron turns % into a newline: escape it or keep it out of the line"
    home = root / "var" / "lib" / "retention"
    environment = {"HOME": str(home), "LOGNAME": entry.user, "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin",
                   **{name: rooted(value, root) for name, value in entry.environment.items()}}
    return subprocess.run([cron_shell(entry), "-c", rooted(entry.command, root)], env=environment, cwd=home,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
                          umask=umask)
