"""Approved plans: `plan --save` records what a reviewer saw; `run --approved` refuses to do more than that.

An engineer changes a rule, runs `plan --save plan.json` and gets it reviewed. The nightly run with
`--approved plan.json` then enforces only that config (the same SHA-256) and refuses the whole run, changing
nothing, when a rule would change more than its approved count times (1 + tolerance): a reviewer approved numbers,
not a blank cheque. Fewer is fine (records may have been deleted by hand since). The approval file's own SHA-256
goes into the signed `run_started`, so the audit log says which review a run relied on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from retention import __version__
from retention.config import Config
from retention.errors import ConfigError
from retention.report import Report
from retention.timeutil import rfc3339

KIND = "retention-approved-plan"
DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class Approval:
    """An approval file, read and checked for shape (its values are untrusted input, as any file handed over)."""

    path: Path
    sha256: str  # of the file's bytes
    config_sha256: str
    counts: dict[str, int]  # rule name -> records the reviewed plan said it would change

    def refusals(self, config: Config, counted: dict[str, int], tolerance: float) -> list[str]:
        """Why this run may not go ahead under the approval; empty when it may."""
        name = self.path.name
        if config.sha256 != self.config_sha256:
            return [f"the config ({config.path}, sha256 {config.sha256[:12]}…) is not the one approved in {name} "
                    f"(sha256 {self.config_sha256[:12]}…): save and review a new plan"]
        factor = 1 + Fraction(str(tolerance))
        reasons = []
        for rule, matched in counted.items():
            if rule not in self.counts:
                reasons.append(f"{rule}: not in the approved plan {name}")
            elif matched > self.counts[rule] * factor:
                reasons.append(f"{rule}: would change {matched} records, more than the {self.counts[rule]} approved in "
                               f"{name} plus {tolerance:.0%}")
        return reasons


def save(path: Path, result: Report, config: Config) -> None:
    """Write the plan as an approval file (atomically: a reviewer never reads half of one)."""
    document: dict[str, Any] = {
        "kind": KIND, "format": 1, "tool_version": __version__, "config": str(config.path),
        "config_sha256": config.sha256, "now": rfc3339(result.now),
        "rules": [{"name": rule.name, "connector": rule.connector, "target": rule.target, "action": rule.action,
                   "matched": rule.matched, "held": rule.held, "unknown_age": rule.unknown_age, "status": rule.status}
                  for rule in result.rules],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def load(path: Path) -> Approval:
    """Read an approval file; anything but the shape `save` writes is a config error naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the approval file: {exc.strerror}", source=str(path)) from None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too many digits; too deep
        raise ConfigError("is not an approval file (not JSON): write one with `retention plan --save PATH`",
                          source=str(path)) from None
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise ConfigError(f"is not an approval file (no \"kind\": \"{KIND}\"): write one with "
                          "`retention plan --save PATH`", source=str(path))
    config_sha256, rules = document.get("config_sha256"), document.get("rules")
    if not isinstance(config_sha256, str) or not isinstance(rules, list):
        raise ConfigError("expected config_sha256 (a string) and rules (a list)", source=str(path))
    counts: dict[str, int] = {}
    for index, rule in enumerate(rules):
        name = rule.get("name") if isinstance(rule, dict) else None
        matched = rule.get("matched") if isinstance(rule, dict) else None
        if not isinstance(name, str) or not isinstance(matched, int) or isinstance(matched, bool) or matched < 0:
            raise ConfigError(f"rules[{index}]: expected a name (a string) and matched (a count)", source=str(path))
        if name in counts:
            raise ConfigError(f"rules[{index}]: rule {name!r} appears twice", source=str(path))
        counts[name] = matched
    return Approval(path, hashlib.sha256(data).hexdigest(), config_sha256, counts)
