"""`retention holds` and `retention requests`: legal holds in force, erasure requests before and after."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from retention import __version__
from retention import inspect as inspection
from retention.audit import fingerprint, load_private_key, verify
from retention.audit.certificate import VERIFY_LOG, certificate, gather
from retention.cli.audit import timestamp_policy
from retention.cli.base import FORMAT, State, main, output_path, utc_now
from retention.errors import AuditError, ConfigError, VerificationFailed
from retention.render import as_json, table
from retention.requests import ErasureRequest
from retention.timeutil import rfc3339, stored_instant


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



def _instant_text(value: object) -> str | None:
    """A stored time as RFC 3339 UTC where it reads as one (naive is UTC), else null: the column may hold anything,
    a note about a person included, and a certificate holds no field values."""
    instant = stored_instant(value)
    return rfc3339(instant) if instant else None


@requests.command("certificate")
@click.argument("request_id")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write it here, and its Ed25519 "
              "signature by the audit key beside it as PATH.sig (else: print it, unsigned).")
@click.pass_obj
def requests_certificate(state: State, request_id: str, out: Path | None) -> None:
    """A signed statement of what was done for one erasure request, from the audit logs, with no personal values.

    Exit 1 when the request is not done yet (printing what it waits for), 5 when an audit file it rests on fails
    verification, 2 for an unknown id.
    """
    config = state.config
    if config.audit is None or config.audit.signing_key is None:
        raise ConfigError("a certificate is signed by the audit key: configure [audit] signing_key")
    key = load_private_key(Path(state.env.resolve(config.audit.signing_key, secret=False)))
    ((request, _),) = inspection.request_preview(config, state.env, utc_now(), request_id)
    evidence = gather(config.audit.dir, request.id)
    checks = {check.path: check for check in verify([config.audit.dir], [key.public_key()],
                                                     timestamp_policy(state, None, needs_config=True))}
    failing = [check for check in checks.values() if check.path in evidence.runs and not check.ok]
    result = request.result or {}
    done_by = result.get("run_id") if result.get("status") == "done" else None
    table_name = config.requests.table if config.requests else "the requests table"
    if done_by is not None and not isinstance(done_by, str):
        raise AuditError(f"{table_name} says request {request.id!r} is done, but names no run that did it")
    statement = {"id": request.id, "reason": request.reason,
                 "received_at": _instant_text(request.received_at),
                 "status": request.status, "completed_at": evidence.finished_at.get(done_by) if done_by else None,
                 "completed_by_run": done_by}
    document = certificate(statement, evidence, checks, fingerprint(key.public_key()), rfc3339(utc_now()),
                           __version__)
    if done_by is None:
        waiting = result.get("waiting_for")
        reasons = [str(reason) for reason in waiting] if isinstance(waiting, list) else []
        document["waiting_for"] = reasons or ["a run: no run has served it yet"]
        click.echo(as_json(document))
        sys.exit(1)
    if done_by not in evidence.finished_at:
        raise AuditError(f"{table_name} says request {request.id!r} was done by run {done_by}, but no run in "
                         f"{config.audit.dir} shows it")
    if unfinished := evidence.unfinished(done_by):
        raise AuditError(f"{table_name} says request {request.id!r} was done by run {done_by}, but its signed log "
                         f"says otherwise ({'; '.join(unfinished)}): not certified")
    if failing:
        names = ", ".join(f"{check.path.name} ({check.status})" for check in failing)
        raise VerificationFailed(f"not certified: the audit files it rests on fail verification: {names}")
    text = as_json(document) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    output_path(out, config, "--out")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out.with_name(out.name + ".sig").write_bytes(key.sign(out.read_bytes()))
    click.echo(f"wrote {out} and {out.name}.sig (verify: {VERIFY_LOG.format(file=out)})")
