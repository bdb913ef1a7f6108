"""Erasure requests: processed on the next run across stores, blocked by holds, confirmed before and after."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conformance import END_USER_RULE, seed_clients
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import MongoStore, PostgresStore

REQUESTS = '[requests]\nconnector = "app"\ntable = "erasure_requests"\n'


@pytest.fixture
def sandbox(tmp_path: Path, pg_store: PostgresStore, mongo_store: MongoStore, moto_url: str) -> Sandbox:
    pg_store.standard_schema()
    pg_store.execute("CREATE TABLE erasure_requests (id TEXT PRIMARY KEY, client_id TEXT, subject_id TEXT, "
                     "reason TEXT, received_at TIMESTAMPTZ, status TEXT, result TEXT)")
    seed_clients(pg_store, NOW)
    mongo_store.database["sessions"].insert_many([
        {"_id": i, "client": "c-active", "user": f"user{i}@example.org"} for i in range(3)])
    s3 = boto3.client("s3", endpoint_url=moto_url)
    bucket = f"files-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"clients/c-active/users/user{i}@example.org/photo.jpg", Body=b"jpg")
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.bucket, box.s3 = bucket, s3  # type: ignore[attr-defined]
    box.write(END_USER_RULE.replace('marker = "anonymized_at"', 'marker = "anonymized_at"\nsubject_field = "email"')
              + f"""
[[rules]]
name = "sessions"
connector = "events"
collection = "sessions"
expire = {{ client_field = "client", grace = "30 days" }}
subject_field = "user"
action = "delete"
max_fraction = 1.0

[[rules]]
name = "photos"
connector = "files"
bucket = "{bucket}"
prefix = "clients/"
client_key = "clients/{{client_id}}/"
subject_key = "clients/{{client_id}}/users/{{subject_id}}/"
expire = {{ grace = "30 days" }}
action = "delete"
max_fraction = 1.0
""", extra=REQUESTS + f'[connectors.events]\ntype = "mongodb"\nurl = "{mongo_store.url}"\n'
                      f'database = "{mongo_store.database.name}"\n'
                      f'[connectors.files]\ntype = "s3"\nendpoint_url = "{moto_url}"\n')
    return box


def request(store: PostgresStore, rid: str, client: str, subject: str | None, reason: str) -> None:
    store.insert("erasure_requests", [{"id": rid, "client_id": client, "subject_id": subject, "reason": reason,
                                       "received_at": NOW, "status": "pending", "result": None}])


def run(sandbox: Sandbox) -> dict[str, Any]:
    result = sandbox.cli("run", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_child_data_request_is_completed_on_the_next_run(sandbox: Sandbox, pg_store: PostgresStore,
                                                           mongo_store: MongoStore) -> None:
    """One end user's records go from every store, deleted (not anonymized), and the request is marked done."""
    request(pg_store, "r-1", "c-active", "user0@example.org", "child_data")
    report = run(sandbox)
    outcome = report["requests"][0]
    assert ("r-1", "done") == (outcome["id"], outcome["status"])
    assert {"end-users": 1, "sessions": 1, "photos": 1} == {r["rule"]: r["changed"] for r in outcome["rules"]}
    assert "delete" == next(r["action"] for r in outcome["rules"] if r["rule"] == "end-users")
    assert 0 == len([r for r in pg_store.find("end_users") if r["email"] == "user0@example.org"])
    assert [1, 2] == [d["_id"] for d in mongo_store.database["sessions"].find().sort("_id", 1)]
    keys = [o["Key"] for o in sandbox.s3.list_objects_v2(Bucket=sandbox.bucket)["Contents"]]  # type: ignore[attr-defined]
    assert not any("user0@" in key for key in keys) and 2 == len(keys)
    row = pg_store.find("erasure_requests")[0]
    assert ("done", report["audit_file"]) == (row["status"], json.loads(row["result"])["audit_file"])
    audit = Path(report["audit_file"]).read_text()
    assert '"request":"r-1"' in audit and "user0@example.org" not in audit and "c-active" not in audit
    assert 0 == sandbox.cli("audit", "verify").exit_code


def test_a_request_blocked_by_a_hold_stays_pending(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """A client's instruction under a legal hold changes nothing and stays pending, saying which hold."""
    request(pg_store, "r-2", "c-active", None, "client_instruction")
    config = sandbox.config.read_text() + '\n[[holds]]\nname = "lit-9"\nclient_ids = ["c-active"]\n'
    sandbox.config.write_text(config)
    report = run(sandbox)
    outcome = report["requests"][0]
    assert ("pending", ["lit-9"]) == (outcome["status"], outcome["held_by"])
    assert 0 == sum(r["changed"] for r in outcome["rules"])
    assert "pending" == pg_store.find("erasure_requests")[0]["status"]
    assert "user0@example.org" in [r["email"] for r in pg_store.find("end_users")]


def test_requests_show_confirms_before_and_after(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """Before the run it says what would change per rule; after, what changed and the audit file proving it."""
    request(pg_store, "r-3", "c-active", None, "client_instruction")
    before = json.loads(sandbox.cli("requests", "show", "r-3", "--format", "json").stdout)
    assert {"end-users": 1, "sessions": 3, "photos": 3} == {r["rule"]: r["would_change"] for r in before["before"]}
    assert before["after"] is None
    report = run(sandbox)
    after = json.loads(sandbox.cli("requests", "show", "r-3", "--format", "json").stdout)
    assert ("done", report["audit_file"]) == (after["after"]["status"], after["after"]["audit_file"])
    assert {"end-users": 1, "sessions": 3, "photos": 3} == {r["rule"]: r["changed"] for r in after["after"]["rules"]}
    text = sandbox.cli("requests", "show", "r-3").stdout
    assert "Before (now):" in text and "After (run" in text and report["audit_file"] in text


def test_a_text_subject_names_an_integer_key(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """Request tables hold ids as text; "0" still names end user 0 of an INTEGER column."""
    sandbox.config.write_text(sandbox.config.read_text().replace('subject_field = "email"', 'subject_field = "id"'))
    request(pg_store, "r-4", "c-active", "0", "end_user_request")
    outcome = run(sandbox)["requests"][0]
    assert ("done", 1) == (outcome["status"], next(r["changed"] for r in outcome["rules"] if r["rule"] == "end-users"))


def outcome_of(report: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(o for o in report["requests"] if o["id"] == rid)


def test_a_rule_run_serves_a_request_but_never_completes_it(sandbox: Sandbox, pg_store: PostgresStore,
                                                            mongo_store: MongoStore) -> None:
    """`run --rule` erases through that rule only and leaves the request pending; the next full run completes it."""
    request(pg_store, "r-10", "c-active", None, "client_instruction")
    result = sandbox.cli("run", "--rule", "end-users", "--format", "json")
    assert 0 == result.exit_code, result.stdout + result.stderr
    outcome = outcome_of(json.loads(result.stdout), "r-10")
    assert ("pending", ["end-users"]) == (outcome["status"], [r["rule"] for r in outcome["rules"]])
    assert any("full run" in reason for reason in outcome["waiting_for"])
    assert "pending" == pg_store.find("erasure_requests")[0]["status"]
    assert 3 == mongo_store.database["sessions"].count_documents({})
    report = run(sandbox)
    assert "done" == outcome_of(report, "r-10")["status"]
    assert 0 == mongo_store.database["sessions"].count_documents({})
    assert "done" == pg_store.find("erasure_requests")[0]["status"]


def test_request_ids_that_are_documents_never_reach_a_query(tmp_path: Path, pg_store: PostgresStore,
                                                             mongo_store: MongoStore) -> None:
    """A client_id of {"$exists": true} in a MongoDB requests collection fails that request; nothing is deleted."""
    pg_store.standard_schema()
    seed_clients(pg_store, NOW)
    sessions = mongo_store.database["sessions"]
    sessions.insert_many([{"_id": i, "client": c} for i, c in enumerate(["c-active", "c-gone", "c-recent"])])
    mongo_store.database["requests"].insert_many([
        {"_id": "r-evil", "client_id": {"$exists": True}, "subject_id": None, "reason": "client_instruction",
         "received_at": NOW, "status": "pending", "result": None},
        {"_id": "r-ok", "client_id": "c-recent", "subject_id": None, "reason": "client_instruction",
         "received_at": NOW, "status": "pending", "result": None}])
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write("""
[[rules]]
name = "sessions"
connector = "events"
collection = "sessions"
expire = { client_field = "client", grace = "30 days" }
action = "delete"
max_fraction = 1.0
""", extra='[requests]\nconnector = "events"\ncollection = "requests"\nid_field = "_id"\n'
           f'[connectors.events]\ntype = "mongodb"\nurl = "{mongo_store.url}"\n'
           f'database = "{mongo_store.database.name}"\n')
    result = box.cli("run", "--format", "json")
    assert 1 == result.exit_code, result.stdout + result.stderr
    report = json.loads(result.stdout)
    evil, ok = outcome_of(report, "r-evil"), outcome_of(report, "r-ok")
    assert ("failed", []) == (evil["status"], evil["rules"])
    assert "client_id" in evil["errors"][0] and "not an id" in evil["errors"][0]
    assert "done" == ok["status"]
    assert ["c-active"] == [d["client"] for d in sessions.find().sort("_id", 1)]  # c-gone's went by its rule


def test_a_record_under_object_lock_keeps_the_request_pending(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """An S3 object under legal hold (Object Lock) is held: the request stays pending and says what holds it."""
    s3 = sandbox.s3  # type: ignore[attr-defined]
    locked = f"locked-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    s3.put_object(Bucket=locked, Key="clients/c-active/users/user0@example.org/scan.pdf", Body=b"%PDF",
                  ObjectLockLegalHoldStatus="ON")
    sandbox.config.write_text(sandbox.config.read_text() + f"""
[[rules]]
name = "scans"
connector = "files"
bucket = "{locked}"
client_key = "clients/{{client_id}}/"
subject_key = "clients/{{client_id}}/users/{{subject_id}}/"
expire = {{ grace = "30 days" }}
action = "delete"
max_fraction = 1.0
""")
    request(pg_store, "r-11", "c-active", "user0@example.org", "end_user_request")
    try:
        outcome = outcome_of(run(sandbox), "r-11")
        assert ("pending", 1) == (outcome["status"], next(r["held"] for r in outcome["rules"] if r["rule"] == "scans"))
        assert ["files's own lock (Object Lock)"] == outcome["held_by"]
        assert "pending" == pg_store.find("erasure_requests")[0]["status"]
    finally:
        for version in s3.list_object_versions(Bucket=locked).get("Versions", []):
            s3.put_object_legal_hold(Bucket=locked, Key=version["Key"], VersionId=version["VersionId"],
                                     LegalHold={"Status": "OFF"})


def test_a_driver_failure_fails_that_request_only(sandbox: Sandbox, pg_store: PostgresStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A foreign exception while serving one request is that request's failure, signed; the next request runs."""
    import pymongo.collection

    collection = pymongo.collection.Collection
    real_count, real_aggregate = collection.count_documents, collection.aggregate
    records = {"client": {"$in": ["c-gone"]}}  # request r-12's records, and nothing else

    def matches_them(part: Any) -> bool:
        """Whether a filter or pipeline (a $match, a $facet's) selects exactly request r-12's records."""
        if isinstance(part, dict):
            return part == records or part.get("$match") == records or any(map(matches_them, part.values()))
        return isinstance(part, list) and any(map(matches_them, part))

    def failing_count(self: Any, filter: dict[str, Any], *args: Any, **kwargs: Any) -> int:
        if matches_them(filter):
            raise ValueError("driver trouble near jane.doe@example.org")
        return real_count(self, filter, *args, **kwargs)

    def failing_aggregate(self: Any, pipeline: list[Any], *args: Any, **kwargs: Any) -> Any:
        if matches_them(pipeline):
            raise ValueError("driver trouble near jane.doe@example.org")
        return real_aggregate(self, pipeline, *args, **kwargs)

    monkeypatch.setattr(collection, "count_documents", failing_count)
    monkeypatch.setattr(collection, "aggregate", failing_aggregate)
    request(pg_store, "r-12", "c-gone", None, "client_instruction")
    pg_store.insert("erasure_requests", [{"id": "r-13", "client_id": "c-active", "subject_id": None,
                                          "reason": "client_instruction", "received_at": NOW + timedelta(hours=1),
                                          "status": "pending", "result": None}])
    result = sandbox.cli("run", "--format", "json")
    assert 1 == result.exit_code, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert ("failed", "done") == (outcome_of(report, "r-12")["status"], outcome_of(report, "r-13")["status"])
    lines = [json.loads(line) for line in Path(report["audit_file"]).read_text().splitlines()]
    failed = [e for e in lines if e["event"] == "rule_failed"]
    assert [("sessions", "r-12", "ValueError")] == [(e["rule"], e.get("request"), e["error_class"]) for e in failed]
    assert ("failed", 1) == (lines[-1]["status"], lines[-1]["exit_code"])
    assert "jane.doe" not in Path(report["audit_file"]).read_text() + result.stdout
    assert 0 == sandbox.cli("audit", "verify").exit_code
    rows = {r["id"]: r for r in pg_store.find("erasure_requests")}
    assert ("pending", "failed") == (rows["r-12"]["status"], json.loads(rows["r-12"]["result"])["status"])


def test_check_names_a_mistyped_subject_field_and_request_field(sandbox: Sandbox) -> None:
    """`check` finds a rule's unknown subject_field and an unknown column of the requests table before any run."""
    sandbox.config.write_text(sandbox.config.read_text().replace('subject_field = "email"', 'subject_field = "emial"')
                              .replace('table = "erasure_requests"\n',
                                       'table = "erasure_requests"\nsubject_field = "subjct"\n'))
    result = sandbox.cli("check")
    assert 2 == result.exit_code, result.stdout + result.stderr
    assert "emial" in result.stdout and "subjct" in result.stdout


def test_a_request_without_a_client_fails_visibly(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """NULL or empty client_id: failed with the reason in its result, in `requests list`, and in the exit code."""
    request(pg_store, "r-14", "", None, "client_instruction")
    listed = sandbox.cli("requests", "list")
    assert "names no client" in listed.stdout
    result = sandbox.cli("run", "--format", "json")
    assert 1 == result.exit_code
    assert "failed" == outcome_of(json.loads(result.stdout), "r-14")["status"]
    row = pg_store.find("erasure_requests")[0]
    assert ("pending", "failed") == (row["status"], json.loads(row["result"])["status"])
    assert "names no client" in json.loads(row["result"])["errors"][0]


def test_a_child_data_request_must_name_the_child(sandbox: Sandbox, pg_store: PostgresStore,
                                                  mongo_store: MongoStore) -> None:
    """child_data with no subject would erase the whole client: refused, said by `requests show` before any run."""
    request(pg_store, "r-15", "c-active", None, "child_data")
    shown = sandbox.cli("requests", "show", "r-15")
    assert 0 == shown.exit_code and "must name the person" in shown.stdout
    result = sandbox.cli("run", "--format", "json")
    assert 1 == result.exit_code
    assert "failed" == outcome_of(json.loads(result.stdout), "r-15")["status"]
    assert 3 == mongo_store.database["sessions"].count_documents({})
    assert "user0@example.org" in [r["email"] for r in pg_store.find("end_users")]


@pytest.mark.parametrize("executor", ["serial", None])
def test_a_stop_during_a_request_ends_it_between_batches_and_blames_it(sandbox: Sandbox,
                                                                       mongo_store: MongoStore,
                                                                       pg_store: PostgresStore,
                                                                       executor: str | None) -> None:
    """The stop reaches a request's batches; rule_failed(Interrupted) names the request's unit, not a finished rule.

    By default the request's units on PostgreSQL and on MongoDB run side by side, so the stop may reach both.
    """
    from retention import run as coordinator
    from retention.config import load_config, with_executor
    from retention.settings import Environment

    request(pg_store, "r-16", "c-active", None, "client_instruction")
    config = load_config(sandbox.config)
    config = with_executor(config, executor) if executor else config

    def stop() -> bool:  # once the request's first batch on `sessions` is in the log
        lines = [json.loads(line) for path in sandbox.audit_dir.glob("*.jsonl")
                 for line in path.read_text().splitlines()]
        wanted = ("batch_applied", "r-16", "sessions")
        return any((e["event"], e.get("request"), e.get("rule")) == wanted for e in lines)

    report = coordinator.run(config, Environment(sandbox.env()), NOW, lambda: NOW + timedelta(seconds=1),
                        should_stop=stop)
    assert (1, "interrupted") == (report.exit_code, report.status)
    assert 1 == mongo_store.database["sessions"].count_documents({})  # batch size 2 of 3: one batch ran
    lines = [json.loads(line) for line in Path(str(report.audit_file)).read_text().splitlines()]
    failed = [(e["rule"], e.get("request"), e["error_class"]) for e in lines if e["event"] == "rule_failed"]
    if executor == "serial":
        assert [("sessions", "r-16", "Interrupted")] == failed
    else:
        assert ("sessions", "r-16", "Interrupted") in failed
        assert {("r-16", "Interrupted")} == {(request, error) for _, request, error in failed}
    assert "pending" == pg_store.find("erasure_requests")[0]["status"]


def test_duplicate_request_ids_fail_every_row_that_shares_them(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """Two rows with one id cannot be told apart when the outcome is written back: both fail, neither is done."""
    pg_store.execute("ALTER TABLE erasure_requests DROP CONSTRAINT erasure_requests_pkey")
    request(pg_store, "r-dup", "c-gone", None, "client_instruction")
    request(pg_store, "r-dup", "c-active", None, "client_instruction")
    result = sandbox.cli("run", "--format", "json")
    assert 1 == result.exit_code
    assert ["failed", "failed"] == [o["status"] for o in json.loads(result.stdout)["requests"]]
    assert "user0@example.org" in [r["email"] for r in pg_store.find("end_users")]
    assert ["pending", "pending"] == [r["status"] for r in pg_store.find("erasure_requests")]
    shown = sandbox.cli("requests", "show", "r-dup")
    assert 2 == shown.exit_code and "2 requests" in shown.stderr and "unexpected" not in shown.stderr


@pytest.mark.parametrize("reason", ["Child_Data", "phoned by Jane Doe <jane.doe@example.org>"])
def test_an_unknown_reason_is_refused_and_never_logged(reason: str, sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """Only the three reasons are served; any other text fails the request and stays out of the signed log."""
    request(pg_store, "r-17", "c-active", "user0@example.org", reason)
    result = sandbox.cli("run", "--format", "json")
    assert 1 == result.exit_code
    outcome = outcome_of(json.loads(result.stdout), "r-17")
    assert ("failed", []) == (outcome["status"], outcome["rules"])
    assert "child_data" in outcome["errors"][0]
    assert "user0@example.org" in [r["email"] for r in pg_store.find("end_users")]
    evidence = result.stdout + result.stderr + Path(json.loads(result.stdout)["audit_file"]).read_text()
    assert reason not in evidence and "jane" not in evidence.lower()


@pytest.mark.parametrize("stored", ["[1, 2]", '{"status": "pending", "waiting_for": [1], "rules": [{"rule": "x"}]}',
                                    "not json"])
def test_a_result_of_any_shape_is_shown_without_a_crash(stored: str, sandbox: Sandbox, pg_store: PostgresStore
                                                         ) -> None:
    """`requests list` and `show` read whatever the result column holds as untrusted input."""
    request(pg_store, "r-18", "c-active", None, "client_instruction")
    pg_store.execute("UPDATE erasure_requests SET result = :r", {"r": stored})
    for args in (["requests", "list"], ["requests", "show", "r-18"], ["requests", "list", "--format", "json"]):
        result = sandbox.cli(*args)
        assert 0 == result.exit_code, result.stdout + result.stderr


def test_the_run_table_shows_what_requests_changed(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """The table a person reads after a run lists each request, its outcome and what it changed."""
    request(pg_store, "r-19", "c-active", None, "client_instruction")
    result = sandbox.cli("run")
    assert 0 == result.exit_code, result.stdout + result.stderr
    section = result.stdout.split("Erasure requests:")[1]
    row = next(line for line in section.splitlines() if line.startswith("r-19")).split()
    assert ["r-19", "done", "7", "0"] == row[:4]  # end-users 1, sessions 3, photos 3


def test_requests_show_names_a_rule_that_cannot_serve_it(sandbox: Sandbox, pg_store: PostgresStore) -> None:
    """The preview assesses each rule as a run would: a mistyped subject field is named, not a crash."""
    sandbox.config.write_text(sandbox.config.read_text().replace('subject_field = "email"', 'subject_field = "emial"'))
    request(pg_store, "r-20", "c-active", "user0@example.org", "end_user_request")
    shown = sandbox.cli("requests", "show", "r-20")
    assert 0 == shown.exit_code, shown.stdout + shown.stderr
    assert "subject_field column 'emial' does not exist in table end_users" in shown.stdout


def test_a_certificate_states_what_was_done_signed_and_without_personal_values(sandbox: Sandbox,
                                                                             pg_store: PostgresStore) -> None:
    """Held by a legal hold in one run (not done: exit 1, saying why), erased in the next: a signed certificate
    that openssl verifies, naming every run and file hash, never the client's or the person's id."""
    request(pg_store, "r-7", "c-active", "user0@example.org", "end_user_request")
    held = sandbox.config.read_text()
    sandbox.config.write_text(held + '\n[[holds]]\nname = "lit-9"\nclient_ids = ["c-active"]\n')
    first = run(sandbox)
    pending = sandbox.cli("requests", "certificate", "r-7")
    assert 1 == pending.exit_code, pending.stderr
    assert any("lit-9" in reason for reason in json.loads(pending.stdout)["waiting_for"])
    sandbox.config.write_text(held)
    second = run(sandbox)
    out = sandbox.root / "certs" / "r-7.json"
    result = sandbox.cli("requests", "certificate", "r-7", "--out", str(out))
    assert 0 == result.exit_code, result.stdout + result.stderr
    text = out.read_text()
    assert "c-active" not in text and "user0@example.org" not in text
    document = json.loads(text)
    assert ("r-7", "end_user_request", second["run_id"]) == (
        document["request"]["id"], document["request"]["reason"], document["request"]["completed_by_run"])
    work = {(w["run_id"], w["rule"]): w for w in document["work"]}
    assert (0, 1, ["lit-9"]) == tuple(work[first["run_id"], "end-users"][k] for k in ("changed", "held", "held_by"))
    assert {"end-users": 1, "sessions": 1, "photos": 1} == {
        rule: w["changed"] for (run_id, rule), w in work.items() if run_id == second["run_id"]}
    files = {run["audit_file"]: run for run in document["runs"]}
    assert {Path(first["audit_file"]).name, Path(second["audit_file"]).name} == set(files)
    for name, entry in files.items():
        assert hashlib.sha256((Path(second["audit_file"]).parent / name).read_bytes()).hexdigest() == entry["sha256"]
        assert "ok" == entry["verification"]
    public = sandbox.root / "audit-public.pem"
    checked = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public), "-rawin",
                              "-in", str(out), "-sigfile", f"{out}.sig"], capture_output=True, text=True)
    assert 0 == checked.returncode and "Signature Verified Successfully" in checked.stdout, checked.stderr


def test_a_certificate_is_refused_over_a_tampered_log_and_for_an_unknown_id(sandbox: Sandbox,
                                                                           pg_store: PostgresStore) -> None:
    """Exit 5 and nothing written when a file it rests on fails verification; exit 2 for an id not in the table."""
    request(pg_store, "r-8", "c-active", None, "client_instruction")
    log = Path(run(sandbox)["audit_file"])
    assert 2 == sandbox.cli("requests", "certificate", "r-404").exit_code
    log.write_bytes(log.read_bytes().replace(b'"changed":', b'"changed":1', 1))
    out = sandbox.root / "r-8.json"
    result = sandbox.cli("requests", "certificate", "r-8", "--out", str(out))
    assert 5 == result.exit_code and "fail verification" in result.stderr, result.stdout + result.stderr
    assert not out.exists()
