"""Turning results into text for people (table, markdown) or programs (JSON). Only stdout sees these."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from retention.report import Report
from retention.timeutil import rfc3339


def as_json(document: object) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, default=str)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table; numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]
    numeric = [all(isinstance(row[i], int) and not isinstance(row[i], bool) for row in rows) and bool(rows)
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.rjust(w) if num else value.ljust(w)
                         for value, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(headers)] + [line(row) for row in cells])


def markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def escape(value: object) -> str:
        return _cell(value).replace("|", "\\|")

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(escape(value) for value in row) + " |" for row in rows]
    return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return str(value)


def report(result: Report, fmt: str) -> str:
    """A plan or run report in the requested format."""
    if fmt == "json":
        return as_json(result.to_json())
    headers = ["rule", "target", "action", "cutoff", "matched", "held", "unknown_age"]
    if result.is_run:
        headers += ["changed", "remaining"]
    headers.append("status")
    rows = []
    for rule in result.rules:
        row: list[Any] = [rule.name, f"{rule.connector}:{rule.target}", rule.action,
                          rfc3339(rule.cutoff) if rule.cutoff else None, rule.matched, rule.held, rule.unknown_age]
        if result.is_run:
            row += [rule.changed, rule.remaining]
        row.append(rule.status)
        rows.append(row)
    title = "Run" if result.is_run else "Plan (dry run: nothing changed)"
    if result.is_run and result.dry_run:
        title = "Run with --dry-run (nothing changed)"
    if fmt == "markdown":  # for review: the policy each rule enforces, beside its numbers
        headers.insert(1, "policy")
        for row, rule in zip(rows, result.rules, strict=True):
            row.insert(1, rule.policy)
    body = markdown(headers, rows) if fmt == "markdown" else table(headers, rows)
    lines = [f"{title} as of {rfc3339(result.now)}", "", body]
    problems = [f"  {rule.name}: {rule.error}" for rule in result.rules if rule.error]
    if result.is_run and result.audit_copy_error:
        problems.append(f"  audit copy: {result.audit_copy_error}")
    if result.requests:  # what erasure requests changed belongs in the run's story too
        lines += ["", "Erasure requests:", table(
            ["request", "status", "changed", "held", "why not done"],
            [[o.request.id, o.status, sum(r.changed for r in o.rules), sum(r.held for r in o.rules),
              "; ".join(o.to_json()["errors"] or o.waiting_for) or None] for o in result.requests])]
    if result.errors:
        problems += [f"  {error}" for error in result.errors]
    if problems:
        lines += ["", "Problems:", *problems]
    if result.is_run:
        refused = any((rule.error or "").startswith("refused under ") for rule in result.rules)
        status = ("refused by its approved plan" if refused else "stopped by a safety threshold") \
            if result.exit_code == 3 else result.status
        lines += ["", f"run {result.run_id}: {status} (exit {result.exit_code})",
                  f"audit log: {result.audit_file}"]
    return "\n".join(lines)
