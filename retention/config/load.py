"""Reading the configuration file: parsed once into frozen, validated objects. Nothing else reads TOML."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import tomllib
import zoneinfo
from pathlib import Path

from retention.config.model import (
    DEFAULT_PATH,
    SERIAL,
    THREADS,
    AuditConfig,
    Config,
    ConnectorConfig,
    JobConfig,
    TimestampConfig,
    WormConfig,
)
from retention.config.rules import rules_of
from retention.config.sources import clients_of, holds_of, holds_source_of, requests_of
from retention.connector import ConnectorType, HostLock, ObjectStore, capable, connector_type
from retention.errors import ConfigError, UsageError
from retention.model import OptionValue
from retention.settings import EnvRef, Section
from retention.timeutil import parse_span


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
    clients = clients_of(top.section("clients"), connectors)
    rules = rules_of(top, connectors, types, clients, pseudonym_key)
    holds = holds_of(top, {rule.name: rule for rule in rules})
    holds_source = holds_source_of(top.section("holds_source"), connectors)
    requests = requests_of(top.section("requests"), connectors)
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
    batch_size = section.positive("batch_size", 5000)
    lock = section.section("lock")
    lock_connector = lock.get("connector", str) if lock else None
    if lock:
        lock.done()
    metrics = section.get("metrics_file", str, None)
    executor = section.parsed("executor", parse_executor, None)
    workers = section.positive("workers", None)
    if workers is not None and executor != THREADS:
        raise section.error("workers", 'is the number of units run side by side with executor = "threads"; '
                                       f"executor is {executor!r}" if executor else
                                       'is for executor = "threads" (set it too)')
    job = JobConfig(timezone, schedule, Path(section.get("state_dir", str, "var/retention")), batch_size,
                    lock_connector, Path(metrics) if metrics else None,
                    section.parsed("max_duration", parse_span, None),
                    section.parsed("max_replica_lag", parse_span, None), executor, workers)
    section.done()
    return job


def parse_executor(text: str) -> str:
    """`serial`, `threads`, or a Dask scheduler's address (tcp:// or tls://HOST:PORT), which needs the dask extra."""
    if text in (SERIAL, THREADS):
        return text
    scheme, _, address = text.partition("://")
    host, _, port = address.rpartition(":")
    if scheme not in ("tcp", "tls") or not host or not port.isdigit():
        raise ValueError(f'expected "serial", "threads" or a Dask scheduler address such as '
                         f'"tcp://scheduler:8786", got {text!r}')
    if importlib.util.find_spec("distributed") is None:
        raise ValueError("a Dask scheduler address needs Dask, which is not installed: "
                         "pip install 'pypeserver-retention[dask]'")
    return text


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
        timestamp=_timestamp(section.section("timestamp")),
    )
    section.done()
    return audit


def _timestamp(section: Section | None) -> TimestampConfig | None:
    """`timestamp = { url = "https://tsa.example/tsr", ca_file = "tsa-ca.pem" }`: an RFC 3161 token per run."""
    if section is None:
        return None
    url = section.setting("url")
    if isinstance(url, str) and not url.startswith(("http://", "https://")):  # not quoted: it may carry credentials
        raise section.error("url", "expected the http:// or https:// URL of an RFC 3161 time-stamping authority")
    timestamp = TimestampConfig(url, section.setting("ca_file"))
    section.done()
    return timestamp


def _connectors(section: Section) -> tuple[dict[str, ConnectorConfig], dict[str, ConnectorType]]:
    connectors: dict[str, ConnectorConfig] = {}
    types: dict[str, ConnectorType] = {}
    for name, _ in section.items():
        table = section.section(name)
        assert table is not None
        type_name = table.get("type", str)
        kind = connector_type(type_name, source=table.source, key=table.key("type"))
        options: dict[str, OptionValue | EnvRef] = {}
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



def with_executor(config: Config, text: str) -> Config:
    """The config with `run --executor` in place of job.executor (job.workers kept for "threads")."""
    try:
        executor = parse_executor(text)
    except ValueError as exc:
        raise UsageError(f"--executor: {exc}") from None
    workers = config.job.workers if executor == THREADS else None
    return dataclasses.replace(config, job=dataclasses.replace(config.job, executor=executor, workers=workers))
