"""Benchmark: `retention run` against hand-written batched SQL on identical PostgreSQL data, in the same run.

Not a test. Prints the time of each, their ratio (tool / hand-written), and the tool's peak RSS.
Usage: python bench/bench_postgres.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.contenders import tool_cli, tool_in_process
from retention.audit import generate_keypair
from retention.logs import configure
from retention.timeutil import Duration
from tests.servers import postgres_server

NOW = datetime.now(UTC)
CUTOFF = Duration(24, "month").before(NOW)
BATCH = 5000

SEED = """
CREATE TABLE cookie_events (id bigint PRIMARY KEY, visitor_id text, collected_at timestamptz, ip text,
                            page text, anonymized_at timestamptz);
INSERT INTO cookie_events
SELECT g, 'visitor-' || g, now() - (random() * interval '48 months'), '198.51.100.' || (g % 256), '/pricing', NULL
FROM generate_series(1, %(rows)s) AS g;
CREATE INDEX cookie_events_collected_at ON cookie_events (collected_at);
VACUUM ANALYZE cookie_events;
"""

HAND_DELETE = """
DELETE FROM cookie_events WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM cookie_events WHERE collected_at < %(cutoff)s LIMIT 5000))
"""

HAND_UPDATE = """
UPDATE cookie_events SET ip = host(network(set_masklen(ip::inet, 24))), visitor_id = '[redacted]',
                         anonymized_at = %(now)s
WHERE ctid = ANY(ARRAY(SELECT ctid FROM cookie_events
                       WHERE collected_at < %(cutoff)s AND anonymized_at IS NULL LIMIT 5000))
"""

RULES = {
    "delete": """
[[rules]]
name = "cookie-data-24-months"
connector = "app"
table = "cookie_events"
expire = { after = "24 months", field = "collected_at" }
action = "delete"
max_fraction = 1.0
""",
    "anonymize": """
[[rules]]
name = "cookie-data-anonymized"
connector = "app"
table = "cookie_events"
expire = { after = "24 months", field = "collected_at" }
action = "anonymize"
marker = "anonymized_at"
transforms = { ip = "truncate_ip", visitor_id = "redact" }
max_fraction = 1.0
""",
}


def hand_written(url: str, statement: str) -> tuple[float, int]:
    started, total = time.perf_counter(), 0
    with psycopg.connect(url, autocommit=True) as connection:
        while True:
            count = connection.execute(statement, {"cutoff": CUTOFF, "now": NOW}).rowcount
            if count == 0:
                break
            total += count
    return time.perf_counter() - started, total


def write_config(url: str, work: Path, rule: str, record_ids: str) -> Path:
    config = work / f"{rule}-{record_ids}-{url.rsplit('/', 1)[1]}.toml"
    config.write_text(f"""
[job]
state_dir = "{work}/state"
batch_size = {BATCH}
[audit]
dir = "{work}/audit-{rule}-{record_ids}"
signing_key = "{work}/private.pem"
record_ids = "{record_ids}"
[secrets]
pseudonym_key = "bench-pseudonym-root-secret-of-32-bytes-or-more"
[connectors.app]
type = "postgres"
url = "{url}"
{RULES[rule]}""")
    return config


def expired_left(url: str, rule: str) -> int:
    with psycopg.connect(url) as check:
        return int(check.execute("SELECT count(*) FROM cookie_events WHERE collected_at < %s"
                                 + (" AND anonymized_at IS NULL" if rule == "anonymize" else ""),
                                 (CUTOFF,)).fetchone()[0])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    configure("console", -1)
    work = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    generate_keypair(work / "private.pem", work / "public.pem")
    with postgres_server() as server:
        base = server.rsplit("/", 1)[0]
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute("CREATE DATABASE seed")
            print(f"seeding {rows:,} rows (half older than 24 months)...", flush=True)
            with psycopg.connect(f"{base}/seed", autocommit=True) as seed:
                for statement in SEED.split(";"):
                    if statement.strip():
                        seed.execute(statement.replace("%(rows)s", str(rows)))
                expired = seed.execute("SELECT count(*) FROM cookie_events WHERE collected_at < %s",
                                       (CUTOFF,)).fetchone()[0]  # type: ignore[index]
        print(f"{expired:,} expired rows; batch size {BATCH}\n")
        scenarios = (("delete", HAND_DELETE, "delete", "none"), ("delete+ids", HAND_DELETE, "delete", "hashed"),
                     ("anonymize", HAND_UPDATE, "anonymize", "none"))
        print("each scenario on its own copies of the same data: hand-written SQL, the run in-process, and the\n"
              "`retention run` command (interpreter start-up and imports included, about 0.5 s)")
        print("delete+ids: the same delete with record_ids = \"hashed\" (a keyed hash of every key in the audit)\n")
        print(f"{'scenario':<11} {'hand-written':>12} {'in-process':>10} {'ratio':>6} {'command':>8} {'ratio':>6} "
              f"{'peak RSS':>9}  rows")
        with psycopg.connect(server, autocommit=True) as admin:
            for label, statement, rule, record_ids in scenarios:
                for copy in ("hand", "inproc", "cli"):
                    admin.execute(f'CREATE DATABASE "{label}_{copy}" TEMPLATE seed')
                    with psycopg.connect(f"{base}/{label}_{copy}") as warm:  # same cache state for every contender
                        warm.execute("SELECT count(*) FROM cookie_events").fetchone()
                hand_seconds, hand_count = hand_written(f"{base}/{label}_hand", statement)
                inproc_seconds = tool_in_process(write_config(f"{base}/{label}_inproc", work, rule, record_ids), NOW)
                cli_seconds, rss = tool_cli(write_config(f"{base}/{label}_cli", work, rule, record_ids), NOW)
                left = expired_left(f"{base}/{label}_inproc", rule) + expired_left(f"{base}/{label}_cli", rule)
                assert left == 0, left
                ratio = inproc_seconds / hand_seconds
                print(f"{label:<11} {hand_seconds:>11.2f}s {inproc_seconds:>9.2f}s {ratio:>6.2f} "
                      f"{cli_seconds:>7.2f}s {cli_seconds / hand_seconds:>6.2f} {rss:>7.0f}MB  {hand_count:,}")


if __name__ == "__main__":
    main()
