"""Review round: failing tests for the backlog, audit find, request certificates, approved plans and per-client
retention. Each test names the defect it shows; none is marked xfail (the lead fixes the code)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from retention.connectors.sql import SqlConnector

from retention.errors import ConnectorError
from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import SESSIONS_RULE, Sandbox, audit_files, make_sandbox
from tests.stores import MongoStore, PostgresStore

NOW_TEXT = "2026-11-29T03:00:00Z"
SECOND_RULE = COOKIE_RULE.replace('name = "cookies"', 'name = "cookies-recent"').replace("24 months", "12 months")


def events_of(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit_files(sandbox)[-1].read_text().splitlines()]


# -- 1. backlog ------------------------------------------------------------------------------------------------------


def test_backlog_probe_does_not_fail_a_rule_over_an_infinite_timestamp(pg_store: PostgresStore, tmp_path: Path) -> None:
    """PostgreSQL's '-infinity' is a valid timestamptz, older than any cutoff: the rule matched and deleted it before
    the backlog was added. `_oldest` now reads the value into Python (psycopg cannot: "timestamp too small"), so the
    count fails and the whole rule -- plan and run -- ends in error, changing nothing, every night."""
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, timedelta(days=800), timedelta(days=1))
    pg_store.execute("INSERT INTO cookie_events (id, visitor_id, collected_at, ip) "
                     "VALUES (7, 'v', '-infinity', '192.0.2.1')")
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    sandbox.write(COOKIE_RULE, clients=False)
    planned = sandbox.cli("plan", "--now", NOW_TEXT, "--format", "json")
    assert 0 == planned.exit_code, planned.stdout + planned.stderr
    result = sandbox.cli("run", "--now", NOW_TEXT, "--format", "json")
    rule = json.loads(result.stdout)["rules"][0]
    assert (0, "ok", 2, 0) == (result.exit_code, rule["status"], rule["changed"], rule["remaining"]), rule


def test_oldest_expired_is_set_when_a_mongodb_array_sorts_first(mongo_store: MongoStore, tmp_path: Path) -> None:
    """`_oldest` sorts the matched documents by the age field and reads the first one's value; an array holding an
    old date sorts first (by its smallest element) and its value is no date, so oldest_expired comes out null while
    remaining is 2 -- and the metric's age reads 0, silencing a backlog alert."""
    mongo_store.database["sessions"].insert_many([
        {"_id": 1, "started_at": [NOW - timedelta(days=900)]},
        {"_id": 2, "started_at": NOW - timedelta(days=800)},
        {"_id": 3, "started_at": NOW - timedelta(days=1)}])
    sandbox = make_sandbox(tmp_path / "sandbox", mongo_store)
    sandbox.write(SESSIONS_RULE.replace('connector = "events"', 'connector = "app"'), clients=False)
    rule = json.loads(sandbox.cli("run", "--dry-run", "--now", NOW_TEXT, "--format", "json").stdout)["rules"][0]
    assert rule["remaining"] and rule["oldest_expired"] is not None, rule


def test_a_mongodb_array_holding_an_old_and_a_recent_date_is_not_deleted(mongo_store: MongoStore,
                                                                         tmp_path: Path) -> None:
    """SPEC 3: MongoDB ages are BSON dates only. `{field: {$lt: cutoff}}` matches an array if ANY element is older
    (and `$type: "date"` matches an array holding a date), so a document whose field is [800 days ago, yesterday] is
    deleted. (Older than this round, but the backlog probe inherits it.) It should be unknown_age."""
    mongo_store.database["sessions"].insert_many([
        {"_id": 1, "started_at": [NOW - timedelta(days=800), NOW - timedelta(days=1)]},
        {"_id": 2, "started_at": NOW - timedelta(days=800)}])
    sandbox = make_sandbox(tmp_path / "sandbox", mongo_store)
    sandbox.write(SESSIONS_RULE.replace('connector = "events"', 'connector = "app"'), clients=False)
    rule = json.loads(sandbox.cli("run", "--now", NOW_TEXT, "--format", "json").stdout)["rules"][0]
    assert (1, 1) == (rule["matched"], rule["unknown_age"]), rule
    assert [1] == [d["_id"] for d in mongo_store.database["sessions"].find()]


# -- 4. approved plans -----------------------------------------------------------------------------------------------


@pytest.fixture
def approval_box(tmp_path: Path, pg_store: PostgresStore) -> Sandbox:
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 10, timedelta(days=1))
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE, clients=False)
    return box


def saved_plan(sandbox: Sandbox, *args: str) -> Path:
    path = sandbox.root / "reviewed" / "plan.json"
    result = sandbox.cli("plan", "--now", NOW_TEXT, "--save", str(path), *args)
    assert 0 == result.exit_code, result.stdout + result.stderr
    return path


@pytest.mark.parametrize("tolerance", ["nan", "inf", "1e400"])
def test_a_tolerance_that_is_no_finite_number_is_a_usage_error(tolerance: str, approval_box: Sandbox) -> None:
    """click's FloatRange(min=0) lets nan and inf through (nan < 0 is false); Fraction(str(nan)) then raises inside
    the run: exit 1, 'unexpected ValueError', and an audit file written. SPEC: a usage error is exit 2 and a run
    refused with 2 writes no audit file."""
    path = saved_plan(approval_box)
    result = approval_box.cli("run", "--now", NOW_TEXT, "--approved", str(path), "--tolerance", tolerance)
    assert 2 == result.exit_code, result.stdout + result.stderr
    assert "--tolerance" in result.stderr
    assert [] == audit_files(approval_box)


@pytest.mark.parametrize("craft", ["deep", "bigint"])
def test_a_crafted_approval_file_is_a_config_error_not_an_unexpected_one(craft: str, approval_box: Sandbox) -> None:
    """approval.load catches JSONDecodeError and UnicodeDecodeError only: deep nesting raises RecursionError and a
    5,000-digit count ValueError (int max_str_digits), both 'unexpected ... (rerun with -v)' with exit 1."""
    path = saved_plan(approval_box)
    text = path.read_text()
    crafted = approval_box.root / "crafted.json"
    crafted.write_text('{"kind": "retention-approved-plan", "rules": ' + "[" * 100_000 + "]" * 100_000 + "}"
                       if craft == "deep" else text.replace('"matched": 10', '"matched": 1' + "0" * 5000))
    result = approval_box.cli("run", "--now", NOW_TEXT, "--approved", str(crafted))
    assert 2 == result.exit_code and str(crafted) in result.stderr, result.stderr
    assert [] == audit_files(approval_box)


def test_a_rule_whose_approval_count_failed_does_not_run_unapproved(approval_box: Sandbox, pg_store: PostgresStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`_refused` leaves rules whose count failed out of `counted`, so the approval never judges them; the run then
    goes ahead and counts them again. One transient failure (a dropped connection during the approval's count) lets
    a rule change 5 records where 0 were approved, under --approved."""
    approval_box.write(COOKIE_RULE + SECOND_RULE, clients=False)
    pg_store.execute("DELETE FROM cookie_events")
    path = saved_plan(approval_box)  # approved: cookies 0, cookies-recent 0
    add_cookies(pg_store, NOW, *[timedelta(days=400)] * 5)  # expired for cookies-recent (12 months) only
    real, calls = SqlConnector.count, {"n": 0}

    def flaky(self: SqlConnector, selection: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the approval's count of the second rule
            raise ConnectorError("count failed: OperationalError: server closed the connection unexpectedly")
        return real(self, selection)

    monkeypatch.setattr(SqlConnector, "count", flaky)
    before = pg_store.fingerprint()
    result = approval_box.cli("run", "--now", NOW_TEXT, "--approved", str(path), "--format", "json")
    assert 3 == result.exit_code, result.stdout
    assert before == pg_store.fingerprint()


# -- 2. audit find ---------------------------------------------------------------------------------------------------


def _cookie_box(pg_store: PostgresStore, tmp_path: Path) -> Sandbox:
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, timedelta(days=800), timedelta(days=1))
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    sandbox.write(COOKIE_RULE, clients=False)
    assert 0 == sandbox.cli("run", "--now", NOW_TEXT).exit_code
    return sandbox


def test_find_does_not_report_a_forged_sidecar_line(pg_store: PostgresStore, tmp_path: Path) -> None:
    """find reads the sidecars without checking them against the signed digests (run_finished's sidecar SHA-256,
    each batch's ids_digest): one appended line makes it answer "changed by run X" (exit 0) for a record X never
    touched, while `audit verify` says the run is bad. Evidence an auditor relies on must be verified evidence."""
    sandbox = _cookie_box(pg_store, tmp_path)
    from retention.audit.find import record_names
    from retention.config import load_config
    from retention.secrets import pseudonym_keys
    from retention.settings import Environment

    config = load_config(sandbox.config)
    id_key = pseudonym_keys(config, Environment(sandbox.env())).record_ids
    assert id_key is not None
    sidecar = next(sandbox.audit_dir.glob("*.ids"))
    with sidecar.open("a", encoding="utf-8") as handle:
        # record 1 is a day old: never deleted
        handle.write(f"changed cookies {next(iter(record_names('1', id_key, composite=False)))}\n")
    assert 5 == sandbox.cli("audit", "verify").exit_code
    result = sandbox.cli("audit", "find", "1", "--rule", "cookies", "--format", "json")
    assert result.exit_code != 0 and not json.loads(result.stdout or '{"found": []}')["found"], result.stdout


def test_find_takes_a_uuid_key_in_capitals(pg_store: PostgresStore, tmp_path: Path) -> None:
    """A PostgreSQL uuid key is named by its lower-case text; an auditor who pastes it in capitals (as many tools
    show uuids) is told "no run changed or held that record" (exit 1): a false negative. retention.ids treats a uuid
    in either case as one id everywhere else."""
    pg_store.execute("CREATE TABLE visits (id UUID PRIMARY KEY, created TIMESTAMPTZ)")
    key = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    pg_store.execute(f"INSERT INTO visits VALUES ('{key}', now() - interval '900 days')")
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    sandbox.write(COOKIE_RULE.replace("cookie_events", "visits").replace("collected_at", "created"), clients=False)
    assert 0 == sandbox.cli("run").exit_code
    assert 0 == sandbox.cli("audit", "find", key, "--rule", "cookies").exit_code
    assert 0 == sandbox.cli("audit", "find", key.upper(), "--rule", "cookies").exit_code


def test_find_takes_a_text_key_that_starts_with_a_bracket_and_never_echoes_it(pg_store: PostgresStore,
                                                                              tmp_path: Path) -> None:
    """Any KEY starting with "[" is taken for a composite key: a text key such as "[draft] jane.doe@example.org" can
    never be looked up (exit 2), and the error echoes the key -- a personal value -- to stderr (and any log
    shipper). A composite key needs its own flag (or a valid JSON array of 2+), a plain key is plain text."""
    pg_store.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, created TIMESTAMPTZ)")
    pg_store.execute("INSERT INTO notes VALUES ('[draft] jane.doe@example.org', now() - interval '900 days')")
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    sandbox.write(COOKIE_RULE.replace("cookie_events", "notes").replace("collected_at", "created"), clients=False)
    assert 0 == sandbox.cli("run").exit_code
    result = sandbox.cli("audit", "find", "[draft] jane.doe@example.org", "--rule", "cookies")
    assert "jane.doe@example.org" not in result.stderr
    assert 0 == result.exit_code, result.stdout + result.stderr


# -- 3. requests certificate -----------------------------------------------------------------------------------------


def _held_request(sandbox: Sandbox, pg_store: PostgresStore) -> dict[str, Any]:
    """r-7 served by a run in which a legal hold kept every record: pending, nothing changed."""
    from tests.test_requests import request, run

    request(pg_store, "r-7", "c-active", "user0@example.org", "end_user_request")
    sandbox.config.write_text(sandbox.config.read_text() + '\n[[holds]]\nname = "lit-9"\nclient_ids = ["c-active"]\n')
    first = run(sandbox)
    assert [("pending",)] == pg_store.query("SELECT status FROM erasure_requests")
    return first


def _lie(pg_store: PostgresStore, **changes: Any) -> None:
    """Rewrite the requests table's status and result (a table anyone with write access can edit)."""
    result = json.loads(pg_store.query("SELECT result FROM erasure_requests")[0][0])
    pg_store.execute("UPDATE erasure_requests SET status = 'done', result = :result",
                     {"result": json.dumps({**result, **changes})})



@pytest.fixture
def requests_box(tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore, moto_url: str) -> Sandbox:
    from tests.test_requests import sandbox as build

    return build.__wrapped__(tmp_path, pg_store, mongo_store, moto_url)  # type: ignore[attr-defined, no-any-return]


def test_a_certificate_is_not_issued_for_a_run_that_erased_nothing(requests_box: Sandbox,
                                                                   pg_store: PostgresStore) -> None:
    """The certificate takes "done" and the completing run from the requests table and checks only that the run
    served the request. A table edited to say done by a run in which a legal hold kept every record (changed 0,
    held 1 in every unit, all signed in the log) gets a signed certificate of completion, exit 0. Completion must
    come from the signed log: in that run every unit finished, none held, none remaining, not a dry run."""
    first = _held_request(requests_box, pg_store)
    _lie(pg_store, status="done", waiting_for=[])
    result = requests_box.cli("requests", "certificate", "r-7")
    work = json.loads(result.stdout)["work"] if result.stdout.strip().startswith("{") else []
    assert all(w["held"] == 1 and w["changed"] == 0 and w["run_id"] == first["run_id"] for w in work)
    assert 0 != result.exit_code, result.stdout


def test_a_certificate_over_a_result_whose_run_id_is_a_list_is_a_clear_refusal(requests_box: Sandbox,
                                                                               pg_store: PostgresStore) -> None:
    """result.run_id is untrusted JSON: a list makes `done_by not in evidence.finished_at` raise TypeError
    (unhashable): 'unexpected TypeError', exit 1, instead of the AuditError naming the table."""
    first = _held_request(requests_box, pg_store)
    _lie(pg_store, status="done", run_id=[first["run_id"]])
    result = requests_box.cli("requests", "certificate", "r-7")
    assert "unexpected" not in result.stderr and "erasure_requests" in result.stderr, result.stderr


def test_a_certificate_never_prints_free_text_from_the_requests_table(requests_box: Sandbox,
                                                                      pg_store: PostgresStore) -> None:
    """received_at is printed as the store gave it when it is no instant: a text column holding a note about the
    person ("phoned by jane.doe@example.org") goes into the signed certificate. SPEC 5: no field values."""
    pg_store.execute("ALTER TABLE erasure_requests ALTER COLUMN received_at TYPE TEXT")
    from tests.test_requests import request, run

    request(pg_store, "r-9", "c-active", None, "client_instruction")
    pg_store.execute("UPDATE erasure_requests SET received_at = 'phoned by jane.doe@example.org'")
    run(requests_box)
    result = requests_box.cli("requests", "certificate", "r-9")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert "jane.doe" not in result.stdout


# -- 5. per-client retention -----------------------------------------------------------------------------------------


def _retention_box(pg_store: PostgresStore, tmp_path: Path, column: str) -> Sandbox:
    from tests.test_client_retention import configure

    pg_store.standard_schema()
    pg_store.execute(f"ALTER TABLE clients ADD COLUMN retention {column}")
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    configure(sandbox)
    return sandbox


def test_an_interval_of_one_month_is_a_calendar_month(pg_store: PostgresStore, tmp_path: Path) -> None:
    """psycopg turns interval '1 month' into timedelta(days=30), so a client whose contract says one month is
    judged by 30 days: ended 2026-10-29 12:00, it expires on 2026-11-29 03:00 (one calendar month back is
    2026-10-29 03:00, SPEC 3's calendar arithmetic, as the text "1 month" in the same column gives). Its end users
    are anonymized a day early. Read intervals as text (or justify_interval + months) in the query."""
    from datetime import UTC, datetime

    sandbox = _retention_box(pg_store, tmp_path, "INTERVAL")
    pg_store.insert("clients", [{"id": "c-month", "status": "closed", "retention": "1 month",
                                 "closed_at": datetime(2026, 10, 29, 12, 0, tzinfo=UTC)}])
    pg_store.insert("end_users", [{"id": 1, "client_id": "c-month", "email": "user1@example.org"}])
    planned = json.loads(sandbox.cli("plan", "--now", NOW_TEXT, "--format", "json").stdout)["rules"][0]
    assert 0 == planned["matched"], planned
    pg_store.execute("ALTER TABLE clients ALTER COLUMN retention TYPE TEXT USING '1 month'")
    assert 0 == json.loads(sandbox.cli("plan", "--now", NOW_TEXT, "--format", "json").stdout)["rules"][0]["matched"]


def test_an_interval_too_long_for_python_makes_one_client_unknown_not_every_rule_crash(pg_store: PostgresStore,
                                                                                        tmp_path: Path) -> None:
    """interval '3000000 years' is valid PostgreSQL; psycopg cannot load it (timedelta's limit), and the registry
    read raises DataError: `plan` dies with 'unexpected DataError' (exit 1, no rule reported), a run fails every
    client-lifetime rule. The commit promises an unreadable value makes that client's records unknown_age."""
    sandbox = _retention_box(pg_store, tmp_path, "INTERVAL")
    pg_store.insert("clients", [{"id": "c-huge", "status": "closed", "retention": "3000000 years",
                                 "closed_at": NOW - timedelta(days=400)},
                                {"id": "c-gone", "status": "closed", "closed_at": NOW - timedelta(days=400)}])
    pg_store.insert("end_users", [{"id": 1, "client_id": "c-huge"}, {"id": 2, "client_id": "c-gone"}])
    result = sandbox.cli("plan", "--now", NOW_TEXT, "--format", "json")
    assert 0 == result.exit_code, result.stderr
    rule = json.loads(result.stdout)["rules"][0]
    assert (1, 1) == (rule["matched"], rule["unknown_age"]), rule


def test_a_client_reactivated_during_the_run_keeps_its_records_with_a_retention_field(
        pg_store: PostgresStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 3: statements re-check the predicate at the moment of change. Without retention_field the registry join
    does (tests/test_races.py). With it, even when the registry is in the same database, the verdict is judged once
    from registry rows cached for the whole run and pushed as lists: a client re-activated after the count (or
    hours earlier in a long run) still has its end users anonymized. Here: re-activated just before the batches."""
    from tests.conformance import seed_clients

    sandbox = _retention_box(pg_store, tmp_path, "TEXT")  # every client's own grace empty: the rule's 30 days
    seed_clients(pg_store, NOW)
    real = SqlConnector.apply

    def reactivate_first(self: SqlConnector, *args: Any, **kwargs: Any) -> Any:
        pg_store.execute("UPDATE clients SET status = 'active', closed_at = NULL WHERE id = 'c-gone'")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SqlConnector, "apply", reactivate_first)
    assert 0 == sandbox.cli("run", "--now", NOW_TEXT).exit_code
    assert [(4,)] == pg_store.query("SELECT id FROM end_users WHERE anonymized_at IS NOT NULL ORDER BY id")


def test_an_approval_binds_the_stores_it_was_reviewed_against(approval_box: Sandbox, pg_store: PostgresStore,
                                                              postgres_url: str) -> None:
    """The approval binds the config file's bytes, but connectors' `${NAME}` values (url, database, endpoint) are
    outside them: a plan reviewed against staging (APP_DATABASE_URL=staging) approves a run against any other
    database with no more matched records. Here a run on another database deletes 10 records nobody reviewed.
    Bind the resolved, non-secret connector identities (driver, host, port, database; endpoint, bucket) in the
    approval (a hash of them beside config_sha256), and refuse when they differ. (SPEC 2 names only the config's
    hash: a design gap rather than a deviation.)"""
    import uuid

    import psycopg

    path = saved_plan(approval_box)  # reviewed against pg_store's database
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        other = PostgresStore(f"{postgres_url.rpartition('/')[0]}/{name}")
        other.standard_schema()
        add_cookies(other, NOW, *[timedelta(days=900)] * 10)
        result = approval_box.cli("run", "--now", NOW_TEXT, "--approved", str(path), "--format", "json",
                                  env={"APP_DATABASE_URL": other.url})
        left = other.scalar("SELECT count(*) FROM cookie_events")
        other.engine.dispose()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    assert (3, 10) == (result.exit_code, left), result.stdout


def test_a_stop_after_the_last_batch_starts_no_store_wide_recount(pg_store: PostgresStore, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The after-count (`_execute`: connector.count afresh) never consults the stop flag or the time budget: a
    SIGTERM or max_duration arriving after the last batch still runs a full recount (on S3 a whole listing plus a
    HEAD per object for metadata ages, then the held-ids listing), long past Kubernetes' grace period -> SIGKILL ->
    an unsigned log. With a stop pending the unit should skip it (remaining: null, "not counted")."""
    from retention import run as coordinator
    from retention.config import load_config
    from retention.settings import Environment

    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 3)
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    sandbox.write(COOKIE_RULE, clients=False)
    stop, counts_after_stop = [False], [0]
    real_apply, real_count, real_backlog = SqlConnector.apply, SqlConnector.count, SqlConnector.backlog

    def apply_then_stop(self: SqlConnector, *args: Any, **kwargs: Any) -> Any:
        yield from real_apply(self, *args, **kwargs)
        stop[0] = True  # SIGTERM right after the last batch

    def count(self: SqlConnector, selection: Any) -> Any:
        counts_after_stop[0] += stop[0]
        return real_count(self, selection)

    def backlog(self: SqlConnector, selection: Any) -> Any:
        counts_after_stop[0] += stop[0]
        return real_backlog(self, selection)

    monkeypatch.setattr(SqlConnector, "apply", apply_then_stop)
    monkeypatch.setattr(SqlConnector, "count", count)
    monkeypatch.setattr(SqlConnector, "backlog", backlog)
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    report = coordinator.run(load_config(sandbox.config), Environment(), NOW, lambda: NOW,
                             should_stop=lambda: stop[0])
    assert 3 == report.rules[0].changed
    assert 0 == counts_after_stop[0]


def test_an_approved_run_never_changes_more_than_approved_even_if_records_arrive_after_the_check(
        approval_box: Sandbox, pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_refused` counts every rule up front, then each unit counts again and applies with limit = its own count.
    Records that become matched in between (a backfill of old rows, a late rule hours into a long run) are changed
    although the approval allowed 10 x 1.1: here 30 are deleted under an approval of 10. The approved ceiling
    (approved x (1 + F)) should bound the unit: limit = min(count, ceiling), or re-check the unit's count."""
    path = saved_plan(approval_box)  # 10 approved
    real, calls = SqlConnector.count, {"n": 0}

    def backfill_before_the_units_count(self: SqlConnector, selection: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the unit's own count, after the approval's
            add_cookies(pg_store, NOW, *[timedelta(days=800)] * 30)  # ids 0..29: replace the 10 with 30
        return real(self, selection)

    pg_store.execute("DELETE FROM cookie_events")
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 10)
    monkeypatch.setattr(SqlConnector, "count", backfill_before_the_units_count)
    monkeypatch.setattr(pg_store, "insert", _upsert(pg_store))
    result = approval_box.cli("run", "--now", NOW_TEXT, "--approved", str(path), "--format", "json")
    changed = json.loads(result.stdout)["rules"][0]["changed"]
    assert changed <= 11, result.stdout


def _upsert(store: PostgresStore) -> Any:
    def insert(table: str, rows: list[dict[str, Any]]) -> None:
        store.execute(f"INSERT INTO {table} (id, visitor_id, collected_at, ip) VALUES "
                      "(:id, :visitor_id, :collected_at, :ip) ON CONFLICT (id) DO NOTHING", rows)
    return insert


def test_find_over_a_missing_audit_dir_is_an_error_not_a_negative(pg_store: PostgresStore, tmp_path: Path) -> None:
    """With audit.dir wrong (a typo, a fresh container before the WORM copy is fetched) find says "no run changed
    or held that record" and exits 1 -- the answer an auditor records as "the job never touched it". A dir that
    does not exist (or holds no run) is an error naming it (exit 2)."""
    pg_store.standard_schema()
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    sandbox.write(COOKIE_RULE, clients=False)
    result = sandbox.cli("audit", "find", "1", "--rule", "cookies")
    assert 2 == result.exit_code and str(sandbox.audit_dir) in result.stderr, result.stdout + result.stderr


def test_a_failed_backlog_count_leaves_the_finished_rule_finished(pg_store: PostgresStore, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch committed, then the recount fails (the server went away): the rule still finishes with its
    changes and held ids recorded, and only `remaining` is missing (null), never a failed rule."""
    pg_store.standard_schema()
    add_cookies(pg_store, NOW, *[timedelta(days=800)] * 3)
    sandbox = make_sandbox(tmp_path / "sandbox", pg_store)
    sandbox.write(COOKIE_RULE, clients=False)
    def failing_after(self: SqlConnector, selection: Any) -> Any:
        raise ConnectorError("count failed: OperationalError: server closed the connection unexpectedly")

    monkeypatch.setattr(SqlConnector, "backlog", failing_after)
    result = sandbox.cli("run", "--now", NOW_TEXT, "--format", "json")
    rule = json.loads(result.stdout)["rules"][0]
    assert (0, "ok", 3, None) == (result.exit_code, rule["status"], rule["changed"], rule["remaining"]), rule
    assert "backlog_not_counted" in result.stderr
