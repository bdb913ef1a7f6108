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
import resource
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
    postmaster: int  # its process id, for the CPU time of the server
    strategy: str = ""  # PostgreSQL 15+: copy the files, not page by page through the WAL (faster for large copies)

    def cpu(self) -> float:
        """CPU seconds of the whole server: the postmaster's own and reaped children's, and its live children's."""
        ticks = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile: its time is in the postmaster's children's time
            if int(entry.name) == self.postmaster:
                ticks += sum(int(field) for field in fields[11:15])  # utime, stime, cutime, cstime
            elif int(fields[1]) == self.postmaster:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

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
    """Wall seconds, and the CPU seconds spent by the contender's own process and by PostgreSQL meanwhile."""

    seconds: float
    rss_mb: float = 0.0
    client_cpu: float = 0.0
    db_cpu: float = 0.0

    @property
    def cpu(self) -> float:
        return self.client_cpu + self.db_cpu


def own_cpu(children: bool = False) -> float:
    """CPU seconds of this process (every thread), or of its finished children (the `retention run` commands)."""
    if not children:
        return time.process_time()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def contend(server: Server, seed: str, contender: str, rule: str, record_ids: str, expired: int, *,
            copy: bool = True) -> Timing:
    """One contender on its own fresh copy of `seed` (or on `seed` itself), checked afterwards, then dropped.

    Besides wall time, the CPU seconds of the contender's process and of the PostgreSQL server (every backend and
    background process, autovacuum included): on a machine other jobs share, CPU seconds move far less than wall time.
    """
    name = f"{seed}_{contender}" if copy else seed
    url = server.copy(seed, name) if copy else server.db(seed)
    try:
        config = write_config(url, server.work, rule, record_ids)
        try:
            client, db = own_cpu(contender == "cli"), server.cpu()
            if contender == "hand":
                seconds, changed = hand_written(url, HAND[rule])
                assert changed == expired, (changed, expired)
                timing = Timing(seconds)
            elif contender == "inproc":
                timing = Timing(tool_in_process(config, NOW))
            else:
                timing = Timing(*tool_cli(config, NOW))
            time.sleep(0.2)  # the contender's backends have exited and been reaped: their CPU is counted
            timing.client_cpu, timing.db_cpu = own_cpu(contender == "cli") - client, server.cpu() - db
        finally:
            shutil.rmtree(config.parent, ignore_errors=True)  # sidecars of hashed ids run to tens of MB
        left = expired_left(url, rule)
        assert left == 0, f"{contender}: {left} expired rows left"
        return timing
    finally:
        if copy:
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


def ratios(tool: Sequence[float], hand: Sequence[float]) -> str:
    """Within each run, and (after the bar) fastest against fastest."""
    return f"{span([t / h for t, h in zip(tool, hand, strict=True)])} ({min(tool) / min(hand):.2f})"


def cpu_cell(timings: Sequence[Timing], client: str) -> str:
    return (f"{span([t.cpu for t in timings], unit=' s')} ({client} {span([t.client_cpu for t in timings])}, "
            f"PostgreSQL {span([t.db_cpu for t in timings])})")


def bulk(server: Server, rows: int, runs: int) -> None:
    """Scenario 1: `rows` rows, half expired; delete and anonymize, record_ids none and hashed."""
    print(f"\n== {rows:,} rows, half expired; batch {BATCH:,}; {runs} run(s), each contender on its own copy ==")
    server.seed("bulk", rows, 2)
    expired = rows // 2
    scenarios = [(rule, ids) for rule in ("delete", "anonymize") for ids in ("none", "hashed")]
    results: dict[tuple[str, str], dict[str, list[Timing]]] = {s: {c: [] for c in CONTENDERS} for s in scenarios}
    header = (f"{'scenario':<18} {'hand-written':>12} {'in-process':>10} {'ratio':>6} {'command':>8} {'ratio':>6} "
              f"{'peak RSS':>9}   CPU s: {'hand':>5} {'in-pr.':>6} {'command':>7}")
    for run in range(runs):
        print(f"\nrun {run + 1}/{runs} ({load()})\n{header}", flush=True)
        for rule, ids in scenarios:
            timings = {c: contend(server, "bulk", c, rule, ids, expired) for c in rotated(CONTENDERS, run)}
            for contender, timing in timings.items():
                results[(rule, ids)][contender].append(timing)
            hand, inproc, cli = (timings[c] for c in CONTENDERS)
            print(f"{rule + ', ' + ids:<18} {hand.seconds:>11.2f}s {inproc.seconds:>9.2f}s "
                  f"{inproc.seconds / hand.seconds:>6.2f} {cli.seconds:>7.2f}s {cli.seconds / hand.seconds:>6.2f} "
                  f"{cli.rss_mb:>7.0f}MB   {'':>6} {hand.cpu:>5.2f} {inproc.cpu:>6.2f} {cli.cpu:>7.2f}", flush=True)
    print(f"\nsummary, min–max over {runs} run(s); ratios tool / hand-written within each run, and in brackets "
          "fastest / fastest (aims: none ≤ 1.2, hashed ≤ 1.5)")
    print("| scenario | hand-written | the run in-process | ratio | `retention run` command | ratio | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for (rule, ids), by in results.items():
        hand, inproc, cli = ([t.seconds for t in by[c]] for c in CONTENDERS)
        print(f"| {rule}, `record_ids = \"{ids}\"` | {span(hand, unit=' s')} | {span(inproc, unit=' s')} "
              f"| {ratios(inproc, hand)} | {span(cli, unit=' s')} | {ratios(cli, hand)} "
              f"| {span([t.rss_mb for t in by['cli']], 0, ' MB')} |")
    print("\nCPU seconds (the contender's process + the PostgreSQL server), min–max; ratios as above")
    print("| scenario | hand-written | the run in-process | ratio | `retention run` command | ratio |")
    print("|---|---|---|---|---|---|")
    for (rule, ids), by in results.items():
        hand, inproc, cli = ([t.cpu for t in by[c]] for c in CONTENDERS)
        print(f"| {rule}, `record_ids = \"{ids}\"` | {cpu_cell(by['hand'], 'client')} "
              f"| {cpu_cell(by['inproc'], 'Python')} | {ratios(inproc, hand)} | {cpu_cell(by['cli'], 'Python')} "
              f"| {ratios(cli, hand)} |")
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
        print(f"{'rows':>10} {'hand-written':>12} {'in-process':>10} {'command':>8} {'peak RSS':>9}   "
              f"CPU s: {'hand':>5} {'in-pr.':>6} {'command':>7}", flush=True)
        sizes = STEADY_SIZES if run % 2 == 0 else STEADY_SIZES[::-1]
        for size in sizes:
            timings = {c: contend(server, seeds[size], c, "delete", "hashed", STEADY_EXPIRED)
                       for c in rotated(CONTENDERS, run)}
            for contender, timing in timings.items():
                results[size][contender].append(timing)
            hand, inproc, cli = (timings[c] for c in CONTENDERS)
            print(f"{size:>10,} {hand.seconds:>11.3f}s {inproc.seconds:>9.3f}s {cli.seconds:>7.3f}s "
                  f"{cli.rss_mb:>7.0f}MB   {'':>6} {hand.cpu:>5.2f} {inproc.cpu:>6.2f} {cli.cpu:>7.2f}", flush=True)
    print(f"\nsummary, min–max over {runs} run(s); growth: at {large:,} rows / at {small:,} rows within each run, "
          "and in brackets fastest / fastest (aim: the tool ≤ x1.2, hand-written flat)")
    print(f"| contender | {small:,} rows | {large:,} rows | growth | CPU at {small:,} | CPU at {large:,} "
          "| CPU growth |")
    print("|---|---|---|---|---|---|---|")
    for contender, label in (("hand", "hand-written DELETE loop"), ("inproc", "the run in-process"),
                             ("cli", "`retention run` command")):
        at_small, at_large = results[small][contender], results[large][contender]
        wall_small, wall_large = [t.seconds for t in at_small], [t.seconds for t in at_large]
        cpu_small, cpu_large = [t.cpu for t in at_small], [t.cpu for t in at_large]
        print(f"| {label} | {span(wall_small, 3, ' s')} | {span(wall_large, 3, ' s')} "
              f"| x{ratios(wall_large, wall_small)} "
              f"| {span(cpu_small, unit=' s')} | {span(cpu_large, unit=' s')} | x{ratios(cpu_large, cpu_small)} |")
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
    for run in range(runs):  # one run needs no copy: the seed itself is used up
        timings.append(contend(server, "rss", "cli", "delete", "hashed", expired, copy=runs > 1))
        print(f"run {run + 1}/{runs} ({load()}): the command {timings[-1].seconds:.1f} s, "
              f"peak RSS {timings[-1].rss_mb:.0f} MB, CPU {timings[-1].client_cpu:.1f} s (PostgreSQL "
              f"{timings[-1].db_cpu:.1f} s)", flush=True)
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
            data = Path(str(admin.execute("SHOW data_directory").fetchone()[0]))  # type: ignore[index]
            postmaster = int((data / "postmaster.pid").read_text().split()[0])
            server = Server(url, admin, work, postmaster, " STRATEGY FILE_COPY" if number >= 150000 else "")
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
