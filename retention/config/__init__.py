"""The configuration file, parsed once into frozen, validated objects. Nothing below this reads TOML.

`load` reads the file and the job-wide sections, `sources` the registry, holds and requests tables, `rules` the
[[rules]]; `model` holds the values they produce.
"""

from retention.config.load import config_path, load_config, with_executor
from retention.config.model import (
    ACTIONS,
    DEFAULT_PATH,
    TRANSFORMS,
    AuditConfig,
    Config,
    ConnectorConfig,
    Expire,
    Hold,
    HoldSource,
    JobConfig,
    RequestSource,
    Rule,
    TimestampConfig,
    WormConfig,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_PATH",
    "TRANSFORMS",
    "AuditConfig",
    "Config",
    "ConnectorConfig",
    "Expire",
    "Hold",
    "HoldSource",
    "JobConfig",
    "RequestSource",
    "Rule",
    "TimestampConfig",
    "WormConfig",
    "config_path",
    "load_config",
    "with_executor",
]
