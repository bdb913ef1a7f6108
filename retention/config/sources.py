"""The tables the job reads besides its targets: the client registry, legal holds (also from the file), requests."""

from __future__ import annotations

from retention.config.model import ConnectorConfig, Hold, HoldSource, RequestSource, Rule
from retention.connector import RowTables, capable, connector_type
from retention.model import ClientRegistry
from retention.settings import Section, is_missing
from retention.timeutil import end_of_day_or_instant


def _connector_table(section: Section, connectors: dict[str, ConnectorConfig], what: str) -> tuple[str, str]:
    """A section's `connector` (which must be defined and hold tables of rows) and its `table` (`collection`)."""
    connector = section.get("connector", str)
    if connector not in connectors:
        raise section.error("connector", f"unknown connector {connector!r}; defined: {', '.join(connectors)}")
    kind = connector_type(connectors[connector].type, source=section.source, key=section.key("connector"))
    if not capable(kind, RowTables):
        raise section.error("connector", f"a {connectors[connector].type} connector cannot hold a table of {what}: "
                                         "name a database or MongoDB connector")
    table = section.get("table", str, None) or section.get("collection", str, None)
    if not table:
        raise section.error("table", f"is required (the table, or `collection` on MongoDB, of {what})")
    return connector, table


def clients_of(section: Section | None, connectors: dict[str, ConnectorConfig]) -> ClientRegistry | None:
    if section is None:
        return None
    connector, table = _connector_table(section, connectors, "client accounts")
    registry = ClientRegistry(
        connector=connector,
        table=table,
        id_field=section.get("id_field", str, "id"),
        status_field=section.get("status_field", str, "status"),
        ended_at_field=section.get("ended_at_field", str, "ended_at"),
        active_statuses=section.strings("active_statuses", ("active",)),
        ended_statuses=section.strings("ended_statuses", ("closed", "deletion_requested")),
        retention_field=section.get("retention_field", str, None),
    )
    overlap = set(registry.active_statuses) & set(registry.ended_statuses)
    if overlap:
        raise section.error("ended_statuses", f"statuses cannot be both active and ended: {sorted(overlap)}")
    section.done()
    return registry


def holds_source_of(section: Section | None, connectors: dict[str, ConnectorConfig]) -> HoldSource | None:
    if section is None:
        return None
    connector, table = _connector_table(section, connectors, "legal holds")
    source = HoldSource(connector, table, **{name: section.get(name, str, default) for name, default in (
        ("name_field", "name"), ("client_field", "client_id"), ("rule_field", "rule"), ("until_field", "until"),
        ("reason_field", "reason"))})
    section.done()
    return source


def requests_of(section: Section | None, connectors: dict[str, ConnectorConfig]) -> RequestSource | None:
    if section is None:
        return None
    connector, table = _connector_table(section, connectors, "erasure requests")
    fields = {name: section.get(name, str, default) for name, default in (
        ("id_field", "id"), ("client_field", "client_id"), ("subject_field", "subject_id"), ("reason_field", "reason"),
        ("received_field", "received_at"), ("status_field", "status"), ("result_field", "result"),
        ("done_status", "done"))}
    source = RequestSource(connector, table, pending_statuses=section.strings("pending_statuses", ("pending",)),
                           **fields)
    section.done()
    return source


def holds_of(top: Section, rules_by_name: dict[str, Rule]) -> tuple[Hold, ...]:
    raw = top.raw("holds")
    if is_missing(raw):
        return ()
    if not isinstance(raw, list):
        raise top.error("holds", "expected an array of tables: [[holds]]")
    holds: list[Hold] = []
    for index, item in enumerate(raw):
        section = Section(item, f"holds[{index}]", top.source)
        name = section.get("name", str)
        client_ids = tuple(section.get("client_ids", list, []))
        for position, client_id in enumerate(client_ids):
            if not isinstance(client_id, str | int) or isinstance(client_id, bool):
                raise section.error(f"client_ids[{position}]", "expected a string or an integer client id")
        rules = section.strings("rules", ())
        for rule in rules:
            if rule not in rules_by_name:
                raise section.error("rules", f"unknown rule {rule!r}; rules: {', '.join(sorted(rules_by_name))}")
            if client_ids and not rules_by_name[rule].client_field:
                raise section.error("client_ids", f"rule {rule!r} does not know its records' client "
                                                  "(no expire.client_field), so a client hold cannot apply to it")
        if client_ids and not rules:
            blind = [name for name, rule in rules_by_name.items() if not rule.client_field]
            if blind:
                raise section.error("client_ids", f"rule {blind[0]!r} cannot tell its records' clients (no "
                                                  "expire.client_field or client_key), so this hold would keep "
                                                  "nothing of it: list the rules the hold applies to in `rules`")
        until = section.parsed("until", end_of_day_or_instant, None)
        if not client_ids and not rules:
            raise section.error(None, "a hold needs client_ids and/or rules (what it keeps)")
        if name in {hold.name for hold in holds}:
            raise section.error("name", f"duplicate hold name {name!r}")
        section.done()
        holds.append(Hold(name, client_ids, rules, until))
    return tuple(holds)

