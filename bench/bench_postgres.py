"""Benchmark: `retention run` against hand-written batched SQL on identical PostgreSQL data, in the same run.

Not a test. On a throwaway PostgreSQL, every contender runs on its own fresh copy (CREATE DATABASE ... TEMPLATE) of
the same seeded data, dropped right after; each measurement is repeated --runs times and printed as min-max ranges.

  (default)  --rows rows (2,000,000), half expired: delete and anonymize, each with record_ids "none" and "hashed";
             the hand-written loop, the run in-process and the `retention run` command (and its peak RSS)
  --steady   the nightly steady state: 10,000 expired rows in a 1,000,000-row table and in an 8,000,000-row one
             (an index on the age column, analysed): how the tool's time and the hand-written loop's grow
  --rss      10,000,000 rows, 5,000,000 expired, record_ids "hashed": the command's peak RSS

Ratios are tool / hand-written, taken within each run (the contenders of a run follow each other, in an order
rotated from run to run), so the machine's drift between runs does not enter them.
Usage: python bench/bench_postgres.py [--rows N] [--runs N] [--steady] [--rss]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
STEADY_EXPIRED = 10_000
STEADY_SIZES = (1_000_000, 8_000_000)
RSS_ROWS = 10_000_000

# Every `every`-th row is expired (25 to 48 months old), the others are 0 to 23 months old: the expired rows are
# spread over the whole table, and their number is exact.
SEED = """
CREATE TABLE cookie_events (id bigint PRIMARY KEY, visitor_id text, collected_at timestamptz, ip text,
                            page text, anonymized_at timestamptz);
INSERT INTO cookie_events
SELECT g, 'visitor-' || g,
       CASE WHEN g % {every} = 0 THEN now() - interval '25 months' - random() * interval '23 months'
            ELSE now() - random() * interval '23 months' END,
       '198.51.100.' || (g % 256), '/pricing', NULL
FROM generate_series(1, {rows}) AS g;
CREATE INDEX cookie_events_collected_at ON cookie_events (collected_at);
VACUUM ANALYZE cookie_events
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

HAND = {"delete": HAND_DELETE, "anonymize": HAND_UPDATE}
CONTENDERS = ("hand", "inproc", "cli")


@dataclass
class Server:
    """The throwaway server: an autocommit admin connection, and URLs of its databases."""

    url: str
    admin: psycopg.Connection[tuple[object, ...]]
    work: Path
    strategy: str = ""  # PostgreSQL 15+: copy the files, not page by page through the WAL (faster for large copies)

    def db(self, name: str) -> str:
        return f"{self.url.rsplit('/', 1)[0]}/{name}"

    def seed(self, name: str, rows: int, every: int) -> float:
        """Create database `name` with `rows` rows, one in `every` expired; seconds taken."""
        started = time.perf_counter()
        self.admin.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(self.db(name), autocommit=True) as seed:
            for statement in SEED.format(rows=rows, every=every).split(";"):
                seed.execute(statement)  # type: ignore[call-overload]
            for _ in range(3):  # a VACUUM sometimes leaves pages not all-visible: every copy starts fully vacuumed
                pages = seed.execute("SELECT relpages, relallvisible FROM pg_class "
                                     "WHERE relname = 'cookie_events'").fetchone()
                if pages is None or pages[1] >= pages[0]:
                    break
                seed.execute("VACUUM cookie_events")
        seconds = time.perf_counter() - started
        size = self.admin.execute("SELECT pg_size_pretty(pg_database_size(%s))", (name,)).fetchone()
        assert size is not None
        print(f"seeded {name}: {rows:,} rows, {rows // every:,} expired, {size[0]}, in {seconds:.0f} s", flush=True)
        return seconds

    def copy(self, seed: str, name: str) -> str:
        """A fresh copy of `seed`, read once so every contender starts from the same cache state."""
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{seed}"{self.strategy}')
        with psycopg.connect(self.db(name)) as warm:
            warm.execute("SELECT count(*) FROM cookie_events").fetchone()
        return self.db(name)

    def drop(self, name: str) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    """A config in a fresh folder of its own (state, audit log), so no run inherits another's state."""
    folder = Path(tempfile.mkdtemp(prefix=f"{rule}-{record_ids}-", dir=work))
    config = folder / "retention.toml"
    config.write_text(f"""
[job]
state_dir = "{folder}/state"
batch_size = {BATCH}
[audit]
dir = "{folder}/audit"
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


@dataclass
class Timing:
    seconds: float
    rss_mb: float = 0.0


def contend(server: Server, seed: str, contender: str, rule: str, record_ids: str, expired: int) -> Timing:
    """One contender on its own fresh copy of `seed`, checked afterwards (every expired row done), then dropped."""
    name = f"{seed}_{contender}"
    url = server.copy(seed, name)
    try:
        if contender == "hand":
            seconds, changed = hand_written(url, HAND[rule])
            assert changed == expired, (changed, expired)
            timing = Timing(seconds)
        else:
            config = write_config(url, server.work, rule, record_ids)
            try:
                timing = Timing(tool_in_process(config, NOW)) if contender == "inproc" \
                    else Timing(*tool_cli(config, NOW))
            finally:
                shutil.rmtree(config.parent, ignore_errors=True)  # sidecars of hashed ids run to tens of MB
        left = expired_left(url, rule)
        assert left == 0, f"{contender}: {left} expired rows left"
        return timing
    finally:
        server.drop(name)


def rotated(items: Sequence[str], run: int) -> list[str]:
    """The contenders in a different order each run, so none always goes first (or last) on a drifting machine."""
    shift = run % len(items)
    return list(items[shift:]) + list(items[:shift])


def span(values: Sequence[float], digits: int = 2, unit: str = "") -> str:
    low, high = min(values), max(values)
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:.{digits}f}{unit}"
    return f"{low:.{digits}f}–{high:.{digits}f}{unit}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f}"


def disturbed(label: str, hand: Sequence[float]) -> None:
    if len(hand) > 1 and max(hand) > 2 * min(hand):
        print(f"  !! {label}: hand-written times vary by more than 2x ({span(hand)} s): the machine was busy",
              flush=True)


def warm_up(server: Server) -> None:
    """One unmeasured in-process run, so the first measured one does not pay the one-off costs (imports, caches)."""
    server.seed("warmup", 20_000, 2)
    for rule in RULES:
        contend(server, "warmup", "inproc", rule, "hashed", 10_000)
    server.drop("warmup")


def bulk(server: Server, rows: int, runs: int) -> None:
    """Scenario 1: `rows` rows, half expired; delete and anonymize, record_ids none and hashed."""
    print(f"\n== {rows:,} rows, half expired; batch {BATCH:,}; {runs} run(s), each contender on its own copy ==")
    server.seed("bulk", rows, 2)
    expired = rows // 2
    scenarios = [(rule, ids) for rule in ("delete", "anonymize") for ids in ("none", "hashed")]
    results: dict[tuple[str, str], dict[str, list[Timing]]] = {s: {c: [] for c in CONTENDERS} for s in scenarios}
    header = (f"{'scenario':<18} {'hand-written':>12} {'in-process':>10} {'ratio':>6} {'command':>8} {'ratio':>6} "
              f"{'peak RSS':>9}")
    for run in range(runs):
        print(f"\nrun {run + 1}/{runs} ({load()})\n{header}", flush=True)
        for rule, ids in scenarios:
            timings = {c: contend(server, "bulk", c, rule, ids, expired) for c in rotated(CONTENDERS, run)}
            for contender, timing in timings.items():
                results[(rule, ids)][contender].append(timing)
            hand, inproc, cli = (timings[c] for c in CONTENDERS)
            print(f"{rule + ', ' + ids:<18} {hand.seconds:>11.2f}s {inproc.seconds:>9.2f}s "
                  f"{inproc.seconds / hand.seconds:>6.2f} {cli.seconds:>7.2f}s {cli.seconds / hand.seconds:>6.2f} "
                  f"{cli.rss_mb:>7.0f}MB", flush=True)
    print(f"\nsummary, min–max over {runs} run(s); ratio: within each run; best: fastest tool / fastest hand-written "
          "(aims: none ≤ 1.2, hashed ≤ 1.5)")
    print("| scenario | hand-written | the run in-process | ratio | best | `retention run` command | ratio | best "
          "| peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (rule, ids), by in results.items():
        hand = [t.seconds for t in by["hand"]]
        inproc = [t.seconds for t in by["inproc"]]
        cli = [t.seconds for t in by["cli"]]
        print(f"| {rule}, `record_ids = \"{ids}\"` | {span(hand, unit=' s')} | {span(inproc, unit=' s')} "
              f"| {span([i / h for i, h in zip(inproc, hand, strict=True)])} | {min(inproc) / min(hand):.2f} "
              f"| {span(cli, unit=' s')} | {span([c / h for c, h in zip(cli, hand, strict=True)])} "
              f"| {min(cli) / min(hand):.2f} | {span([t.rss_mb for t in by['cli']], 0, ' MB')} |")
    for (rule, ids), by in results.items():
        disturbed(f"{rule}, {ids}", [t.seconds for t in by["hand"]])
    server.drop("bulk")


def steady(server: Server, runs: int) -> None:
    """Scenario 2: the nightly run, STEADY_EXPIRED expired rows, in a small and in a large table."""
    small, large = STEADY_SIZES
    print(f"\n== nightly steady state: {STEADY_EXPIRED:,} expired rows in {small:,} and in {large:,} rows; "
          f"delete, record_ids \"hashed\"; {runs} run(s) ==")
    seeds = {size: f"steady_{size // 1_000_000}m" for size in STEADY_SIZES}
    for size, name in seeds.items():
        server.seed(name, size, size // STEADY_EXPIRED)
    results: dict[int, dict[str, list[Timing]]] = {size: {c: [] for c in CONTENDERS} for size in STEADY_SIZES}
    for run in range(runs):
        print(f"\nrun {run + 1}/{runs} ({load()})")
        print(f"{'rows':>10} {'hand-written':>12} {'in-process':>10} {'command':>8} {'peak RSS':>9}", flush=True)
        sizes = STEADY_SIZES if run % 2 == 0 else STEADY_SIZES[::-1]
        for size in sizes:
            timings = {c: contend(server, seeds[size], c, "delete", "hashed", STEADY_EXPIRED)
                       for c in rotated(CONTENDERS, run)}
            for contender, timing in timings.items():
                results[size][contender].append(timing)
            print(f"{size:>10,} {timings['hand'].seconds:>11.3f}s {timings['inproc'].seconds:>9.3f}s "
                  f"{timings['cli'].seconds:>7.3f}s {timings['cli'].rss_mb:>7.0f}MB", flush=True)
    print(f"\nsummary, min–max over {runs} run(s); growth: time at {large:,} / time at {small:,} within each run; "
          "best: fastest / fastest (aim: the tool ≤ x1.2, hand-written flat)")
    print(f"| contender | {small:,} rows | {large:,} rows | growth | best |")
    print("|---|---|---|---|---|")
    for contender, label in (("hand", "hand-written DELETE loop"), ("inproc", "the run in-process"),
                             ("cli", "`retention run` command")):
        at_small = [t.seconds for t in results[small][contender]]
        at_large = [t.seconds for t in results[large][contender]]
        growth = [big / little for big, little in zip(at_large, at_small, strict=True)]
        print(f"| {label} | {span(at_small, 3, ' s')} | {span(at_large, 3, ' s')} | x{span(growth)} "
              f"| x{min(at_large) / min(at_small):.2f} |")
    for size in STEADY_SIZES:
        disturbed(f"{size:,} rows", [t.seconds for t in results[size]["hand"]])
    for name in seeds.values():
        server.drop(name)


def rss(server: Server, runs: int) -> None:
    """Scenario 3: RSS_ROWS rows, half expired, record_ids hashed: the command's peak RSS (no hand-written run)."""
    expired = RSS_ROWS // 2
    print(f"\n== memory: {RSS_ROWS:,} rows, {expired:,} expired; delete, record_ids \"hashed\"; the command only; "
          f"{runs} run(s) (aim: peak RSS < 200 MB) ==")
    server.seed("rss", RSS_ROWS, 2)
    timings: list[Timing] = []
    for run in range(runs):
        if runs == 1:  # one run needs no copy: the seed itself is used up
            config = write_config(server.db("rss"), server.work, "delete", "hashed")
            try:
                timings.append(Timing(*tool_cli(config, NOW)))
            finally:
                shutil.rmtree(config.parent, ignore_errors=True)
            left = expired_left(server.db("rss"), "delete")
            assert left == 0, f"{left} expired rows left"
        else:
            timings.append(contend(server, "rss", "cli", "delete", "hashed", expired))
        print(f"run {run + 1}/{runs} ({load()}): the command {timings[-1].seconds:.1f} s, "
              f"peak RSS {timings[-1].rss_mb:.0f} MB", flush=True)
    print(f"\nsummary: the command {span([t.seconds for t in timings], 1, ' s')}, "
          f"peak RSS {span([t.rss_mb for t in timings], 0, ' MB')}")
    server.drop("rss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the default scenario (half expired)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement, on fresh copies")
    parser.add_argument("--steady", action="store_true", help="the nightly steady state, 1M against 8M rows")
    parser.add_argument("--rss", action="store_true", help="the command's peak RSS on 10M rows, 5M expired")
    args = parser.parse_args()
    configure("console", -1)
    work = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    generate_keypair(work / "private.pem", work / "public.pem")
    try:
        with postgres_server() as url, psycopg.connect(url, autocommit=True) as admin:
            version, number = admin.execute("SELECT current_setting('server_version'), "
                                            "current_setting('server_version_num')::int").fetchone()  # type: ignore[misc]
            server = Server(url, admin, work, " STRATEGY FILE_COPY" if number >= 150000 else "")
            free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
            print(f"PostgreSQL {version}, {os.cpu_count()} CPUs, {load()}; {free:.0f} GB free in "
                  f"{tempfile.gettempdir()}")
            if free < (8 if args.steady or args.rss else 3):
                print("!! little free disk: the seeds and one copy at a time need about 2.5 GB (--steady), "
                      "1.5 GB (--rss), 1 GB (2M rows)")
            print("hand-written: DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ... LIMIT 5000)) (or the matching "
                  "UPDATE) in a loop;\nthe command includes interpreter start-up and imports (about 0.5 s)")
            if args.steady or not args.rss:
                warm_up(server)
            if not (args.steady or args.rss):
                bulk(server, args.rows, args.runs)
            if args.steady:
                steady(server, args.runs)
            if args.rss:
                rss(server, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
