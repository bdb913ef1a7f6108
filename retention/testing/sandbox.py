"""A sandbox per scenario: keys, a config, its audit dir, and the CLI called the way a user calls it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result

from retention.audit import generate_keypair
from retention.cli import main
from retention.connector import RowTables, capable, connector_type
from retention.testing.store import Store

PSEUDONYM_KEY = "test-pseudonym-root-secret-0123456789"

CLIENTS = """
[clients]
connector = "app"
{target_key} = "{target}"
id_field = "{id_field}"
status_field = "status"
ended_at_field = "closed_at"
active_statuses = ["active", "trial", "suspended"]
ended_statuses = ["closed", "deletion_requested"]
"""


@dataclass
class Sandbox:
    """A folder with keys, a config file and its audit dir, for one test."""

    root: Path
    store: Store

    @property
    def config(self) -> Path:
        return self.root / "retention.toml"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def public_key(self) -> Path:
        return self.root / "audit-public.pem"

    def env(self) -> dict[str, str]:
        return {"RETENTION_AUDIT_KEY": str(self.root / "audit-private.pem"), "RETENTION_PSEUDONYM_KEY": PSEUDONYM_KEY,
                "APP_DATABASE_URL": self.store.url}

    def write(self, rules: str, *, extra: str = "", clients: bool = True) -> Path:
        """Write the config with these rules, in the store's own names.

        `{target} = "NAME"` becomes the store's target key (`table`, `collection`, `bucket`) and
        `store.target_name(NAME)`, any other `{target}` the target key alone; an age's `field = "NAME"` becomes
        `store.age_field(NAME)` (`id_field`, `client_field` are left alone). The client registry is written when
        asked for and the store's connector can hold tables of rows (a bucket cannot hold one).
        """
        store = self.store
        rules = re.sub(r'\{target\} = "(\w+)"', lambda m: f'{store.target_key} = "{store.target_name(m[1])}"', rules)
        rules = rules.replace("{target}", store.target_key)
        rules = re.sub(r'\bfield = "(\w+)"', lambda m: f'field = "{store.age_field(m[1])}"', rules)
        registry = CLIENTS.format(target_key=store.target_key, target=store.target_name("clients"),
                                  id_field=store.id_field)
        clients = clients and capable(connector_type(store.type_name), RowTables)
        self.config.write_text(f"""
[job]
state_dir = "{self.root}/state"
batch_size = 2

[audit]
dir = "{self.audit_dir}"
signing_key = "${{RETENTION_AUDIT_KEY}}"
record_ids = "hashed"

[secrets]
pseudonym_key = "${{RETENTION_PSEUDONYM_KEY}}"

[connectors.app]
type = "{store.type_name}"
{store.connector_options()}
{registry if clients else ""}
{extra}
{rules}
""")
        return self.config

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """Run `retention --config <sandbox config> ARGS` in-process, as the console script would."""
        return CliRunner().invoke(main, ["--config", str(self.config), "--log-format", "json", *args],
                                  env={**self.env(), **(env or {})}, catch_exceptions=False)


def make_sandbox(root: Path, store: Store) -> Sandbox:
    root.mkdir(parents=True, exist_ok=True)
    generate_keypair(root / "audit-private.pem", root / "audit-public.pem")
    return Sandbox(root, store)


def audit_files(sandbox: Sandbox) -> list[Path]:
    return sorted(sandbox.audit_dir.glob("*.jsonl")) if sandbox.audit_dir.exists() else []


__all__ = ["PSEUDONYM_KEY", "Sandbox", "audit_files", "make_sandbox"]
