"""What the configuration file says, as frozen values: the job, the audit log, connectors, sources, holds, rules."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from retention.errors import ConfigError
from retention.model import ClientRegistry, OptionValue, Transform
from retention.settings import EnvRef, Setting
from retention.timeutil import Duration

DEFAULT_PATH = Path("config/retention.toml")
SERIAL, THREADS = "serial", "threads"  # job.executor values besides a Dask scheduler address
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
    max_duration: timedelta | None = None  # stop between batches once the run has taken this long
    max_replica_lag: timedelta | None = None  # wait between batches while a store's replicas lag more
    executor: str | None = None  # serial | threads | a Dask scheduler address; None: a lane per store
    workers: int | None = None  # with executor = "threads": how many units run side by side


@dataclass(frozen=True)
class WormConfig:
    """Where signed run files are also written, under COMPLIANCE-mode Object Lock for `retain_days`."""

    connector: str
    bucket: str
    prefix: str
    retain_days: int


@dataclass(frozen=True)
class TimestampConfig:
    """The RFC 3161 time-stamping authority asked for a token over each signed run log, and the CA behind it."""

    url: Setting  # may carry credentials: resolved as a secret, never shown
    ca_file: Setting  # a path (PEM): the CA that issued the TSA's certificate


@dataclass(frozen=True)
class AuditConfig:
    dir: Path
    signing_key: Setting | None
    record_ids: str  # hashed | none
    worm: WormConfig | None = None
    timestamp: TimestampConfig | None = None


@dataclass(frozen=True)
class ConnectorConfig:
    name: str
    type: str
    options: dict[str, OptionValue | EnvRef]  # values may be EnvRef, resolved when the connector opens


@dataclass(frozen=True)
class Hold:
    """A legal hold: matching expired records are never changed and are counted as held."""

    name: str
    client_ids: tuple[str | int, ...] = ()
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
    scope: dict[str, OptionValue] = dataclasses.field(default_factory=dict)  # the connector's own keys (S3: prefix)
    subject_field: str | None = None  # which field names the end user, for erasure requests

    @property
    def client_field(self) -> str | None:
        return self.expire.client_field

    @property
    def subject(self) -> str | None:
        """The end user's field, or on S3 the `subject_key` pattern."""
        pattern = self.scope.get("subject_key")
        return self.subject_field or (pattern if isinstance(pattern, str) else None)


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

