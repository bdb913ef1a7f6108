"""The `retention` command line: parses arguments, calls the core, prints results, maps errors to exit codes.

`base` defines the group and its error handling; `jobs`, `audit` and `tables` add their commands to it.
"""

from retention.cli import audit, jobs, tables  # noqa: F401 - importing them registers their commands
from retention.cli.base import main, utc_now

__all__ = ["main", "utc_now"]
