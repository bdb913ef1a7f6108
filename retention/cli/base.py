"""The `retention` group: the shared state, error-to-exit-code mapping and options every command uses."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from retention import __version__
from retention.config import Config, config_path, load_config
from retention.errors import RetentionError, UsageError
from retention.logs import configure
from retention.redact import error_summary, hide
from retention.settings import Environment
from retention.timeutil import parse_instant


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



def fail(message: str, code: int) -> NoReturn:
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
            fail(hide(str(exc), secrets), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 1)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:
            if ctx.find_object(State) and ctx.meta.get("retention.verbose"):
                raise
            fail(f"{error_summary(exc)[1]} (rerun with -v for a traceback)", 1)


def now_option(value: str | None) -> datetime | None:
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


def output_path(path: Path, config: Config, option: str) -> Path:
    """A file a command writes (an approval, a certificate), refused where it would replace the config or land among
    the audit files, whose directory only runs write."""
    target = path.resolve()
    if target == config.path.resolve():
        raise UsageError(f"{option} {path} is the config file itself")
    audit_dir = config.audit.dir.resolve() if config.audit else None
    if audit_dir is not None and target.is_relative_to(audit_dir):
        raise UsageError(f"{option} {path} is inside the audit dir {config.audit.dir if config.audit else ''}, "
                         "which only runs write")
    return path
