"""Rule semantics on every SQL store (PostgreSQL and SQLite): the same scenarios, the same outcomes."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from retention import transforms
from retention.secrets import TRANSFORM_LABEL, derive
from tests.conftest import NOW
from tests.helpers import PSEUDONYM_KEY, Sandbox, audit_files, make_sandbox
from tests.stores import Store

COOKIE_RULE = """
[[rules]]
name = "cookies"
policy = "s.4"
connector = "app"
table = "cookie_events"
expire = { after = "24 months", field = "collected_at" }
action = "delete"
max_fraction = 1.0
"""

END_USER_RULE = """
[[rules]]
name = "end-users"
policy = "s.5"
connector = "app"
table = "end_users"
expire = { client_field = "client_id", grace = "30 days" }
action = "anonymize"
marker = "anonymized_at"
transforms = { email = "redact", full_name = { redact = "X" }, phone = { mask = 4 }, last_ip = "truncate_ip", \
birth_date = { generalize_date = "year" } }
max_fraction = 1.0
"""


@pytest.fixture
def sandbox(tmp_path: Path, store: Store) -> Sandbox:
    store.standard_schema()
    return make_sandbox(tmp_path / "sandbox", store)


def add_cookies(store: Store, *ages: timedelta | None) -> None:
    store.execute("INSERT INTO cookie_events (id, visitor_id, collected_at, ip) VALUES (:id, 'v', :at, '192.0.2.1')",
                  [{"id": i, "at": store.ts(NOW - age) if age is not None else None} for i, age in enumerate(ages)])


def plan(sandbox: Sandbox, *args: str) -> dict:
    result = sandbox.cli("plan", "--now", "2026-11-29T03:00:00Z", "--format", "json", *args)
    assert result.exit_code in (0, 3), result.output + result.stderr
    return {rule["name"]: rule for rule in json.loads(result.stdout)["rules"]}


def run(sandbox: Sandbox, *args: str, expect: int = 0) -> dict:
    result = sandbox.cli("run", "--now", "2026-11-29T03:00:00Z", "--format", "json", *args)
    assert result.exit_code == expect, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_age_rule_deletes_only_expired_records(sandbox: Sandbox, store: Store) -> None:
    """Records older than 24 months go; newer ones and those without a timestamp stay."""
    add_cookies(store, timedelta(days=800), timedelta(days=731), timedelta(days=700), None)
    sandbox.write(COOKIE_RULE)
    planned = plan(sandbox)["cookies"]
    assert (2, 0, 1, "2024-11-29T03:00:00Z") == (planned["matched"], planned["held"], planned["unknown_age"],
                                                 planned["cutoff"])
    report = run(sandbox)
    assert 2 == report["rules"][0]["changed"]
    assert [(2,), (3,)] == store.query("SELECT id FROM cookie_events ORDER BY id")


def test_months_clamp_to_the_end_of_the_month(sandbox: Sandbox, store: Store) -> None:
    """As of 2028-02-29, "24 months" before is 2026-02-28: a record just before it expires, one at it does not."""
    store.execute("INSERT INTO cookie_events (id, collected_at) VALUES (1, :a), (2, :b)",
                  {"a": store.ts(NOW.replace(year=2026, month=2, day=27, hour=23, minute=59)),
                   "b": store.ts(NOW.replace(year=2026, month=2, day=28, hour=0, minute=0))})
    sandbox.write(COOKIE_RULE)
    result = sandbox.cli("plan", "--now", "2028-02-29T00:00:00Z", "--format", "json")
    rule = json.loads(result.stdout)["rules"][0]
    assert ("2026-02-28T00:00:00Z", 1) == (rule["cutoff"], rule["matched"])


def test_offsets_are_honoured(sandbox: Sandbox, store: Store) -> None:
    """04:30+02:00 is 02:30Z, before a 03:00Z cutoff; 03:30Z is after it."""
    if store.type_name == "postgres":
        store.execute("INSERT INTO cookie_events (id, collected_at) VALUES "
                      "(1, '2024-11-29T04:30:00+02:00'), (2, '2024-11-29T03:30:00+00:00')")
    else:
        store.execute("INSERT INTO cookie_events (id, collected_at) VALUES "
                      "(1, '2024-11-29T04:30:00+02:00'), (2, '2024-11-29T03:30:00Z')")
    sandbox.write(COOKIE_RULE)
    run(sandbox)
    assert [(2,)] == store.query("SELECT id FROM cookie_events")


def test_naive_timestamps_are_read_as_utc(sandbox: Sandbox, store: Store) -> None:
    """A `timestamp without time zone` is UTC, whatever the session or database time zone says."""
    store.execute("CREATE TABLE visits (id INTEGER PRIMARY KEY, seen_at TIMESTAMP)")
    store.execute("INSERT INTO visits VALUES (1, '2024-11-29 02:59:00'), (2, '2024-11-29 03:01:00')")
    if store.type_name == "postgres":
        database = store.url.rsplit("/", 1)[1]
        store.execute(f"ALTER DATABASE \"{database}\" SET timezone = 'Pacific/Kiritimati'")
    sandbox.write(COOKIE_RULE.replace("cookie_events", "visits").replace("collected_at", "seen_at"))
    run(sandbox)
    assert [(2,)] == store.query("SELECT id FROM visits")


def test_date_columns_expire_by_their_midnight(sandbox: Sandbox, store: Store) -> None:
    """A DATE is the UTC midnight that starts it: 2024-11-29 is before a 03:00Z cutoff that day, 11-30 is not."""
    store.execute("CREATE TABLE signups (id INTEGER PRIMARY KEY, day DATE)")
    store.execute("INSERT INTO signups VALUES (1, '2024-11-29'), (2, '2024-11-30'), (3, NULL)")
    sandbox.write(COOKIE_RULE.replace("cookie_events", "signups").replace("collected_at", "day"))
    planned = plan(sandbox)["cookies"]
    assert (1, 1) == (planned["matched"], planned["unknown_age"])


def seed_clients(store: Store) -> None:
    clients = [("c-active", "active", None), ("c-gone", "closed", 60), ("c-recent", "closed", 10),
               ("c-asked", "deletion_requested", 40), ("c-odd", "paused", None), ("c-nodate", "closed", None)]
    store.execute("INSERT INTO clients (id, status, closed_at) VALUES (:id, :status, :at)",
                  [{"id": c, "status": s, "at": store.ts(NOW - timedelta(days=d)) if d else None}
                   for c, s, d in clients])
    owners = ["c-active", "c-gone", "c-gone", "c-recent", "c-asked", "c-odd", "c-nodate", "c-missing", None]
    store.execute("INSERT INTO end_users (id, client_id, email, full_name, phone, last_ip, birth_date) "
                  "VALUES (:id, :client, :email, 'Ada Lovelace', '+44 20 7946 0958', '203.0.113.77', '1990-06-15')",
                  [{"id": i, "client": c, "email": f"user{i}@example.org"} for i, c in enumerate(owners)])


def test_client_lifetime_rule_follows_the_registry(sandbox: Sandbox, store: Store) -> None:
    """Ended clients past their grace expire; active, recent, unknown-state and unregistered ones do not."""
    seed_clients(store)
    sandbox.write(END_USER_RULE)
    planned = plan(sandbox)["end-users"]
    # matched: c-gone x2 and c-asked; unknown: c-odd, c-nodate, c-missing and the NULL client
    assert (3, 0, 4, None) == (planned["matched"], planned["held"], planned["unknown_age"], planned["cutoff"])
    run(sandbox)
    changed = store.query("SELECT id FROM end_users WHERE anonymized_at IS NOT NULL ORDER BY id")
    assert [(1,), (2,), (4,)] == changed


def test_anonymize_applies_every_transform_in_the_store(sandbox: Sandbox, store: Store) -> None:
    """redact, mask, truncate_ip and generalize_date give the documented values; untouched fields stay."""
    seed_clients(store)
    sandbox.write(END_USER_RULE)
    run(sandbox)
    row = store.query("SELECT email, full_name, phone, last_ip, birth_date, client_id FROM end_users WHERE id = 1")[0]
    assert ("[redacted]", "X", "************0958", "203.0.113.0", "1990-01-01", "c-gone") == (
        row[0], row[1], row[2], str(row[3]), str(row[4]), row[5])


def test_processed_records_are_never_selected_again(sandbox: Sandbox, store: Store) -> None:
    """After an anonymize run, the marker keeps the same records out of the next plan and run."""
    seed_clients(store)
    sandbox.write(END_USER_RULE)
    run(sandbox)
    assert 0 == plan(sandbox)["end-users"]["matched"]
    assert 0 == run(sandbox)["rules"][0]["changed"]


def test_deidentify_hmac_gives_consistent_keyed_pseudonyms(sandbox: Sandbox, store: Store) -> None:
    """hmac replaces a value with HMAC-SHA256 under the derived transform key, the same as the reference."""
    seed_clients(store)
    rule = END_USER_RULE.replace('"anonymize"', '"deidentify"')
    rule = rule[: rule.index("transforms =")] + 'transforms = { email = "hmac", full_name = "hmac" }\n'
    sandbox.write(rule)
    run(sandbox)
    key = derive(PSEUDONYM_KEY, TRANSFORM_LABEL)
    rows = store.query("SELECT email, full_name FROM end_users WHERE id IN (1, 2) ORDER BY id")
    assert [(transforms.pseudonym(key, "user1@example.org"), transforms.pseudonym(key, "Ada Lovelace")),
            (transforms.pseudonym(key, "user2@example.org"), transforms.pseudonym(key, "Ada Lovelace"))] == rows


def test_client_hold_keeps_a_clients_records(sandbox: Sandbox, store: Store) -> None:
    """A legal hold on a client: its expired records are counted as held and never changed."""
    seed_clients(store)
    sandbox.write(END_USER_RULE, extra='[[holds]]\nname = "lit-1"\nclient_ids = ["c-gone"]\n')
    planned = plan(sandbox)["end-users"]
    assert (1, 2) == (planned["matched"], planned["held"])
    run(sandbox)
    assert [(4,)] == store.query("SELECT id FROM end_users WHERE anonymized_at IS NOT NULL")


def test_rule_hold_keeps_the_whole_rule_until_it_lapses(sandbox: Sandbox, store: Store) -> None:
    """A hold on a rule keeps all its records; once its `until` date has passed it no longer applies."""
    add_cookies(store, timedelta(days=800), timedelta(days=900))
    hold = '[[holds]]\nname = "audit-2026"\nrules = ["cookies"]\nuntil = "{until}"\n'
    sandbox.write(COOKIE_RULE, clients=False, extra=hold.format(until="2026-11-29"))
    assert (0, 2) == (plan(sandbox)["cookies"]["matched"], plan(sandbox)["cookies"]["held"])
    sandbox.write(COOKIE_RULE, clients=False, extra=hold.format(until="2026-11-28"))
    assert (2, 0) == (plan(sandbox)["cookies"]["matched"], plan(sandbox)["cookies"]["held"])


def test_fraction_threshold_skips_the_rule_unchanged(sandbox: Sandbox, store: Store) -> None:
    """More than max_fraction of the target would change: the rule is skipped, nothing changes, exit 3."""
    add_cookies(store, timedelta(days=800), timedelta(days=800), timedelta(days=800), timedelta(days=1))
    sandbox.write(COOKIE_RULE.replace("max_fraction = 1.0", "max_fraction = 0.5"))
    report = run(sandbox, expect=3)
    assert ("over_threshold", 0, 3) == (report["rules"][0]["status"], report["rules"][0]["changed"],
                                        report["rules"][0]["matched"])
    assert 4 == store.scalar("SELECT count(*) FROM cookie_events")
    events = [json.loads(line)["event"] for line in audit_files(sandbox)[-1].read_text().splitlines()]
    assert "rule_skipped" in events and "batch_applied" not in events


def test_record_threshold_skips_the_rule(sandbox: Sandbox, store: Store) -> None:
    """max_records is an absolute cap on what one run may change per rule."""
    add_cookies(store, timedelta(days=800), timedelta(days=800))
    sandbox.write(COOKIE_RULE.replace("max_fraction = 1.0", "max_records = 1"))
    assert "over_threshold" == plan(sandbox)["cookies"]["status"]
    assert 3 == sandbox.cli("plan", "--now", "2026-11-29T03:00:00Z").exit_code


def test_plan_changes_nothing_byte_for_byte(sandbox: Sandbox, store: Store) -> None:
    """`plan` reads only: the database is byte-for-byte the same afterwards."""
    seed_clients(store)
    add_cookies(store, timedelta(days=800), timedelta(days=10))
    sandbox.write(COOKIE_RULE + END_USER_RULE)
    before = store.fingerprint()
    assert 3 == plan(sandbox)["end-users"]["matched"]
    assert before == store.fingerprint()


def test_dry_run_changes_nothing_and_is_audited(sandbox: Sandbox, store: Store) -> None:
    """`run --dry-run` counts and writes a signed audit log, and changes nothing."""
    seed_clients(store)
    add_cookies(store, timedelta(days=800))
    sandbox.write(COOKIE_RULE + END_USER_RULE)
    before = store.fingerprint()
    report = run(sandbox, "--dry-run")
    assert before == store.fingerprint()
    assert [1, 3] == [rule["matched"] for rule in report["rules"]]
    assert [0, 0] == [rule["changed"] for rule in report["rules"]]
    first = json.loads(Path(report["audit_file"]).read_text().splitlines()[0])
    assert first["dry_run"] is True


def test_batches_cover_every_record(sandbox: Sandbox, store: Store) -> None:
    """With batch_size = 2, seven expired records take four batches, each one audit event."""
    add_cookies(store, *[timedelta(days=800)] * 7, timedelta(days=1))
    sandbox.write(COOKIE_RULE)
    report = run(sandbox)
    events = [json.loads(line) for line in Path(report["audit_file"]).read_text().splitlines()]
    assert [2, 2, 2, 1] == [e["count"] for e in events if e["event"] == "batch_applied"]
    assert 1 == store.scalar("SELECT count(*) FROM cookie_events")


def test_sidecar_names_changed_and_held_records_by_the_reference_keyed_hash(sandbox: Sandbox, store: Store) -> None:
    """The store computes record-id hashes; they equal HMAC-SHA256 under the derived record-id key."""
    from retention.secrets import RECORD_ID_LABEL

    seed_clients(store)
    sandbox.write(END_USER_RULE, extra='[[holds]]\nname = "lit-1"\nclient_ids = ["c-asked"]\n')
    report = run(sandbox)
    key = derive(PSEUDONYM_KEY, RECORD_ID_LABEL)
    sidecar = Path(report["audit_file"].replace(".jsonl", ".ids")).read_text().splitlines()
    assert sorted([f"changed end-users {transforms.pseudonym(key, i)}" for i in (1, 2)]
                  + [f"held end-users {transforms.pseudonym(key, 4)}"]) == sorted(sidecar)
