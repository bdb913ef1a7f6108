"""The connector conformance suite and its scenario data, from the package (retention.testing)."""

from __future__ import annotations

from retention.testing.conformance import (
    CLIENTS,
    COOKIE_RULE,
    DEIDENTIFY_RULE,
    END_USER_RULE,
    END_USER_TRANSFORMS,
    NOW,
    NOW_TEXT,
    OWNERS,
    ConnectorConformance,
    add_cookies,
    ids,
    seed_clients,
)

__all__ = ["CLIENTS", "COOKIE_RULE", "DEIDENTIFY_RULE", "END_USER_RULE", "END_USER_TRANSFORMS", "NOW", "NOW_TEXT",
           "OWNERS", "ConnectorConformance", "add_cookies", "ids", "seed_clients"]
