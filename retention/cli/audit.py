"""`retention audit`: create keys for, verify, list and show signed audit logs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import click
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from retention.audit import generate_keypair, load_private_key, load_public_keys, verify
from retention.audit.find import find, record_names
from retention.audit.history import read_history
from retention.audit.report_html import result_line, write_report
from retention.audit.summary import summarize
from retention.audit.timestamp import TimestampPolicy, load_ca
from retention.audit.writer import run_files
from retention.cli.base import FORMAT, State, main, output_path, utc_now
from retention.config import config_path
from retention.errors import ConfigError, UsageError
from retention.render import as_json, markdown, table
from retention.secrets import pseudonym_keys

EXIT_VERIFY_FAILED = 5


@main.group()
def audit() -> None:
    """Create keys for, verify, list and show signed audit logs."""


@audit.command("keygen")
@click.option("--private-key", type=click.Path(path_type=Path), required=True, help="Where to write the "
              "private key (PKCS#8 PEM, mode 0600).")
@click.option("--public-key", type=click.Path(path_type=Path), required=True, help="Where to write the public key.")
def audit_keygen(private_key: Path, public_key: Path) -> None:
    """Create an Ed25519 key pair for signing audit logs."""
    key_fingerprint = generate_keypair(private_key, public_key)
    click.echo(f"private key: {private_key}\npublic key:  {public_key}\nfingerprint: {key_fingerprint}")


@audit.command("verify")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(path_type=Path), metavar="PEM",
              help="A public key to accept (repeatable, for rotated keys) [default: the configured signing key's].")
@click.option("--tsa-ca", type=click.Path(path_type=Path), metavar="PEM",
              help="The CA of the time-stamping authority, to check each run's .tsr token against (each signed run "
                   "is then expected to have one) [default: audit.timestamp.ca_file].")
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
@click.pass_obj
def audit_verify(state: State, paths: tuple[Path, ...], public_keys: tuple[Path, ...], tsa_ca: Path | None,
                 fmt: str) -> None:
    """Verify signatures, hash chains, run-to-run continuity and timestamps [default: the audit dir]."""
    keys = _verification_keys(state, public_keys)
    targets = list(paths) or [_audit_dir(state)]
    for target in targets:
        if not target.exists():
            raise UsageError(f"{target} does not exist")
    checks = verify(targets, keys, timestamp_policy(state, tsa_ca, needs_config=not (paths and public_keys)))
    if fmt == "json":
        click.echo(as_json([{"file": str(c.path), "run_id": c.run_id, "status": c.status, "ok": c.ok,
                             "detail": c.detail} for c in checks]))
    else:
        for c in checks:
            detail = f": {c.detail}" if c.detail else ""
            click.echo(f"{'OK  ' if c.ok else 'FAIL'}  {c.path.name}  {c.status}{detail}")
        bad = sum(not c.ok for c in checks)
        click.echo(f"{len(checks)} files checked, {bad} with problems" if checks else "no audit runs found")
    if any(not c.ok for c in checks):
        sys.exit(EXIT_VERIFY_FAILED)


def timestamp_policy(state: State, tsa_ca: Path | None, *, needs_config: bool) -> TimestampPolicy:
    """Tokens are expected when a TSA is configured or --tsa-ca is given; the CA is --tsa-ca, else the config's.

    With files and keys named on the command line, a config file that does not exist is no error (a reviewer
    checking a copy may have none): tokens found are then matched against their files, not checked against a CA.
    """
    if tsa_ca is not None:
        try:
            return TimestampPolicy(expected=True, roots=load_ca(tsa_ca))
        except ValueError as exc:
            raise UsageError(f"--tsa-ca: {exc}") from None
    if not needs_config and not config_path(state.config_option).exists():
        return TimestampPolicy()
    audit_config = state.config.audit
    settings = audit_config.timestamp if audit_config else None
    if settings is None:
        return TimestampPolicy()
    try:
        return TimestampPolicy(expected=True, roots=load_ca(Path(state.env.resolve(settings.ca_file, secret=False))))
    except ValueError as exc:
        raise ConfigError(str(exc), source=str(state.config.path), key="audit.timestamp.ca_file") from None


def _verification_keys(state: State, public_keys: tuple[Path, ...]) -> list[Ed25519PublicKey]:
    """The --public-key files, else the public half of the configured signing key."""
    if public_keys:
        return load_public_keys(list(public_keys))
    config = state.config
    if config.audit is None or config.audit.signing_key is None:
        raise ConfigError("no --public-key given and no audit.signing_key configured")
    return [load_private_key(Path(state.env.resolve(config.audit.signing_key, secret=False))).public_key()]


def _audit_dir(state: State) -> Path:
    audit_config = state.config.audit
    if audit_config is None:
        raise ConfigError("no [audit] table in the config; name the audit files or folder to read")
    return audit_config.dir


@audit.command("list")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Only runs that started on or after this UTC date.")
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
@click.pass_obj
def audit_list(state: State, since: datetime | None, fmt: str) -> None:
    """List the runs in the audit dir, oldest first."""
    cutoff = since.date() if since else date.min
    runs = [summarize(p) for p in run_files(_audit_dir(state))
            if datetime.strptime(p.name[:8], "%Y%m%d").date() >= cutoff]
    if fmt == "json":
        click.echo(as_json([r.to_json() for r in runs]))
        return
    click.echo(table(["started", "run_id", "dry_run", "status", "exit", "matched", "changed", "signed"],
                     [[r.started, r.run_id, r.dry_run, r.status, r.exit_code, r.totals.get("matched"),
                       r.totals.get("changed"), r.signed] for r in runs]))


@audit.command("show")
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True)
@click.pass_obj
def audit_show(state: State, run: str, fmt: str) -> None:
    """Show one run (by run id or file path): what each rule matched, changed, held and skipped."""
    path = Path(run)
    if not path.is_file():
        found = [p for p in run_files(_audit_dir(state)) if p.stem.endswith(f"-{run}")]
        if not found:
            raise UsageError(f"no run {run!r} in {_audit_dir(state)}")
        path = found[0]
    summary = summarize(path)
    if fmt == "json":
        click.echo(as_json(summary.to_json(with_rules=True)))
        return
    headers = ["rule", "target", "action", "cutoff", "matched", "changed", "held", "unknown_age", "status"]
    rows = [[r["rule"], f"{r['connector']}:{r['target']}", r["action"], r["cutoff"], r.get("matched"),
             r.get("changed"), r.get("held"), r.get("unknown_age"), r["status"]] for r in summary.rules]
    render: Callable[..., str] = markdown if fmt == "markdown" else table
    header = summary.header
    click.echo("\n".join([
        f"run {summary.run_id}: {summary.status} (exit {summary.exit_code}), signed: {summary.signed}",
        f"file: {summary.path}",
        f"started: {summary.started}  now: {summary.now}  dry_run: {summary.dry_run}  "
        f"clock_override: {header.get('clock_override')}",
        f"config sha256: {header.get('config_sha256')}  key: {header.get('public_key_fingerprint')}",
        "", render(headers, rows)]))



@audit.command("find")
@click.argument("key")
@click.option("--rule", "rules", multiple=True, required=True, metavar="NAME",
              help="The rule whose target holds the record (repeatable).")
@click.option("--composite", is_flag=True, help="KEY is a composite key: a JSON array of its columns' values, in "
              "key order, e.g. '[\"tenant-7\", 42]'.")
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(path_type=Path), metavar="PEM",
              help="A public key to accept (repeatable, for rotated keys) [default: the configured signing key's].")
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
@click.pass_obj
def audit_find(state: State, key: str, rules: tuple[str, ...], composite: bool, public_keys: tuple[Path, ...],
               fmt: str) -> None:
    """Which runs changed or held the record with this KEY (the text of its key).

    Records are named in the audit only by keyed hash, so this needs the pseudonym key (secrets.pseudonym_key,
    with audit.record_ids = "hashed"). Only runs that pass `audit verify` are searched. Exit 0 when found, 1 when
    not, 5 when a run fails verification.
    """
    config = state.config
    id_key = pseudonym_keys(config, state.env).record_ids
    if id_key is None:
        raise ConfigError("audit find needs the key the runs named records with: set secrets.pseudonym_key "
                          "(and audit.record_ids = \"hashed\") and its environment variable")
    names = record_names(key, id_key, composite=composite)
    unknown = [rule for rule in rules if rule not in {r.name for r in config.rules}]
    if unknown:  # a typo answers "not found"; a rule removed since may still be in older runs, so search anyway
        click.echo(f"retention: note: not a rule of {config.path}: {', '.join(unknown)}", err=True)
    directory = _audit_dir(state)
    if not directory.is_dir() or not run_files(directory):
        raise UsageError(f"the audit dir {directory} holds no run: nothing can be said of any record")
    checks = verify([directory], _verification_keys(state, public_keys),
                    timestamp_policy(state, None, needs_config=True))
    sound = [check.path for check in checks if check.ok and check.run_id]
    sightings = list(find(sound, frozenset(rules), names))
    if fmt == "json":
        click.echo(as_json({"rules": list(rules), "found": [s.to_json() for s in sightings],
                            "runs_searched": len(sound), "runs_failing_verification": [
                                str(c.path) for c in checks if not c.ok]}))
    elif sightings:
        click.echo(table(["run_id", "audit_file", "rule", "kind"],
                         [[s.run_id, s.audit_file.name, s.rule, s.kind] for s in sightings]))
    else:
        click.echo(f"no run changed or held that record under {', '.join(rules)} ({len(sound)} runs searched)")
    failing = [check for check in checks if not check.ok]
    if failing:
        click.echo(f"retention: {len(failing)} files of {directory} fail verification and were not searched: "
                   "run `retention audit verify`", err=True)
        sys.exit(EXIT_VERIFY_FAILED)
    if not sightings:
        sys.exit(1)


@audit.command("report")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, metavar="FILE.html",
              help="Where to write the report (replaced atomically).")
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(path_type=Path), metavar="PEM",
              help="A public key to accept (repeatable, for rotated keys) [default: the configured signing key's].")
@click.pass_obj
def audit_report(state: State, out: Path, public_keys: tuple[Path, ...]) -> None:
    """One self-contained HTML page of the audit dir: runs and their verification, each rule over time, erasure
    requests and the files that prove them, holds in force, how to verify with openssl. Reads no store; exits 5
    (the report still written) when a run fails verification."""
    keys = _verification_keys(state, public_keys)
    directory = _audit_dir(state)
    if not directory.is_dir():
        raise UsageError(f"the audit dir {directory} does not exist")
    config = state.config
    assert config.audit is not None  # _audit_dir has checked
    output_path(out, config, "--out")
    history = read_history(directory, keys, timestamp_policy(state, None, needs_config=True))
    try:
        write_report(history, out, generated=utc_now(), zone=ZoneInfo(config.job.timezone),
                     worm_bucket=config.audit.worm.bucket if config.audit.worm else None)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {out}: {exc.strerror}") from None
    problems = len(history.problems)
    structlog.get_logger("retention").info("audit_report_written", path=str(out), runs=len(history.runs),
                                           problems=problems)
    click.echo(result_line(out, history))
    if problems:
        sys.exit(EXIT_VERIFY_FAILED)
