"""The flow reads one way: cli -> config -> units -> execute -> connectors; outcomes -> run -> the audit writer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "retention"


def imports_of(module: str) -> set[str]:
    """The retention modules `module` imports (at any depth of its body)."""
    tree = ast.parse((PACKAGE / f"{module.replace('.', '/')}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("retention"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("retention"))
    return found


def test_the_executor_never_writes_the_audit_log_nor_holds_a_signing_key() -> None:
    """execute.py yields outcomes; only run.py (the coordinator) imports the audit writer and the keys."""
    imported = imports_of("execute")
    assert not {name for name in imported if name.startswith(("retention.audit", "retention.run"))}


def test_nothing_below_the_coordinator_imports_it() -> None:
    """Units, stores, the executor and the read-only verbs never import the coordinator (no upward arrow)."""
    for module in ("units", "stores", "execute", "inspect", "requests", "holds"):
        assert not {name for name in imports_of(module) if name.startswith("retention.run")}, module


def test_store_libraries_load_only_inside_their_connectors() -> None:
    """boto3, botocore, pymongo and bson are imported by connectors (and the WORM copy), never by the core."""
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("worm.py", "ids.py"):  # loaded only when configured, or lazily inside a function
            continue
        tree = ast.parse(path.read_text())
        top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
        names = {alias.name for node in top if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in top if isinstance(node, ast.ImportFrom)}
        assert not {name.split(".")[0] for name in names} & {"boto3", "botocore", "pymongo", "bson"}, path


def test_work_units_are_picklable_and_equal_after_the_trip() -> None:
    """A rule's unit and a request's unit survive pickling unchanged, so another process can run them."""
    import pickle
    from datetime import UTC, datetime

    from retention.config import load_config
    from retention.requests import ErasureRequest
    from retention.units import compile_rule, request_work

    config = load_config(PACKAGE.parent / "config" / "retention.toml")
    now = datetime(2026, 11, 29, tzinfo=UTC)
    units = [compile_rule(config, rule, now, bytes(32)) for rule in config.rules]
    request = ErasureRequest("r-1", "r-1", "c-1", None, "client_instruction", None, "pending", None)
    units += [request_work(unit, request) for unit in units if unit.rule.client_field]
    assert len(units) > len(config.rules)
    assert units == [pickle.loads(pickle.dumps(unit)) for unit in units]  # noqa: S301 - our own bytes
