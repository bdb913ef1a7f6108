"""Benchmark: what one refused record costs a rule of 1,000,000 expired rows (batch 5,000), in the same run.

Not a test. Runs the same delete rule twice on identical data (a foreign key from `orders` to the table in
both): once with no row referenced, once with one referenced row the database refuses to delete. Prints the
statements each run sent, the extra statements of isolating the refused row, and both wall times.
Usage: python bench/bench_refusal.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retention import run as coordinator
from retention.audit import generate_keypair
from retention.config import load_config
from retention.settings import Environment
from tests.servers import postgres_server

NOW = datetime.now(UTC)
RULE = """
[job]
state_dir = "{root}/state"
[audit]
dir = "{root}/audit-{name}"
signing_key = "{root}/key.pem"
[connectors.app]
type = "postgres"
url = "{url}"
[[rules]]
name = "events"
connector = "app"
table = "events"
expire = {{ after = "24 months", field = "at" }}
action = "delete"
max_fraction = 1.0
"""


def run(url: str, root: Path, rows: int, refused: bool) -> tuple[int, int, int, float]:
    """Statements sent, records changed, records blocked, seconds."""
    database = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with database.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS orders, events"))
        connection.execute(text("CREATE TABLE events (id integer PRIMARY KEY, at timestamptz)"))
        connection.execute(text("INSERT INTO events SELECT g, now() - interval '900 days' "
                                "FROM generate_series(1, :rows) g"), {"rows": rows})
        connection.execute(text("CREATE TABLE orders (id integer PRIMARY KEY, event_id integer REFERENCES events)"))
        if refused:
            connection.execute(text("INSERT INTO orders VALUES (1, :middle)"), {"middle": rows // 2})
    with database.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE events"))
    database.dispose()
    name = "refused" if refused else "clean"
    config = root / f"{name}.toml"
    config.write_text(RULE.format(root=root, name=name, url=url))
    sent: list[str] = []

    def count(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    started = time.monotonic()
    try:
        report = coordinator.run(load_config(config), Environment({}), NOW, lambda: NOW + timedelta(seconds=1))
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    rule = report.rules[0]
    return len(sent), rule.changed, rule.blocked, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    root = Path(tempfile.mkdtemp(prefix="bench-refusal-"))
    generate_keypair(root / "key.pem", root / "public.pem")
    with postgres_server() as url:
        clean = run(url, root, rows, refused=False)
        refused = run(url, root, rows, refused=True)
    for label, (statements, changed, blocked, seconds) in (("no refusal", clean), ("one refused", refused)):
        print(f"{label:12} statements {statements:5}  changed {changed:9,}  blocked {blocked}  {seconds:6.2f} s")
    print(f"isolating one refused record: {refused[0] - clean[0]} extra statements, "
          f"time x{refused[3] / clean[3]:.2f}")


if __name__ == "__main__":
    main()
