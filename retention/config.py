"""The configuration file, parsed once into frozen, validated objects. Nothing below this reads TOML."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from retention.connector import ConnectorType, HostLock, ObjectStore, RowTables, capable, connector_type
from retention.errors import ConfigError
from retention.model import ClientRegistry, Transform
from retention.settings import Section, Setting, is_missing
from retention.timeutil import Duration, end_of_day_or_instant, parse_duration

DEFAULT_PATH = Path("config/retention.toml")
ACTIONS = ("delete", "anonymize", "deidentify")
# Transform kinds, and which take an argument: {kind = arg}.
TRANSFORMS = ("null", "redact", "truncate_ip", "generalize_date", "mask", "hmac", "drop", "keep")


@dataclass(frozen=True)
class JobConfig:
    timezone: str = "UTC"
    schedule: str = "0 3 * * *"
    state_dir: Path = Path("var/retention")
    batch_size: int = 5000
    lock_connector: str | None = None  # also take a PostgreSQL advisory lock there: one run across hosts
    metrics_file: Path | None = None  # a Prometheus textfile, written atomically after each run


@dataclass(frozen=True)
class WormConfig:
    """Where signed run files are also written, under COMPLIANCE-mode Object Lock for `retain_days`."""

    connector: str
    bucket: str
    prefix: str
    retain_days: int


@dataclass(frozen=True)
class AuditConfig:
    dir: Path
    signing_key: Setting | None
    record_ids: str  # hashed | none
    worm: WormConfig | None = None


@dataclass(frozen=True)
class ConnectorConfig:
    name: str
    type: str
    options: dict[str, Any]  # values may be EnvRef, resolved when the connector opens


@dataclass(frozen=True)
class Hold:
    """A legal hold: matching expired records are never changed and are counted as held."""

    name: str
    client_ids: tuple[Any, ...] = ()
    rules: tuple[str, ...] = ()
    until: datetime | None = None
    source: str = "config"  # "config", or the connector:table it was read from
    reason: str = ""

    def active_at(self, now: datetime) -> bool:
        return self.until is None or now <= self.until


@dataclass(frozen=True)
class HoldSource:
    """A table or collection of legal holds, so legal can place and lift holds without a deploy."""

    connector: str
    table: str
    name_field: str = "name"
    client_field: str = "client_id"
    rule_field: str = "rule"
    until_field: str = "until"
    reason_field: str = "reason"


@dataclass(frozen=True)
class RequestSource:
    """The table or collection of erasure requests: a client's instruction, an end user's request, child data."""

    connector: str
    table: str
    id_field: str = "id"
    client_field: str = "client_id"
    subject_field: str = "subject_id"
    reason_field: str = "reason"
    received_field: str = "received_at"
    status_field: str = "status"
    result_field: str = "result"
    pending_statuses: tuple[str, ...] = ("pending",)
    done_status: str = "done"


@dataclass(frozen=True)
class Expire:
    after: Duration | None = None
    field: str | None = None
    client_field: str | None = None
    grace: Duration | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    policy: str
    connector: str
    target: str
    key: tuple[str, ...] | None  # one or more fields; None: the primary key (SQL) or `_id` (MongoDB)
    expire: Expire
    action: str
    marker: str | None
    transforms: tuple[Transform, ...]
    max_fraction: float
    max_records: int | None
    batch_size: int | None
    scope: dict[str, Any] = dataclasses.field(default_factory=dict)  # connector-specific target keys (S3: prefix)
    subject_field: str | None = None  # which field names the end user, for erasure requests

    @property
    def client_field(self) -> str | None:
        return self.expire.client_field

    @property
    def subject(self) -> str | None:
        """The end user's field, or on S3 the `subject_key` pattern."""
        return self.subject_field or self.scope.get("subject_key")


@dataclass(frozen=True)
class Config:
    path: Path
    sha256: str
    job: JobConfig
    audit: AuditConfig | None
    pseudonym_key: Setting | None
    connectors: dict[str, ConnectorConfig]
    clients: ClientRegistry | None
    holds: tuple[Hold, ...]
    rules: tuple[Rule, ...]
    holds_source: HoldSource | None = None
    requests: RequestSource | None = None

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise ConfigError(f"no rule named {name!r}; rules: {', '.join(r.name for r in self.rules)}")

    def batch_size(self, rule: Rule) -> int:
        return rule.batch_size or self.job.batch_size


def config_path(explicit: str | None) -> Path:
    """`--config`, else `$RETENTION_CONFIG`, else config/retention.toml."""
    return Path(explicit or os.environ.get("RETENTION_CONFIG") or DEFAULT_PATH)


def load_config(path: Path) -> Config:
    """Read and validate `path`; every problem is a ConfigError naming the file and key."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}", source=source) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    return _parse(Section(data, "", source), path, hashlib.sha256(raw).hexdigest())


def _parse(top: Section, path: Path, sha256: str) -> Config:
    job = _job(top.section("job"))
    audit = _audit(top.section("audit"))
    secrets = top.section("secrets")
    pseudonym_key = secrets.setting("pseudonym_key", None) if secrets else None
    if secrets:
        secrets.done()
    connectors_section = top.section("connectors", required=True)
    assert connectors_section is not None
    connectors, types = _connectors(connectors_section)
    clients = _clients(top.section("clients"), connectors)
    rules = _rules(top, connectors, types, clients, pseudonym_key)
    holds = _holds(top, {rule.name: rule for rule in rules})
    holds_source = _holds_source(top.section("holds_source"), connectors)
    requests = _requests(top.section("requests"), connectors)
    top.done()
    if audit and audit.record_ids == "hashed" and pseudonym_key is None:
        raise ConfigError('record_ids = "hashed" needs secrets.pseudonym_key', source=top.source,
                          key="audit.record_ids")
    if job.lock_connector and connectors.get(job.lock_connector) is None:
        raise ConfigError(f"unknown connector {job.lock_connector!r}; defined: {', '.join(connectors)}",
                          source=top.source, key="job.lock.connector")
    if job.lock_connector and not capable(types[job.lock_connector], HostLock):
        raise ConfigError(f"connector {job.lock_connector!r} cannot hold a lock across hosts: name a postgres "
                          "connector (a PostgreSQL advisory lock)", source=top.source, key="job.lock.connector")
    if audit and audit.record_ids == "":
        audit = dataclasses.replace(audit, record_ids="hashed" if pseudonym_key else "none")
    if audit and audit.worm and connectors.get(audit.worm.connector, None) is None:
        raise ConfigError(f"unknown connector {audit.worm.connector!r}; defined: {', '.join(connectors)}",
                          source=top.source, key="audit.s3.connector")
    if audit and audit.worm and not capable(types[audit.worm.connector], ObjectStore):
        raise ConfigError(f"connector {audit.worm.connector!r} is no object store: the WORM copy needs an s3 "
                          "connector (S3 Object Lock keeps it unalterable)", source=top.source,
                          key="audit.s3.connector")
    return Config(path, sha256, job, audit, pseudonym_key, connectors, clients, holds, rules, holds_source, requests)


def _job(section: Section | None) -> JobConfig:
    if section is None:
        return JobConfig()
    timezone = section.get("timezone", str, "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise section.error("timezone", f"unknown time zone {timezone!r} (expected an IANA name such as "
                                        '"UTC" or "Europe/Berlin")') from None
    schedule = section.get("schedule", str, "0 3 * * *")
    if len(schedule.split()) != 5:
        raise section.error("schedule", f'expected a 5-field cron expression like "0 3 * * *", got {schedule!r}')
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(schedule, timezone=zoneinfo.ZoneInfo(timezone))
    except ValueError as exc:
        raise section.error("schedule", f"not a valid cron expression ({exc}): {schedule!r}") from None
    batch_size = _positive(section, "batch_size", 5000)
    lock = section.section("lock")
    lock_connector = lock.get("connector", str) if lock else None
    if lock:
        lock.done()
    metrics = section.get("metrics_file", str, None)
    job = JobConfig(timezone, schedule, Path(section.get("state_dir", str, "var/retention")), batch_size,
                    lock_connector, Path(metrics) if metrics else None)
    section.done()
    return job


def _audit(section: Section | None) -> AuditConfig | None:
    if section is None:
        return None
    worm_section = section.section("s3")
    worm = None
    if worm_section is not None:
        worm = WormConfig(worm_section.get("connector", str), worm_section.get("bucket", str),
                          worm_section.get("prefix", str, ""), worm_section.get("retain_days", int))
        if worm.retain_days < 1:
            raise worm_section.error("retain_days", "expected a positive number of days")
        worm_section.done()
    audit = AuditConfig(
        dir=Path(section.get("dir", str, "var/audit")),
        signing_key=section.setting("signing_key", None),
        record_ids=section.choice("record_ids", ("hashed", "none"), "") if section.has("record_ids") else "",
        worm=worm,
    )
    section.done()
    return audit


def _connectors(section: Section) -> tuple[dict[str, ConnectorConfig], dict[str, ConnectorType]]:
    connectors: dict[str, ConnectorConfig] = {}
    types: dict[str, ConnectorType] = {}
    for name, _ in section.items():
        table = section.section(name)
        assert table is not None
        type_name = table.get("type", str)
        kind = connector_type(type_name, source=table.source, key=table.key("type"))
        options: dict[str, Any] = {}
        for option in kind.options:
            if option.kind is str:
                value = table.setting(option.name, None)
            else:
                value = table.get(option.name, option.kind, None)
            if value is None:
                if option.required:
                    raise table.error(option.name, f"is required for a {type_name} connector ({option.help})")
                value = option.default
            options[option.name] = value
        table.done(f"options of a {type_name} connector")
        connectors[name] = ConnectorConfig(name, type_name, options)
        types[name] = kind
    if not connectors:
        raise section.error(None, "define at least one connector, e.g. [connectors.app] type = \"postgres\"")
    return connectors, types


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


def _clients(section: Section | None, connectors: dict[str, ConnectorConfig]) -> ClientRegistry | None:
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
    )
    overlap = set(registry.active_statuses) & set(registry.ended_statuses)
    if overlap:
        raise section.error("ended_statuses", f"statuses cannot be both active and ended: {sorted(overlap)}")
    section.done()
    return registry


def _holds_source(section: Section | None, connectors: dict[str, ConnectorConfig]) -> HoldSource | None:
    if section is None:
        return None
    connector, table = _connector_table(section, connectors, "legal holds")
    source = HoldSource(connector, table, **{name: section.get(name, str, default) for name, default in (
        ("name_field", "name"), ("client_field", "client_id"), ("rule_field", "rule"), ("until_field", "until"),
        ("reason_field", "reason"))})
    section.done()
    return source


def _requests(section: Section | None, connectors: dict[str, ConnectorConfig]) -> RequestSource | None:
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


def _holds(top: Section, rules_by_name: dict[str, Rule]) -> tuple[Hold, ...]:
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


def _rules(top: Section, connectors: dict[str, ConnectorConfig], types: dict[str, ConnectorType],
           clients: ClientRegistry | None, pseudonym_key: Setting | None) -> tuple[Rule, ...]:
    raw = top.raw("rules")
    if is_missing(raw) or not isinstance(raw, list) or not raw:
        raise top.error("rules", "expected at least one [[rules]] table")
    rules: list[Rule] = []
    for index, item in enumerate(raw):
        rule = _rule(Section(item, f"rules[{index}]", top.source), connectors, types, clients, pseudonym_key)
        if rule.name in {r.name for r in rules}:
            raise ConfigError(f"duplicate rule name {rule.name!r}", source=top.source, key=f"rules[{index}].name")
        rules.append(rule)
    return tuple(rules)


def _rule(section: Section, connectors: dict[str, ConnectorConfig], types: dict[str, ConnectorType],
          clients: ClientRegistry | None, pseudonym_key: Setting | None) -> Rule:
    name = section.get("name", str)
    if not name.strip() or any(ch.isspace() for ch in name):
        raise section.error("name", f"a rule name is one word without spaces, got {name!r}")
    section.path = f"rules[{name}]"
    connector = section.get("connector", str)
    if connector not in connectors:
        raise section.error("connector", f"unknown connector {connector!r}; defined: {', '.join(connectors)}")
    kind = types[connector]
    target = section.get(kind.target_key, str, None)
    if not target:
        raise section.error(kind.target_key, f"is required: the {kind.target_key} this rule enforces on a "
                                             f"{kind.type_name} connector")
    scope: dict[str, Any] = {option.name: section.get(option.name, option.kind, option.default)
                             for option in kind.rule_options}
    expire = _expire(section, clients, kind, scope.get("client_key"))
    action = section.choice("action", ACTIONS)
    if action not in kind.actions:
        raise section.error("action", f'action = "{action}" is not possible on a {kind.type_name} connector: '
                                      f"{kind.actions_note}")
    marker = section.get("marker", str, None)
    transforms = _transforms(section, action, kind)
    if action == "delete" and (marker or transforms):
        raise section.error("marker" if marker else "transforms",
                            'applies only to action = "anonymize" or "deidentify" (delete removes the record)')
    if action != "delete" and (not marker or not transforms):
        raise section.error("marker" if not marker else "transforms",
                            f'action = "{action}" needs `marker` (a field set when a record is processed, '
                            "so it is never processed twice) and `transforms`")
    if any(t.kind == "hmac" for t in transforms) and pseudonym_key is None:
        raise section.error("transforms", "the hmac transform needs secrets.pseudonym_key")
    key = _key(section)
    protected = {f for f in (*(key or ()), marker, expire.field, expire.client_field) if f}
    for transform in transforms:
        if transform.field in protected:
            raise section.error(f"transforms.{transform.field}", "cannot transform the key, the marker or a "
                                                                  "field the expiry is computed from")
    max_fraction = section.get("max_fraction", float, 0.5)
    if not 0 < max_fraction <= 1:
        raise section.error("max_fraction", f"expected a fraction above 0 and at most 1.0, got {max_fraction}")
    max_records = section.get("max_records", int, None)
    if max_records is not None and max_records < 0:
        raise section.error("max_records", "expected a count of 0 or more")
    rule = Rule(
        name=name,
        policy=section.get("policy", str, ""),
        connector=connector,
        target=target,
        key=key,
        expire=expire,
        action=action,
        marker=marker,
        transforms=transforms,
        max_fraction=max_fraction,
        max_records=max_records,
        batch_size=_positive(section, "batch_size", None),
        scope=scope,
        subject_field=section.get("subject_field", str, None) if kind.target_key != "bucket" else None,
    )
    section.done()
    return rule


def _key(rule: Section) -> tuple[str, ...] | None:
    """`key = "id"` or `key = ["tenant_id", "id"]`: the fields that name a record, in order."""
    raw = rule.raw("key")
    if is_missing(raw):
        return None
    fields = (raw,) if isinstance(raw, str) else tuple(raw) if isinstance(raw, list) else None
    if not fields or not all(isinstance(f, str) and f for f in fields) or len(set(fields)) != len(fields):
        raise rule.error("key", 'expected a field name or a list of distinct field names, e.g. "id" or '
                                '["created_month", "id"]')
    rule.get("key", str if isinstance(raw, str) else list)  # mark it read
    return fields


def _expire(rule: Section, clients: ClientRegistry | None, kind: ConnectorType, client_key: str | None) -> Expire:
    section = rule.section("expire", required=True)
    assert section is not None
    after = section.parsed("after", parse_duration, None)
    field = section.get("field", str, None)
    client_field = section.get("client_field", str, None) if not client_key else None
    grace = section.parsed("grace", parse_duration, None)
    section.done()
    if client_key:
        # on S3 the client id is read from the object key: the pattern stands in for the client field
        if "{client_id}" not in client_key:
            raise rule.error("client_key", f'expected a key pattern with {{client_id}}, e.g. "clients/{{client_id}}/", '
                                           f"got {client_key!r}")
        client_field = client_key
    if after is not None and field is None:
        field = kind.default_age_field
    if after is None and client_field is None:
        raise section.error(None, 'expected `after` + `field` (an age rule) and/or `client_field` '
                                  '(a client-lifetime rule), e.g. { after = "24 months", field = "collected_at" }')
    if after is not None and field is None:
        raise section.error("field", "is required with `after`: the timestamp field the age is measured from")
    if field is not None and after is None:
        raise section.error("after", "is required with `field`: how long after it the record expires")
    if grace is not None and client_field is None:
        raise section.error("grace", "applies only with `client_field`")
    if client_field is not None and clients is None:
        raise section.error("client_field", "a client-lifetime rule needs the [clients] registry")
    return Expire(after, field, client_field, grace or (Duration(0, "day") if client_field else None))


def _transforms(rule: Section, action: str, kind: ConnectorType) -> tuple[Transform, ...]:
    section = rule.section("transforms")
    if section is None:
        return ()
    transforms = []
    for field, spec in section.items():
        key = section.key(field)
        if isinstance(spec, str):
            transform = Transform(field, spec)
        elif isinstance(spec, dict) and len(spec) == 1:
            (name, arg), = spec.items()
            transform = Transform(field, name, arg)
        else:
            raise ConfigError('expected a transform name ("redact") or a one-key table ({ mask = 4 })',
                              source=section.source, key=key)
        transforms.append(_check_transform(transform, key, section.source, action, kind))
    return tuple(transforms)


def _check_transform(transform: Transform, key: str, source: str, action: str, kind: ConnectorType) -> Transform:
    def fail(message: str) -> ConfigError:
        return ConfigError(message, source=source, key=key)

    name, arg = transform.kind, transform.arg
    if name not in TRANSFORMS:
        raise fail(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")
    if name not in kind.transforms:
        raise fail(f"transform {name!r} is not supported by {kind.type_name} connectors "
                   f"(supported: {', '.join(sorted(kind.transforms))})")
    if name == "hmac" and action != "deidentify":
        raise fail('hmac is a keyed, consistent pseudonym: it is allowed only with action = "deidentify" '
                   '(anonymize must be irreversible)')
    takes = {"redact": str, "generalize_date": str, "mask": int}
    if arg is not None and (name not in takes or not isinstance(arg, takes[name]) or isinstance(arg, bool)):
        expected = {"redact": '{ redact = "TEXT" }', "generalize_date": '{ generalize_date = "month" }',
                    "mask": "{ mask = 4 }"}.get(name, f'"{name}" (it takes no argument)')
        raise fail(f"expected {expected}, got {{ {name} = {arg!r} }}")
    if name == "generalize_date" and arg not in ("month", "year"):
        raise fail('expected { generalize_date = "month" } or { generalize_date = "year" }')
    if name == "mask" and (arg is None or int(arg) < 0):
        raise fail("expected { mask = N }: how many trailing characters to keep")
    if name == "redact" and arg is None:
        transform = Transform(transform.field, name, "[redacted]")
    return transform


def _positive(section: Section, name: str, default: int | None) -> Any:
    value = section.get(name, int, default)
    if value is not None and value < 1:
        raise section.error(name, f"expected a positive integer, got {value}")
    return value
