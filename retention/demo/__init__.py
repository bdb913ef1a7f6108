"""`retention demo`: a sandbox on embedded stores, planned, enforced and verified in one go.

`sandbox` builds the data, keys and configs; `servers` starts the in-process MongoDB and S3; this module tells
the story.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from retention import inspect as inspection
from retention import run as coordinator
from retention.audit import load_private_key, verify
from retention.audit.history import read_history
from retention.audit.report_html import result_line, write_report
from retention.config import load_config
from retention.demo.sandbox import build
from retention.demo.servers import embedded_mongodb, embedded_s3
from retention.errors import UsageError
from retention.render import report
from retention.report import Report
from retention.settings import Environment

MARKER = ".retention-demo"


def _prepare(directory: Path) -> None:
    """An empty folder marked as the demo's: an earlier demo's is replaced, anything else is refused."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} is a file; choose a folder for the demo with --dir")
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise UsageError(f"{directory} exists and was not made by `retention demo`; choose another --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("built by retention demo; safe to delete\n")


def run_demo(directory: Path, now: datetime, echo: Callable[[str], None] = print) -> int:
    """Build the sandbox, then show plan, run and verify; return the run's exit code."""
    _prepare(directory)
    with embedded_mongodb(directory.resolve() / "mongo") as mongodb_url, embedded_s3() as s3_url:
        return _run_demo(directory, now, echo, mongodb_url, s3_url)


def _run_demo(directory: Path, now: datetime, echo: Callable[[str], None], mongodb_url: str | None,
              s3_url: str | None) -> int:
    if s3_url:  # moto takes any credentials; the demo must not pick up (or need) real ones
        os.environ.update(DEMO_S3_URL=s3_url, AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo")  # noqa: S106
    config_path = build(directory, now, mongodb_url=mongodb_url, s3_url=s3_url)
    if mongodb_url:
        os.environ["DEMO_MONGODB_URL"] = mongodb_url
    root = config_path.parent
    os.environ["RETENTION_PSEUDONYM_KEY"] = (root / "keys" / "pseudonym.key").read_text()
    env = Environment(source=str(config_path))
    config = load_config(config_path)
    stores = "a SQLite database (app.db)" + (", an embedded MongoDB (mongo/)" if mongodb_url else "") + (
        ", an in-memory S3 (moto)" if s3_url else "")
    echo(f"Built a sandbox in {root}: {stores}, an Ed25519 key pair and retention.toml.\n")
    if not mongodb_url:
        echo("(secantusdb is not installed, so the MongoDB rule is left out: pip install secantusdb)\n")
    if not s3_url:
        echo("(moto is not installed, so the S3 rule is left out: pip install 'moto[server]')\n")
    echo("== retention plan  (a dry run: nothing changes)\n")
    echo(report(inspection.plan(config, env, now), "table") + "\n")
    echo("== retention run\n")

    def clock() -> datetime:
        return max(now, datetime.now(now.tzinfo))

    result = coordinator.run(config, env, now, clock)
    echo(report(result, "table") + "\n")
    echo("== retention run  (once more, as the next night's would: little has expired since, r-4 still waits)\n")
    again = coordinator.run(config, env, clock(), clock)
    echo(_in_one_line(again) + "\n")
    echo("== retention audit verify\n")
    assert config.audit is not None and config.audit.signing_key is not None
    key = load_private_key(Path(env.resolve(config.audit.signing_key))).public_key()
    for check in verify([config.audit.dir], [key]):
        echo(f"{'OK  ' if check.ok else 'FAIL'}  {check.path.name}  {check.status}")
    echo("\n== retention audit report\n")
    history = read_history(config.audit.dir, [key])
    write_report(history, root / "report.html", generated=clock(), zone=ZoneInfo(config.job.timezone))
    echo(result_line(root / "report.html", history))
    audit_file = result.audit_file
    retention = f"{_command('retention')} --config {root}/retention.toml"
    echo(f"""
The MongoDB and S3 rules ran on in-process servers that stopped with the demo ({config_path.name} has every
rule). {root}/retention.toml has the SQLite rules, the legal holds and the erasure requests, and needs no
server: every command below works as printed.

What to open next:
  {root}/retention.toml   the rules, each citing its policy section
  {audit_file}   the signed audit log (one JSON event per line)
  {root}/report.html   the audit report for compliance: runs, rules over time, requests, holds (open in a browser)
Try:
  export RETENTION_PSEUDONYM_KEY=$(cat {root}/keys/pseudonym.key)
  {retention} check
  {retention} plan                  # nothing left to do now
  {retention} holds list            # the config's hold, and the one legal wrote in legal_holds
  {retention} requests list         # r-4 waits for the litigation hold
  {retention} requests show r-3     # a child's data: deleted, and the audit file that proves it
  {retention} requests certificate r-3 --out {root}/r-3-certificate.json   # signed, for the person who asked
  {retention} audit find 2 --rule cookie-data-24-months   # which run deleted cookie event 2 (by its keyed hash)
  {retention} audit verify
  {retention} audit show {result.run_id}
  {retention} audit report --out {root}/report.html
  openssl pkeyutl -verify -pubin -inkey {root}/keys/audit-public.pem -rawin \\
      -in {audit_file} -sigfile {audit_file}.sig
""")
    return result.exit_code or again.exit_code


def _in_one_line(result: Report) -> str:
    units = [*result.rules, *(unit for outcome in result.requests for unit in outcome.rules)]
    requests = "; ".join(f"{outcome.request.id} {outcome.status}" + (f" ({', '.join(outcome.waiting_for)})"
                                                                      if outcome.waiting_for else "")
                         for outcome in result.requests)
    return (f"run {result.run_id}: {result.status} (exit {result.exit_code}), "
            f"{sum(unit.changed for unit in units)} records changed; requests: {requests or 'none pending'}")


def _command(name: str) -> str:
    """A command as the user can type it: its bare name when on PATH, else its path in this environment."""
    installed = Path(sys.executable).parent / name
    return name if shutil.which(name) == str(installed) or not installed.exists() else str(installed)
