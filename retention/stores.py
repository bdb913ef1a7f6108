"""The connectors one verb opens, by name, with the client registry read once per verb."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import structlog

from retention.config import Config, Rule
from retention.connector import Connector, HostLock, ObjectStore, RowTables, connector_type
from retention.errors import ConfigError
from retention.model import ClientRegistry, OptionValue
from retention.settings import Environment, EnvRef

log = structlog.get_logger("retention")


class Stores(dict[str, Connector]):
    """The connectors one verb opened, by name, and the client registry they were asked for once per verb."""

    def __init__(self) -> None:
        super().__init__()
        self._registry_rows: dict[ClientRegistry, list[Mapping[str, Any]]] = {}

    def registry_rows(self, registry: ClientRegistry) -> list[Mapping[str, Any]]:
        if registry not in self._registry_rows:
            self._registry_rows[registry] = list(self.rows(registry.connector).read_rows(registry.table,
                                                                                        registry.fields))
        return self._registry_rows[registry]

    def rows(self, name: str) -> RowTables:
        """The connector holding a table of rows; the config has made sure it can."""
        connector = self[name]
        if not isinstance(connector, RowTables):
            raise ConfigError(f"connector {name!r} holds no tables of rows")
        return connector

    def host_lock(self, name: str | None) -> HostLock | None:
        connector = self[name] if name else None
        if connector is not None and not isinstance(connector, HostLock):
            raise ConfigError(f"connector {name!r} cannot hold a lock across hosts")
        return connector

    def object_store(self, name: str) -> ObjectStore:
        connector = self[name]
        if not isinstance(connector, ObjectStore):
            raise ConfigError(f"connector {name!r} is no object store")
        return connector


@contextmanager
def open_connectors(config: Config, env: Environment, rules: Sequence[Rule], also: Sequence[str] = ()
                    ) -> Iterator[Stores]:
    """The connectors these rules need, with their `${NAME}` options resolved (an unset one is a config error)."""
    names = {rule.connector for rule in rules} | set(also)
    if config.holds_source:
        names.add(config.holds_source.connector)
    if config.requests:
        names.add(config.requests.connector)
    if config.clients and any(rule.client_field for rule in rules):
        names.add(config.clients.connector)
    opened = Stores()
    try:
        for name in sorted(names):
            settings = config.connectors[name]
            options: dict[str, OptionValue] = {key: env.resolve(value) if isinstance(value, str | EnvRef) else value
                       for key, value in settings.options.items()}
            kind = connector_type(settings.type, source=str(config.path), key=f"connectors.{name}.type")
            try:
                opened[name] = kind(name, options)
            except ConfigError as exc:
                raise ConfigError(str(exc), source=str(config.path)) from None
        yield opened
    finally:
        for connector in opened.values():
            connector.close()
