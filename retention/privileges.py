"""What each configured table needs its role to be allowed to do, and the GRANTs a store reports missing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from retention.config import Config


@dataclass(frozen=True)
class Need:
    """One privilege on one table: on the table, on some columns, or on any one column (`columns[0]` suggested)."""

    privilege: str  # SELECT | DELETE | UPDATE
    columns: tuple[str, ...] = ()
    any_column: bool = False  # UPDATE of some column: what PostgreSQL asks to share-lock rows (FOR SHARE)


@runtime_checkable
class GrantsCheck(Protocol):
    """A store that can tell, without changing anything, which privileges its role lacks."""

    def missing_grants(self, table: str, needs: tuple[Need, ...]) -> list[str]:
        """GRANT statements (to run as the tables' owner) for the needs the role does not have."""
        ...


def needs(config: Config) -> dict[tuple[str, str], tuple[Need, ...]]:
    """(connector, table) -> what the job does there: counts and reads, deletes, updates, share-locks."""
    found: dict[tuple[str, str], list[Need]] = {}

    def add(connector: str, table: str, *wanted: Need) -> None:
        found.setdefault((connector, table), []).extend(w for w in wanted if w not in found.get((connector, table), []))

    for rule in config.rules:
        add(rule.connector, rule.target, Need("SELECT"))
        serves_requests = config.requests is not None and rule.client_field is not None
        if rule.action == "delete" or serves_requests:  # a child_data request deletes whatever the action
            add(rule.connector, rule.target, Need("DELETE"))
        if rule.action != "delete":
            columns = {t.field for t in rule.transforms if t.kind not in ("keep", "drop")} | {rule.marker or ""}
            add(rule.connector, rule.target, Need("UPDATE", tuple(sorted(columns - {""}))))
        registry = config.clients
        if rule.client_field and registry is not None:
            add(registry.connector, registry.table, Need("SELECT"))
            if registry.connector == rule.connector:  # its rows are share-locked by each change
                add(registry.connector, registry.table, Need("UPDATE", (registry.id_field,), any_column=True))
    if config.requests:
        source = config.requests
        add(source.connector, source.table, Need("SELECT"),
            Need("UPDATE", tuple(sorted({source.status_field, source.result_field}))))
    if config.holds_source:
        add(config.holds_source.connector, config.holds_source.table, Need("SELECT"))
    return {place: tuple(wanted) for place, wanted in found.items()}


def missing_grants(config: Config, connectors: Mapping[str, object]) -> list[str]:
    """Every GRANT the configured roles lack, from the stores that can tell (PostgreSQL)."""
    grants: list[str] = []
    for (name, table), wanted in needs(config).items():
        connector = connectors.get(name)
        if isinstance(connector, GrantsCheck):
            grants += [grant for grant in connector.missing_grants(table, wanted) if grant not in grants]
    return grants
