"""What a connector's own tests need: the conformance suite, the Store a scenario writes through, a sandbox.

Import it from the installed distribution (it needs pytest): `from retention.testing import ConnectorConformance`.
"""

from retention.testing.conformance import ConnectorConformance
from retention.testing.sandbox import Sandbox, make_sandbox
from retention.testing.store import Store

__all__ = ["ConnectorConformance", "Sandbox", "Store", "make_sandbox"]
