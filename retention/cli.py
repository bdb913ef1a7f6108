"""The `retention` command line: parses arguments, calls the core, prints results, maps errors to exit codes."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import structlog

from retention import __version__
from retention import inspect as inspection
from retention import run as coordinator
from retention.audit import generate_keypair, load_private_key, load_public_keys, verify
from retention.audit.summary import summarize
from retention.audit.writer import run_files
from retention.config import Config, config_path, load_config
from retention.connector import connector_types
from retention.errors import ConfigError, RetentionError, UsageError
from retention.logs import configure
from retention.progress import for_terminal
from retention.redact import error_summary, hide
from retention.render import as_json, markdown, report, table
from retention.requests import ErasureRequest
from retention.settings import Environment
from retention.signals import StopRequest, stop_on_signals
from retention.timeutil import parse_instant, rfc3339

if TYPE_CHECKING:  # the scheduler loads only for `retention schedule`
    from apscheduler.schedulers.base import BaseScheduler

EXIT_VERIFY_FAILED = 5


def utc_now() -> datetime:
    """The only place the real clock is read; everything below takes `now` as an argument."""
    return datetime.now(UTC)


class State:
    def __init__(self, config: str | None) -> None:
        self.config_option = config
        self.env = Environment()
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            path = config_path(self.config_option)
            self.env.source = str(path)
            self._config = load_config(path)
        return self._config


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"retention: error: {message}", err=True)
    sys.exit(code)


class RetentionGroup(click.Group):
    """Turns every error of the core into one clear line and its exit code; no tracebacks for bad input."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RetentionError as exc:
            state = ctx.find_object(State)
            secrets = state.env.revealed if state else set()
            _fail(hide(str(exc), secrets), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 1)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:
            if ctx.find_object(State) and ctx.meta.get("retention.verbose"):
                raise
            _fail(f"{error_summary(exc)[1]} (rerun with -v for a traceback)", 1)


def _now_option(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise UsageError(f"--now: {exc}") from None


FORMAT = click.Choice(["table", "json"])


@click.group(cls=RetentionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="PATH", help="Config file [default: $RETENTION_CONFIG, then "
              "config/retention.toml].")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto", show_default=True,
              help="Logs on stderr: JSON lines, or console text (auto: console on a terminal).")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less log output: warnings and errors only.")
@click.version_option(__version__, prog_name="retention")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_format: str, verbose: int, quiet: int) -> None:
    """Enforce data-retention rules on PostgreSQL, MongoDB and S3, and prove it with signed audit logs."""
    state = State(config)
    ctx.obj = state
    ctx.meta["retention.verbose"] = verbose > 1
    configure(log_format, verbose - quiet, lambda: state.env.revealed)


@main.command()
@click.option("--offline", is_flag=True, help="Validate the file only: no connection, no environment variable.")
@click.pass_obj
def check(state: State, offline: bool) -> None:
    """Validate the config; unless --offline, confirm every target and field exists with a usable type."""
    config = state.config
    if offline:
        click.echo(f"{config.path}: ok ({_count(len(config.rules), 'rule')}, "
                   f"{_count(len(config.connectors), 'connector')})")
        return
    results = inspection.check(config, state.env, utc_now())
    click.echo(table(["rule", "target", "result"], [[r.rule, r.target, "; ".join(r.problems) or "ok"]
                                                    for r in results]))
    grants = [grant for r in results for grant in r.grants]
    if grants:
        click.echo("\nMissing privileges (run as the tables' owner):\n" + "\n".join(grants))
    if any(r.unreachable for r in results):
        click.echo("\nexit 1: a store could not be reached (the config may be right: try again, or check the "
                   "network and credentials)")
        sys.exit(1)
    if any(r.problems for r in results):
        click.echo("\nexit 2: the config names a target or field that does not exist or cannot be used as "
                   "configured (fix the config or the store)")
        sys.exit(2)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@main.command()
@click.option("--rule", "rules", multiple=True, metavar="NAME", help="Only this rule (repeatable).")
@click.option("--now", "now_text", metavar="TIME", help="Evaluate as of this RFC 3339 instant.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True)
@click.pass_obj
def plan(state: State, rules: tuple[str, ...], now_text: str | None, fmt: str) -> None:
    """Dry run: what each rule would do now. Changes nothing; needs no signing key."""
    result = inspection.plan(state.config, state.env, _now_option(now_text) or utc_now(), rules, for_terminal())
    click.echo(report(result, fmt))
    sys.exit(result.exit_code)


@main.command()
@click.option("--rule", "rules", multiple=True, metavar="NAME", help="Only this rule (repeatable).")
@click.option("--now", "now_text", metavar="TIME", help="Evaluate as of this RFC 3339 instant (not in the future).")
@click.option("--dry-run", is_flag=True, help="Count and audit, but change nothing.")
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
@click.pass_obj
def run(state: State, rules: tuple[str, ...], now_text: str | None, dry_run: bool, fmt: str) -> None:
    """Enforce the rules; always writes a signed audit log (a --dry-run run too)."""
    override = _now_option(now_text)
    with stop_on_signals() as stop:
        result = coordinator.run(state.config, state.env, override or utc_now(), utc_now, rule_names=rules,
                            dry_run=dry_run, clock_override=override is not None, should_stop=stop.is_set,
                            progress=for_terminal())
    click.echo(report(result, fmt))
    sys.exit(result.exit_code)


@main.command()
@click.option("--once", is_flag=True, help="Run now, once, and exit with the run's exit code.")
@click.pass_obj
def schedule(state: State, once: bool) -> None:
    """Run `run` on the cron schedule in the config (job.schedule, job.timezone) until stopped."""
    from retention import schedule as scheduling

    config = state.config
    if once:
        with stop_on_signals() as once_stop:
            code = _scheduled_run(state, once_stop)
        sys.exit(code)
    holder: list[BaseScheduler] = []

    def shut_down() -> None:  # on its own thread, after a signal: a run in progress stops after its batch
        structlog.get_logger("retention").warning("scheduler_stopping")
        for _ in range(100):  # a signal just before start(): wait for the scheduler to be running to stop it
            if holder and holder[0].running:
                holder[0].shutdown(wait=False)
                return
            time.sleep(0.05)

    with stop_on_signals(then=shut_down) as stop:
        scheduler = scheduling.build(config.job, lambda: _scheduled_run(state, stop))
        holder.append(scheduler)
        following = scheduling.next_fire(config.job, utc_now())
        structlog.get_logger("retention").info("scheduler_started", schedule=config.job.schedule,
                                               timezone=config.job.timezone,
                                               next_run=following.isoformat() if following else None)
        if not stop.is_set():
            scheduler.start()


def _scheduled_run(state: State, stop: StopRequest) -> int:
    """One scheduled run: the config read afresh, the report on stdout; errors become exit codes, not crashes."""
    try:
        config = load_config(config_path(state.config_option))
        result = coordinator.run(config, state.env, utc_now(), utc_now, should_stop=stop.is_set)
    except RetentionError as exc:
        structlog.get_logger("retention").error("scheduled_run_refused", error=hide(str(exc), state.env.revealed),
                                                exit_code=exc.exit_code)
        return exc.exit_code
    click.echo(report(result, "json"))
    return result.exit_code


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
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
@click.pass_obj
def audit_verify(state: State, paths: tuple[Path, ...], public_keys: tuple[Path, ...], fmt: str) -> None:
    """Verify signatures, hash chains and run-to-run continuity [default: the audit dir]."""
    if public_keys:
        keys = load_public_keys(list(public_keys))
    else:
        config = state.config
        if config.audit is None or config.audit.signing_key is None:
            raise ConfigError("no --public-key given and no audit.signing_key configured")
        keys = [load_private_key(Path(state.env.resolve(config.audit.signing_key, secret=False))).public_key()]
    targets = list(paths) or [_audit_dir(state)]
    for target in targets:
        if not target.exists():
            raise UsageError(f"{target} does not exist")
    checks = verify(targets, keys)
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


@main.group()
def holds() -> None:
    """Legal holds: from the config and from [holds_source]."""


@holds.command("list")
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
@click.pass_obj
def holds_list(state: State, fmt: str) -> None:
    """Every active legal hold, where it comes from, and how many expired records it keeps now."""
    reports = inspection.hold_reports(state.config, state.env, utc_now())
    if fmt == "json":
        click.echo(as_json([{"name": r.hold.name, "source": r.hold.source, "client_ids": list(r.hold.client_ids),
                             "rules": list(r.rules), "until": rfc3339(r.hold.until) if r.hold.until else None,
                             "reason": r.hold.reason, "records_held": r.records, "errors": list(r.errors)}
                            for r in reports]))
    else:
        click.echo(table(["hold", "source", "clients", "rules", "until", "records held", "reason"],
                         [[r.hold.name, r.hold.source, ", ".join(map(str, r.hold.client_ids)) or "all",
                           ", ".join(r.rules) or "-", rfc3339(r.hold.until) if r.hold.until else "none",
                           r.records, r.hold.reason] for r in reports]) if reports else "no active holds")
    if any(r.errors for r in reports):
        sys.exit(1)


@main.group()
def requests() -> None:
    """Erasure requests: what each would change (before), what it changed (after)."""


def _request_json(request: ErasureRequest, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": request.id, "client_id": request.client_id, "subject_id": request.subject_id,
            "reason": request.reason, "received_at": str(request.received_at) if request.received_at else None,
            "status": request.status, "problem": request.problem, "before": rows, "after": request.result}


@requests.command("list")
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
@click.pass_obj
def requests_list(state: State, fmt: str) -> None:
    """Every erasure request, oldest first, with what it would change now and its recorded outcome."""
    previews = inspection.request_preview(state.config, state.env, utc_now(), None)
    if fmt == "json":
        click.echo(as_json([_request_json(request, rows) for request, rows in previews]))
        return
    click.echo(table(["id", "client", "subject", "reason", "received", "status", "would change", "outcome",
                      "problem"],
                     [[r.id, r.client_id, r.subject_id, r.reason, r.received_at, r.status,
                       sum(row.get("would_change") or 0 for row in rows),
                       (r.result or {}).get("status"), r.problem or ""] for r, rows in previews])
               if previews else "no requests")


@requests.command("show")
@click.argument("request_id")
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
@click.pass_obj
def requests_show(state: State, request_id: str, fmt: str) -> None:
    """One request: per rule and store, what it would change now, and what a run changed (with its audit file)."""
    ((request, rows),) = inspection.request_preview(state.config, state.env, utc_now(), request_id)
    if fmt == "json":
        click.echo(as_json(_request_json(request, rows)))
        return
    lines = [f"request {request.id}: {request.reason}, client {request.client_id}"
             + (f", end user {request.subject_id}" if request.subject_id is not None else "")
             + f", received {request.received_at}, status {request.status}"]
    if request.problem:
        lines.append(f"cannot be served: {request.problem}")
    lines += ["", "Before (now):",
              table(["rule", "target", "action", "would change", "held"],
                    [[r["rule"], f"{r['connector']}:{r['target']}", r["action"], r.get("would_change"), r.get("held")]
                     for r in rows])]
    lines += [f"  {r['rule']}: {r['error']}" for r in rows if r.get("error")]
    if request.result:  # written by a run, but read back as untrusted input: any shape prints
        result = request.result
        rules = [r for r in result.get("rules") or [] if isinstance(r, dict)]
        lines += ["", f"After (run {result.get('run_id')}, {result.get('at')}): {result.get('status')}",
                  table(["rule", "target", "action", "changed", "held"],
                        [[r.get("rule"), f"{r.get('connector')}:{r.get('target')}", r.get("action"), r.get("changed"),
                          r.get("held")] for r in rules]),
                  f"audit file: {result.get('audit_file')}"]
        for label, key in (("waiting for", "waiting_for"), ("failed", "errors")):
            if isinstance(result.get(key), list) and result[key]:
                lines.append(f"{label}: " + "; ".join(map(str, result[key])))
    click.echo("\n".join(lines))


@main.command()
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
def connectors(fmt: str) -> None:
    """List connector types (built-in and entry-point plugins) and their options."""
    types = connector_types()
    if fmt == "json":
        click.echo(as_json([{"type": name, "description": kind.description, "target": kind.target_key,
                             "transforms": sorted(kind.transforms),
                             "options": [{"name": o.name, "required": o.required, "help": o.help}
                                         for o in kind.options]} for name, kind in sorted(types.items())]))
        return
    click.echo(table(["type", "target", "options", "description"],
                     [[name, kind.target_key, ", ".join(o.name + ("*" if o.required else "") for o in kind.options),
                       kind.description] for name, kind in sorted(types.items())]))


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("retention-demo"),
              show_default=True, help="Where to build the sandbox.")
@click.pass_context
def demo(ctx: click.Context, directory: Path) -> None:
    """Build a self-contained sandbox on embedded stores, then plan, run and verify it."""
    from retention.demo import run_demo

    if not ctx.meta.get("retention.verbose"):
        configure(ctx.find_root().params["log_format"], -1)  # the demo's own output tells the story

    sys.exit(run_demo(directory, utc_now(), echo=click.echo))


__all__ = ["main"]
