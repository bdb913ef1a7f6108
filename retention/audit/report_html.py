"""`audit report`: the audit history as one self-contained HTML page for a compliance reviewer.

The page loads nothing (inline CSS and SVG, no script, no font, no `url()`), reads well printed, and escapes every
value taken from the audit files: they are untrusted input, and a crafted line must not become markup.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from retention.audit.chart import Series, line_chart
from retention.audit.history import DONE, FAILED, SERIES, History, Request, Service
from retention.audit.keys import fingerprint

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a;
       max-width: 1120px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 2px solid #ccc; margin-top: 1.8em; }
h3 { margin: 1.2em 0 .3em; } .muted { color: #555; } small { color: #555; }
table { border-collapse: collapse; width: 100%; margin: .5em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.n { text-align: right; }
.ok { background: #e3f4e3; } .warn { background: #fff4d6; } .bad { background: #fbe0e0; }
.verdict { padding: .6em 1em; border: 1px solid #aaa; font-weight: 600; }
.rules { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 0 2em; }
section.rule { break-inside: avoid; } svg.chart { max-width: 100%; height: auto; font-size: 11px; }
svg.chart text { fill: #333; stroke: none; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: .6em; white-space: pre-wrap; word-break: break-all; }
nav a { margin-right: 1em; }
@media print { body { margin: 0; max-width: none; } nav { display: none; } h2 { break-after: avoid; } }
"""
NONE = "-"
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
UTC_ZONE = ZoneInfo("UTC")


def write_report(history: History, out: Path, *, generated: datetime, zone: ZoneInfo = UTC_ZONE,
                 worm_bucket: str | None = None) -> None:
    """Write the page atomically: a reader (or a web server) never sees half a report."""
    page = render(history, generated=generated, zone=zone, worm_bucket=worm_bucket)
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(page)
        os.chmod(temporary, 0o644)  # a report is meant to be read; mkstemp makes it 0600
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def result_line(out: Path, history: History) -> str:
    """What `audit report` (and the demo) print: where the page is and how many problems it shows."""
    runs, problems = len(history.runs), len(history.problems)
    return f"wrote {out}: {runs} run{'s' * (runs != 1)}, {problems} problem{'s' * (problems != 1)}"


def render(history: History, *, generated: datetime, zone: ZoneInfo = UTC_ZONE,
           worm_bucket: str | None = None) -> str:
    when = _Clock(zone)
    body = [_header(history, when(generated), zone, worm_bucket), _runs(history, when), _rules(history, when),
            _requests(history), _holds(history), _verification(history)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # belt and braces: should a value ever slip through unescaped, the browser still runs no script
            # and fetches nothing
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>Retention audit report: {_e(history.directory.name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def _header(history: History, generated: str, zone: ZoneInfo, worm_bucket: str | None) -> str:
    problems = history.problems
    if problems:
        verdict = (f'<p class="verdict bad">{len(problems)} of {len(history.runs) + len(history.foreign)} files '
                   "fail verification: " + "; ".join(f"{_e(c.path.name)}: {_e(c.status)}" for c in problems)
                   + ". Their content is shown in the table of runs as found, and left out of every other "
                   "section.</p>")
    elif history.runs:
        verdict = (f'<p class="verdict ok">{_runs_verify(len(history.runs))}: signatures, hash chains, '
                   "run-to-run continuity and record-id sidecars.</p>")
    else:
        verdict = '<p class="verdict warn">No audit runs found.</p>'
    worm = (f" The WORM copy in bucket {_e(worm_bucket)} is not read by this report; only it can show that the "
            "newest local runs were deleted." if worm_bucket else "")
    return (f"<header><h1>Retention audit report</h1><p class=\"muted\">Generated {_e(generated)} from the audit "
            f"directory {_e(history.directory)}. Times are in {_e(zone.key)}.{worm}</p>{verdict}"
            '<nav><a href="#runs">Runs</a><a href="#rules">Rules over time</a><a href="#requests">Erasure '
            'requests</a><a href="#holds">Holds in force</a><a href="#verify">How to verify</a></nav></header>')


def _runs(history: History, when: _Clock) -> str:
    rows = []
    for run in history.runs:
        summary, check = run.summary, run.check
        override = summary.header.get("clock_override") is True
        started = when(summary.started) + (f"<br><small>as of {when(summary.now)} (clock override)</small>"
                                           if override else "")
        status = _e(summary.status) + "".join(f"<br><small>{_e(error)}</small>" for error in summary.errors)
        detail = f"<br><small>{_e(check.detail)}</small>" if check.detail else ""
        rows.append([str(run.number), started,
                     f"{_e(summary.run_id)}<br><small>{_e(summary.path.name)}</small>",
                     "yes" if summary.dry_run else "no" if summary.dry_run is False else NONE,
                     _cell(status, _status_class(summary.status)), _e(summary.exit_code),
                     *(_number(summary.totals.get(name)) for name in ("matched", "changed", "held", "unknown_age")),
                     _cell(_e(check.status) + detail, "ok" if check.ok else "bad")])
    table = _table(["#", "Started", "Run id / file", "Dry run", "Status", "Exit", "Matched", "Changed", "Held",
                    "Unknown age", "Verification"], rows) if rows else "<p>No runs.</p>"
    return f'<section id="runs"><h2>Runs</h2>{table}</section>'


def _rules(history: History, when: _Clock) -> str:
    rules = history.rules()
    parts = ['<section id="rules"><h2>Rules over time</h2><p class="muted">Each rule\'s own work per run (runs on '
             "the x axis, numbered as in the table of runs; erasure requests are below): records changed, kept by "
             "a legal hold, refused by the store (blocked), and expired records still there after the run "
             "(remaining; no point where a run did not record it).</p>"]
    verified = history.verified
    parts.append('<div class="rules">')
    for name, work in rules.items():
        by_run = {run.number: entry for run, entry in work}
        series = [Series(label, [_plotted(by_run.get(run.number), label) for run in verified]) for label in SERIES]
        chart = line_chart(f"{name}: {', '.join(SERIES)} per run", [f"#{run.number}" for run in verified], series)
        run, latest = work[-1]
        facts = [f"{label} {_e(latest.get(label, 'not recorded'))}" for label in SERIES]
        if "oldest_expired" in latest:
            facts.append(f"oldest expired {when(latest['oldest_expired'])}")
        holds = ", ".join(_e(hold) for hold in latest["holds"]) or "none"
        rows = [[str(r.number), when(r.summary.started), *(_number(e.get(k)) for k in ("matched", *SERIES)),
                 when(e.get("oldest_expired")) if "oldest_expired" in e else NONE,
                 _cell(_e(e["status"]) + (f"<br><small>{_e(e['detail'])}</small>" if e.get("detail") else ""),
                       _status_class(e["status"]))] for r, e in work]
        parts.append(
            f'<section class="rule"><h3>{_e(name)}</h3><p>{_e(latest.get("action"))} on '
            f'{_e(latest.get("connector"))}:{_e(latest.get("target"))}. Latest run (#{run.number}): '
            f'{_e(latest["status"])}; {", ".join(facts)}. Holds in force: {holds}.</p>'
            f"<figure>{chart}</figure><details><summary>Numbers per run</summary>"
            + _table(["#", "Started", "Matched", "Changed", "Held", "Blocked", "Remaining", "Oldest expired",
                      "Status"], rows) + "</details></section>")
    parts.append("</div>")
    if not rules:
        parts.append("<p>No verified run has enforced a rule yet.</p>")
    return "".join(parts) + "</section>"


def _requests(history: History) -> str:
    requests = history.requests()
    rows = [_request_row(request) for request in requests]
    table = _table(["Request", "Reason", "Outcome", "Waiting for / why", "Runs that served it", "Proof: audit file"],
                   rows) if rows else "<p>No erasure request appears in a verified run.</p>"
    return ('<section id="requests"><h2>Erasure requests</h2><p class="muted">Each request as the newest run that '
            "served it left it (dry runs change nothing and prove nothing). Its audit file is the evidence: verify "
            f"it as shown at the end of this page.</p>{table}</section>")


def _request_row(request: Request) -> list[str]:
    last = request.last
    outcome = last.outcome if last else "not yet served"
    services = "<br>".join(f"#{s.run.number} {_e(s.run.summary.run_id)}: {_e(s.outcome)}" for s in request.services)
    return [_e(request.id), _e(request.reason), _cell(_e(outcome), _outcome_class(outcome)),
            "<br>".join(_e(reason) for reason in last.waiting_for) if last and last.waiting_for else NONE,
            services, _proof(last) if last else NONE]


def _proof(service: Service) -> str:
    check = service.run.check
    return (f"{_e(check.path.name)}<br><small>SHA-256 {_e(check.sha256)}<br>"
            f"records changed: {sum(_int(e.get('changed')) for e in service.work)}, through "
            f"{_e(', '.join(dict.fromkeys(str(e['rule']) for e in service.work)))}; verification: "
            f"{_e(check.status)}</small>")


def _holds(history: History) -> str:
    rows = [[_e(", ".join(hold.holds)), _e(hold.rule), _number(hold.held),
             f"#{hold.run.number} {_e(hold.run.summary.run_id)}"] for hold in history.holds()]
    table = (_table(["Holds", "Rule", "Records held", "As of run"], rows) if rows
             else "<p>No hold applied to any rule in its newest verified run.</p>")
    return ('<section id="holds"><h2>Holds in force</h2><p class="muted">The legal holds each rule applied in its '
            "newest verified run, and the expired records they kept from being changed.</p>"
            f"{table}</section>")


def _verification(history: History) -> str:
    keys = "".join(f"<li><code>{_e(fingerprint(key))}</code><pre>{_e(_pem(key))}</pre></li>" for key in history.keys)
    named: dict[str, list[str]] = {}
    for run in history.runs:
        named.setdefault(str(run.summary.header.get("public_key_fingerprint", NONE)), []).append(f"#{run.number}")
    signers = "".join(f"<li><code>{_e(name)}</code>: runs {_e(', '.join(numbers))}</li>"
                      for name, numbers in named.items())
    directory = shlex.quote(str(history.directory))
    signed = [run.summary.path.name for run in history.runs if run.summary.signed]
    example = signed[-1] if signed else "FILE.jsonl"
    return (f'<section id="verify"><h2>How to verify</h2><p>The runs were verified with this public key '
            f"(SHA-256 fingerprint of its DER form, then the PEM file to save as <code>audit-public.pem</code>):"
            f"</p><ul>{keys}</ul><p>The key each run names in its signed <code>run_started</code>:</p>"
            f"<ul>{signers or '<li>none</li>'}</ul>"
            "<p>Anyone can check a run without this tool, with <code>openssl</code> (1.1.1 or later): first that "
            "the key file is the one above, then the run file's Ed25519 signature.</p><pre>"
            + _e("openssl pkey -pubin -in audit-public.pem -outform DER | sha256sum\n"
                 f"cd {directory}\n"
                 f"openssl pkeyutl -verify -pubin -inkey audit-public.pem -rawin -in {example} -sigfile {example}.sig\n"
                 "for f in *.jsonl; do echo \"$f\"; openssl pkeyutl -verify -pubin -inkey audit-public.pem -rawin "
                 "-in \"$f\" -sigfile \"$f.sig\"; done")
            + "</pre><p><code>retention audit verify</code> also checks each line's hash chain, the chain from run "
            "to run and the record-id sidecars; this report's verdicts are its verdicts.</p></section>")


class _Clock:
    """Audit timestamps (RFC 3339, UTC) shown in the configured time zone; anything else shown as found."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone

    def __call__(self, value: object) -> str:
        if isinstance(value, datetime):
            try:
                return _e(value.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S"))
            except OverflowError:
                return _e(value.isoformat())
        if not isinstance(value, str):
            return _e(value)
        try:
            instant = datetime.fromisoformat(value)
            return _e(instant.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S") if instant.tzinfo else value)
        except (ValueError, OverflowError):  # not a time, or one no zone can show (year 1 at +01:00): as found
            return _e(value)


def _runs_verify(count: int) -> str:
    return "The run verifies" if count == 1 else f"All {count} runs verify"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Cells are markup already escaped by the caller; a cell starting with <td is used as is."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(markup: str, css: str) -> str:
    return f'<td class="{css}">{markup}</td>'


def _number(value: object) -> str:
    return f'<td class="n">{_e(value)}</td>'


def _plotted(entry: dict[str, Any] | None, name: str) -> int | None:
    value = None if entry is None else entry.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _status_class(status: object) -> str:
    return {"ok": "ok", "over_threshold": "warn", "incomplete": "warn"}.get(status, "bad") \
        if isinstance(status, str) else "bad"


def _outcome_class(outcome: str) -> str:
    return {DONE: "ok", FAILED: "bad"}.get(outcome, "warn")


def _pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _e(value: object) -> str:
    return NONE if value is None else escape(str(value), quote=True)


__all__ = ["render", "result_line", "write_report"]
