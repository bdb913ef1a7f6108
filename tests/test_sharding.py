"""A large rule split into shards that run side by side: judged whole first, never overlapping, reported once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from retention import run as coordinator
from retention.config import load_config, with_executor
from retention.settings import Environment
from tests.conftest import NOW
from tests.helpers import SESSIONS_RULE, Sandbox, make_sandbox
from tests.stores import PostgresStore

RULE = """
[[rules]]
name = "cookies"
connector = "app"
table = "cookies"
expire = { after = "24 months", field = "collected_at" }
action = "delete"
max_fraction = MAX_FRACTION
"""


def _box(tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch, *, rows: int = 400,
         workers: int = 4, max_fraction: str = "1.0", key: str = "bigint") -> Sandbox:
    """`rows` cookies (every other one expired, ids spread over the whole key range), batch size 10."""
    pg_store.execute(f"CREATE TABLE cookies (id {key} PRIMARY KEY, collected_at timestamptz)")
    value = "g" if key == "bigint" else "'visitor-' || lpad(g::text, 6, '0')"
    pg_store.execute(f"INSERT INTO cookies SELECT {value}, CAST(:now AS timestamptz) - CASE WHEN g % 2 = 0 "
                     "THEN interval '800 days' ELSE interval '1 day' END FROM generate_series(1, :rows) AS g",
                     {"now": NOW, "rows": rows})
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(RULE.replace("MAX_FRACTION", max_fraction), clients=False)
    box.config.write_text(box.config.read_text().replace(
        "batch_size = 2\n", f'batch_size = 10\nexecutor = "threads"\nworkers = {workers}\n'))
    for name, value in box.env().items():
        monkeypatch.setenv(name, value)
    return box


def _events(report: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(str(report.audit_file)).read_text().splitlines()]


@pytest.mark.parametrize("key", ["bigint", "text"])
def test_a_large_rule_runs_as_shards_that_cover_every_record_once(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    box = _box(tmp_path, pg_store, monkeypatch, key=key)
    report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW)
    assert 0 == report.exit_code, report.to_json()
    assert 200 == pg_store.scalar("SELECT count(*) FROM cookies")
    assert 0 == pg_store.scalar("SELECT count(*) FROM cookies WHERE collected_at < :cutoff",
                                cutoff=NOW.replace(year=NOW.year - 2))
    [rule] = report.rules  # reported once, its shards added up
    assert ("cookies", 200, 200, "ok") == (rule.name, rule.matched, rule.changed, rule.status)
    events = _events(report)
    shards = [e["shard"] for e in events if e["event"] == "rule_started"]
    assert ["1/4", "2/4", "3/4", "4/4"] == sorted(shards)
    finished = [e for e in events if e["event"] == "rule_finished"]
    assert 200 == sum(e["changed"] for e in finished) == sum(e["count"] for e in events
                                                             if e["event"] == "batch_applied")
    assert all(40 <= e["matched"] <= 60 for e in finished), [e["matched"] for e in finished]  # even shards
    ids = [line for line in Path(str(report.audit_file).replace(".jsonl", ".ids")).read_text().splitlines()]
    assert 200 == len(set(ids)) == len(ids)  # every record named once: shards never overlap
    assert 0 == box.cli("audit", "verify").exit_code


def test_thresholds_are_judged_on_the_whole_rule_before_any_shard_runs(
        tmp_path: Path, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half the table is expired, max_fraction 0.4: each quarter alone would pass, the whole rule must not."""
    box = _box(tmp_path, pg_store, monkeypatch, max_fraction="0.4")
    report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW)
    assert 3 == report.exit_code
    assert 400 == pg_store.scalar("SELECT count(*) FROM cookies")
    events = _events(report)
    assert [None] == [e.get("shard") for e in events if e["event"] == "rule_started"]
    assert 1 == len([e for e in events if e["event"] == "rule_skipped"])


@pytest.mark.parametrize(("executor", "rows"), [("serial", 400), ("threads", 15)])
def test_small_rules_and_serial_runs_stay_whole(tmp_path: Path, pg_store: PostgresStore,
                                                monkeypatch: pytest.MonkeyPatch, executor: str, rows: int) -> None:
    box = _box(tmp_path, pg_store, monkeypatch, rows=rows)
    report = coordinator.run(with_executor(load_config(box.config), executor), Environment(), NOW, lambda: NOW)
    assert 0 == report.exit_code
    assert [None] == [e.get("shard") for e in _events(report) if e["event"] == "rule_started"]


@pytest.mark.parametrize("versioned", [False, True])
def test_an_s3_rule_runs_as_shards_of_folders(tmp_path: Path, moto_url: str, monkeypatch: pytest.MonkeyPatch,
                                              versioned: bool) -> None:
    """Folders under the prefix make the shards (one cheap listing); keys beside the folders belong to a shard too;
    every old object goes once, fresh ones stay; on a versioned bucket no shard touches another's delete markers."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_s3 import OLD, RULE, S3Sandbox

    box = S3Sandbox(tmp_path / "s3", moto_url, versioned=versioned)
    old = [f"uploads/p{folder}/{n}" for folder in range(8) for n in range(5)] + ["uploads/loose-a", "uploads/z"]
    fresh = [f"uploads/p{folder}/fresh" for folder in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: box.put(key, collected_at=OLD), old))
        list(pool.map(lambda key: box.put(key, collected_at=NOW.isoformat()), fresh))
    box.write(RULE.format(bucket=box.bucket, field="metadata:collected-at"))
    config = box.root / "retention.toml"
    config.write_text(config.read_text().replace("batch_size = 2\n", 'batch_size = 2\nexecutor = "threads"\n'))
    monkeypatch.setenv("RETENTION_PSEUDONYM_KEY", "k" * 32)
    report = coordinator.run(load_config(config), Environment(), NOW, lambda: NOW)
    assert 0 == report.exit_code, report.to_json()
    assert (len(old), len(old)) == (report.rules[0].matched, report.rules[0].changed)
    assert sorted(fresh) == (box.versions()[0] if versioned else box.keys())
    if versioned:
        assert [] == box.versions()[1]  # each shard swept its own orphan delete markers, and only those
    events = _events(report)
    assert ["1/4", "2/4", "3/4", "4/4"] == sorted(e["shard"] for e in events if e["event"] == "rule_started")
    ids = Path(str(report.audit_file).replace(".jsonl", ".ids")).read_text().splitlines()
    assert len(old) == len(set(ids)) == len(ids)


@pytest.mark.parametrize("ids", ["int", "objectid", "mixed"])
def test_a_mongodb_rule_runs_as_shards_of_id_ranges(tmp_path: Path, pg_store: PostgresStore,
                                                    mongo_store: Any, monkeypatch: pytest.MonkeyPatch,
                                                    ids: str) -> None:
    """`_id` ranges, only where every matching `_id` is of one scalar type (else the rule stays whole): every
    expired document goes once, fresh ones stay."""
    from bson import ObjectId

    def make_id(n: int) -> Any:
        if ids == "objectid":
            return ObjectId()
        return str(n) if ids == "mixed" and n % 3 == 0 else n

    old = [{"_id": make_id(n), "started_at": NOW.replace(year=NOW.year - 3)} for n in range(120)]
    fresh = [{"_id": make_id(n), "started_at": NOW} for n in range(120, 140)]
    mongo_store.database["sessions"].insert_many(old + fresh)
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(SESSIONS_RULE, clients=False, extra=f'[connectors.events]\ntype = "mongodb"\nurl = "{mongo_store.url}"\n'
                       f'database = "{mongo_store.database.name}"\n')
    box.config.write_text(box.config.read_text().replace(
        "batch_size = 2\n", 'batch_size = 10\nexecutor = "threads"\nworkers = 3\n'))
    for name, value in box.env().items():
        monkeypatch.setenv(name, value)
    report = coordinator.run(load_config(box.config), Environment(), NOW, lambda: NOW)
    assert 0 == report.exit_code, report.to_json()
    assert (120, 120) == (report.rules[0].matched, report.rules[0].changed)
    assert 20 == mongo_store.database["sessions"].count_documents({})
    shards = sorted(e.get("shard") or "" for e in _events(report) if e["event"] == "rule_started")
    assert (["1/3", "2/3", "3/3"] if ids != "mixed" else [""]) == shards
