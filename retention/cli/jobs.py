"""The job's commands: check the config, plan, run, schedule; list connector types; the demo."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import structlog

from retention import approval as approvals
from retention import inspect as inspection
from retention import run as coordinator
from retention.cli.base import FORMAT, State, main, now_option, output_path, utc_now
from retention.config import config_path, load_config, with_executor
from retention.connector import connector_types
from retention.errors import RetentionError, UsageError
from retention.logs import configure
from retention.progress import for_terminal
from retention.redact import hide
from retention.render import as_json, report, table
from retention.signals import StopRequest, stop_on_signals

if TYPE_CHECKING:  # the scheduler loads only for `retention schedule`
    from apscheduler.schedulers.base import BaseScheduler


@main.command()
@click.option("--offline", is_flag=True, help="Validate the file only: no connection, no environment variable.")
@click.pass_obj
def check(state: State, offline: bool) -> None:
    """Validate the config; unless --offline, confirm every target and field exists with a usable type, and
    compare native expiry (TTL indexes, S3 lifecycle rules) with the rules."""
    config = state.config
    if offline:
        click.echo(f"{config.path}: ok ({_count(len(config.rules), 'rule')}, "
                   f"{_count(len(config.connectors), 'connector')})")
        return
    results = inspection.check(config, state.env, utc_now())
    click.echo(table(["rule", "target", "result"], [[r.rule, r.target, "; ".join(r.problems) or "ok"]
                                                    for r in results]))
    warnings = [f"{r.rule}: {warning}" for r in results for warning in r.warnings]
    if warnings:
        click.echo("\nWarnings (the rules work, at a cost):\n" + "\n".join(warnings))
    grants = [grant for r in results for grant in r.grants]
    if grants:
        click.echo("\nMissing privileges (run as the tables' owner):\n" + "\n".join(grants))
    expiry = [(r.rule, finding) for r in results for finding in r.expiry]
    if expiry:
        click.echo("\nNative expiry (the store deletes by itself, whatever the rules and legal holds say):\n"
                   + "\n".join(f"- {rule}: {finding.what}\n  {finding.verdict}: {finding.detail}"
                                for rule, finding in expiry))
    if any(r.unreachable for r in results):
        click.echo("\nexit 1: a store could not be reached (the config may be right: try again, or check the "
                   "network and credentials)")
        sys.exit(1)
    if any(r.problems for r in results):
        click.echo("\nexit 2: the config names a target or field that does not exist or cannot be used as "
                   "configured (fix the config or the store)")
        sys.exit(2)
    if any(finding.problem for _, finding in expiry):
        click.echo("\nexit 1: a native expiry deletes earlier than its rule or deletes held records (lengthen it, "
                   "narrow it or drop it, and let the rule expire the records)")
        sys.exit(1)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@main.command()
@click.option("--rule", "rules", multiple=True, metavar="NAME", help="Only this rule (repeatable).")
@click.option("--now", "now_text", metavar="TIME", help="Evaluate as of this RFC 3339 instant.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True)
@click.option("--save", "save_path", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
              help="Also write the plan as an approval file (the config's SHA-256, each rule's counts), for "
                   "`run --approved PATH` after review.")
@click.pass_obj
def plan(state: State, rules: tuple[str, ...], now_text: str | None, fmt: str, save_path: Path | None) -> None:
    """Dry run: what each rule would do now. Changes nothing; needs no signing key."""
    result = inspection.plan(state.config, state.env, now_option(now_text) or utc_now(), rules, for_terminal())
    if save_path is not None:
        approvals.save(output_path(save_path, state.config, "--save"), result, state.config, state.env)
        structlog.get_logger("retention").info("plan_saved", path=str(save_path), config_sha256=state.config.sha256)
    click.echo(report(result, fmt))
    sys.exit(result.exit_code)


@main.command()
@click.option("--rule", "rules", multiple=True, metavar="NAME", help="Only this rule (repeatable).")
@click.option("--now", "now_text", metavar="TIME", help="Evaluate as of this RFC 3339 instant (not in the future).")
@click.option("--dry-run", is_flag=True, help="Count and audit, but change nothing.")
@click.option("--executor", "executor_text", metavar="serial|threads|tcp://HOST:PORT",
              help="Where work units run (overrides job.executor): one after another, side by side on threads, "
                   "or on the Dask scheduler at this address.")
@click.option("--approved", "approved_path", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
              help="Hold the run to this approved plan (`plan --save`): refuse it whole, changing nothing (exit 3), "
                   "when the config differs or a rule would change more than approved.")
@click.option("--tolerance", type=click.FloatRange(min=0), metavar="F",
              help="With --approved: how much more than its approved count a rule may change, as a fraction "
                   f"[default: {approvals.DEFAULT_TOLERANCE}].")
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True)
@click.pass_obj
def run(state: State, rules: tuple[str, ...], now_text: str | None, dry_run: bool, executor_text: str | None,
        approved_path: Path | None, tolerance: float | None, fmt: str) -> None:
    """Enforce the rules; always writes a signed audit log (a --dry-run run too)."""
    override = now_option(now_text)
    config = with_executor(state.config, executor_text) if executor_text else state.config
    if tolerance is not None and approved_path is None:
        raise UsageError("--tolerance applies to --approved only")
    if tolerance is not None and not math.isfinite(tolerance):
        raise UsageError(f"--tolerance must be a finite fraction, got {tolerance}")
    approval = approvals.load(approved_path) if approved_path else None
    with stop_on_signals() as stop:
        result = coordinator.run(config, state.env, override or utc_now(), utc_now, rule_names=rules,
                                 dry_run=dry_run, clock_override=override is not None, should_stop=stop.is_set,
                                 progress=for_terminal(), approval=approval,
                                 tolerance=approvals.DEFAULT_TOLERANCE if tolerance is None else tolerance)
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
