"""Reading a run back: a rule's own work, its shards and the erasure requests it served are told apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retention.audit.summary import summarize

RUN = "20261129T030000000000Z-0123456789abcdef.jsonl"


def write_run(tmp_path: Path, *events: dict[str, Any]) -> Path:
    path = tmp_path / RUN
    lines = [{"seq": seq, "run_id": "0123456789abcdef", **event} for seq, event in enumerate(events)]
    path.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    return path


def started(rule: str, **extra: Any) -> dict[str, Any]:
    return {"event": "rule_started", "rule": rule, "connector": "app", "target": "t", "action": "delete",
            "cutoff": None, "holds": ["h-1"], **extra}


def finished(rule: str, changed: int, held: int, **extra: Any) -> dict[str, Any]:
    return {"event": "rule_finished", "rule": rule, "matched": changed, "changed": changed, "held": held,
            "unknown_age": 0, "total": 10, "blocked": 0, **extra}


def test_request_work_does_not_replace_its_rules_own_row(tmp_path: Path) -> None:
    """`audit show` once printed the last request's counts as the rule's: each keeps its own now."""
    path = write_run(tmp_path, {"event": "run_started", "ts": "t0", "now": "n", "dry_run": False},
                     started("users"), finished("users", 5, 2),
                     started("users", request="r-1", reason="child_data"), finished("users", 1, 0, request="r-1",
                                                                                    remaining=0),
                     {"event": "rule_failed", "rule": "[requests]", "request": "r-2", "error_class": "RequestProblem",
                      "message": "no rule can identify it", "changed": 0, "blocked": 0},
                     {"event": "run_finished", "status": "ok", "exit_code": 0, "errors": ["x"]})
    summary = summarize(path)
    assert [("users", 5, 2, "ok", ["h-1"])] == [(r["rule"], r["changed"], r["held"], r["status"], r["holds"])
                                                for r in summary.rules]
    assert [("r-1", "users", "child_data", 1, 0, "ok"), ("r-2", "[requests]", None, 0, None, "error")] == [
        (r["request"], r["rule"], r.get("reason"), r["changed"], r.get("remaining"), r["status"])
        for r in summary.requests]
    assert "holds" not in summary.to_json(with_rules=True)["rules"][0]  # `audit show --format json` is unchanged
    assert ["x"] == summary.errors


def test_shards_of_one_rule_add_up_and_report_the_worst_status(tmp_path: Path) -> None:
    """A rule split across lanes logs one start and one end per shard; its row is their sum, still running
    while one shard is."""
    path = write_run(tmp_path, {"event": "run_started"}, started("cookies", shard="1/2"),
                     started("cookies", shard="2/2"),
                     finished("cookies", 3, 1, remaining=2, oldest_expired="2024-01-02T00:00:00Z"))
    assert "incomplete" == summarize(path).rules[0]["status"]
    with path.open("a") as handle:
        handle.write(json.dumps({"seq": 4, "event": "rule_failed", "rule": "cookies", "error_class": "E",
                                 "message": "boom", "changed": 1, "blocked": 2, "remaining": 1,
                                 "oldest_expired": "2024-01-01T00:00:00Z"}) + "\n")
    rule = summarize(path).rules[0]
    assert (4, 1, 2, 3, "2024-01-01T00:00:00Z", "error", "boom") == (
        rule["changed"], rule["held"], rule["blocked"], rule["remaining"], rule["oldest_expired"], rule["status"],
        rule["detail"])


def test_crafted_values_do_not_break_the_reading(tmp_path: Path) -> None:
    """Untrusted lines: a count that is text and holds that are not names are carried, not summed or crashed on."""
    path = write_run(tmp_path, {"event": "run_started"}, started("x", holds=[["nested"], 3]),
                     finished("x", 1, 0), {"event": "rule_finished", "rule": "x", "changed": "<b>"})
    rule = summarize(path).rules[0]
    assert ("<b>", ["['nested']", "3"]) == (rule["changed"], rule["holds"])
