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
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from retention import __version__
from retention.config import Config
from retention.errors import ConfigError
from retention.report import Report
from retention.settings import Environment, EnvRef
from retention.timeutil import rfc3339

KIND = "retention-approved-plan"
DEFAULT_TOLERANCE = 0.1
SECRET_OPTION = re.compile(r"pass|secret|token|key|credential", re.IGNORECASE)  # left out of the stores' identity


@dataclass(frozen=True)
class Approval:
    """An approval file, read and checked for shape (its values are untrusted input, as any file handed over)."""

    path: Path
    sha256: str  # of the file's bytes
    config_sha256: str
    stores_sha256: str  # of the stores the plan was counted on (`stores_identity`)
    counts: dict[str, int]  # rule name -> records the reviewed plan said it would change

    def ceiling(self, rule: str, tolerance: float) -> int | None:
        """The most records the rule may change under this approval (None: it is not in it)."""
        if rule not in self.counts:
            return None
        return math.floor(self.counts[rule] * (1 + Fraction(str(tolerance))))

    def refusals(self, config: Config, stores: str, counted: dict[str, int | None], tolerance: float) -> list[str]:
        """Why this run may not go ahead under the approval; empty when it may. A count of None: it failed."""
        name = self.path.name
        if config.sha256 != self.config_sha256:
            return [f"the config ({config.path}, sha256 {config.sha256[:12]}…) is not the one approved in {name} "
                    f"(sha256 {self.config_sha256[:12]}…): save and review a new plan"]
        if stores != self.stores_sha256:
            return [f"the stores the connectors reach (their resolved URLs, databases and endpoints) are not the ones "
                    f"{name} was counted on: save and review a plan against these stores"]
        reasons = []
        for rule, matched in counted.items():
            ceiling = self.ceiling(rule, tolerance)
            if ceiling is None:
                reasons.append(f"{rule}: not in the approved plan {name}")
            elif matched is None:
                reasons.append(f"{rule}: could not be counted, so it cannot be held to {name}")
            elif matched > ceiling:
                reasons.append(f"{rule}: would change {matched} records, more than the {self.counts[rule]} approved in "
                               f"{name} plus {tolerance:.0%}")
        return reasons


def stores_identity(config: Config, env: Environment) -> str:
    """The SHA-256 of what every connector reaches: its type and options as resolved from the environment, with
    passwords and secret-looking options left out. A `${NAME}` pointing at another database changes it."""
    described = {}
    for name, settings in sorted(config.connectors.items()):
        options = {}
        for key, value in sorted(settings.options.items()):
            if SECRET_OPTION.search(key):
                continue
            resolved = env.resolve(value) if isinstance(value, str | EnvRef) else value
            options[key] = _without_secrets(resolved) if isinstance(resolved, str) else resolved
        described[name] = {"type": settings.type, "options": options}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _without_secrets(value: str) -> str:
    """A URL without its password and secret-looking query parameters; any other text as it is."""
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        return value
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not SECRET_OPTION.search(k)])
    return urlunsplit((parts.scheme, f"{user}@{host}" if user else host, parts.path, query, ""))


def save(path: Path, result: Report, config: Config, env: Environment) -> None:
    """Write the plan as an approval file (atomically: a reviewer never reads half of one)."""
    document: dict[str, Any] = {
        "kind": KIND, "format": 1, "tool_version": __version__, "config": str(config.path),
        "config_sha256": config.sha256, "stores_sha256": stores_identity(config, env), "now": rfc3339(result.now),
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
    config_sha256, stores_sha256, rules = document.get("config_sha256"), document.get("stores_sha256"), \
        document.get("rules")
    if not isinstance(config_sha256, str) or not isinstance(stores_sha256, str) or not isinstance(rules, list):
        raise ConfigError("expected config_sha256 and stores_sha256 (strings) and rules (a list)", source=str(path))
    counts: dict[str, int] = {}
    for index, rule in enumerate(rules):
        name = rule.get("name") if isinstance(rule, dict) else None
        matched = rule.get("matched") if isinstance(rule, dict) else None
        if not isinstance(name, str) or not isinstance(matched, int) or isinstance(matched, bool) or matched < 0:
            raise ConfigError(f"rules[{index}]: expected a name (a string) and matched (a count)", source=str(path))
        if name in counts:
            raise ConfigError(f"rules[{index}]: rule {name!r} appears twice", source=str(path))
        counts[name] = matched
    return Approval(path, hashlib.sha256(data).hexdigest(), config_sha256, stores_sha256, counts)
