"""The S3 connector over HTTP: moto's server for listing and deleting, SeaweedFS for Object Lock."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result
from retention.connectors.s3 import S3Connector, S3Record

from retention.audit import generate_keypair
from retention.cli import main
from retention.secrets import RECORD_ID_LABEL, derive
from retention.transforms import pseudonym
from tests.helpers import PSEUDONYM_KEY
from tests.stores import SqliteStore

OLD = "2020-01-01T00:00:00Z"
RULE = """
[[rules]]
name = "uploads"
connector = "files"
bucket = "{bucket}"
prefix = "uploads/"
expire = {{ after = "24 months", field = "{field}" }}
action = "delete"
max_fraction = 1.0
"""


class S3Sandbox:
    """A config with an S3 connector and a fresh bucket on the given endpoint."""

    def __init__(self, root: Path, endpoint: str, *, versioned: bool = False, locked: bool = False) -> None:
        self.root, self.endpoint = root, endpoint
        root.mkdir(parents=True, exist_ok=True)
        generate_keypair(root / "private.pem", root / "public.pem")
        self.s3 = boto3.client("s3", endpoint_url=endpoint)
        self.bucket = f"b-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=self.bucket, **({"ObjectLockEnabledForBucket": True} if locked else {}))
        if versioned and not locked:
            self.s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})

    def put(self, key: str, *, collected_at: str | None = None, tag: str | None = None, **extra: Any) -> str:
        metadata = {"collected-at": collected_at} if collected_at is not None else {}
        tagging = {"Tagging": f"collected-at={tag}"} if tag is not None else {}
        return str(self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"x", Metadata=metadata, **tagging,
                                      **extra).get("VersionId"))

    def keys(self) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", []))

    def versions(self) -> tuple[list[str], list[str]]:
        listing = self.s3.list_object_versions(Bucket=self.bucket)
        return (sorted(v["Key"] for v in listing.get("Versions", [])),
                sorted(m["Key"] for m in listing.get("DeleteMarkers", [])))

    def write(self, rules: str, extra: str = "") -> None:
        (self.root / "retention.toml").write_text(f"""
[job]
state_dir = "{self.root}/state"
batch_size = 2
[audit]
dir = "{self.root}/audit"
signing_key = "{self.root}/private.pem"
record_ids = "hashed"
[secrets]
pseudonym_key = "${{RETENTION_PSEUDONYM_KEY}}"
[connectors.files]
type = "s3"
endpoint_url = "{self.endpoint}"
region = "us-east-1"
{extra}
{rules}""")

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(self.root / "retention.toml"), "--log-format", "json", *args],
                                  env={"RETENTION_PSEUDONYM_KEY": PSEUDONYM_KEY}, catch_exceptions=False)

    def plan(self) -> dict[str, Any]:
        result = self.cli("plan", "--format", "json")
        assert result.exit_code in (0, 3), result.stdout + result.stderr
        return json.loads(result.stdout)["rules"][0]  # type: ignore[no-any-return]

    def run(self, *args: str, expect: int = 0) -> dict[str, Any]:
        result = self.cli("run", "--format", "json", *args)
        assert expect == result.exit_code, result.stdout + result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def moto(tmp_path: Path, moto_url: str) -> S3Sandbox:
    return S3Sandbox(tmp_path / "sandbox", moto_url)


def test_last_modified_ages_objects_under_the_prefix_only(moto: S3Sandbox) -> None:
    """Without `field`, the age is LastModified; keys outside the prefix are never looked at."""
    for key in ("uploads/a", "uploads/b", "other/c"):
        moto.put(key)
    now = datetime.now(UTC)  # after every put: LastModified (same machine, same clock) is earlier
    rule = RULE.format(bucket=moto.bucket, field="LastModified")
    moto.write(rule.replace('after = "24 months", field = "LastModified"', 'after = "0 days"'))
    report = moto.run("--now", now.isoformat())
    assert (2, 2) == (report["rules"][0]["matched"], report["rules"][0]["changed"])
    assert ["other/c"] == moto.keys()


def test_metadata_ages_in_rfc3339_or_epoch_and_unknowns(moto: S3Sandbox) -> None:
    """metadata:NAME is read as RFC 3339 or epoch seconds; missing or unparseable is unknown_age, untouched."""
    moto.put("uploads/rfc", collected_at=OLD)
    moto.put("uploads/epoch", collected_at="1577836800")
    moto.put("uploads/fresh", collected_at=datetime.now(UTC).isoformat())
    moto.put("uploads/garbage", collected_at="last tuesday")
    moto.put("uploads/none")
    moto.write(RULE.format(bucket=moto.bucket, field="metadata:collected-at"))
    rule = moto.plan()
    assert (2, 2, 5) == (rule["matched"], rule["unknown_age"], rule["total"])
    moto.run()
    assert ["uploads/fresh", "uploads/garbage", "uploads/none"] == moto.keys()


def test_tag_ages(moto: S3Sandbox) -> None:
    """tag:NAME reads the object's tag."""
    moto.put("uploads/old", tag=OLD)
    moto.put("uploads/new", tag=datetime.now(UTC).isoformat())
    moto.write(RULE.format(bucket=moto.bucket, field="tag:collected-at"))
    assert 1 == moto.plan()["matched"]
    moto.run()
    assert ["uploads/new"] == moto.keys()


def test_versions_are_judged_one_by_one_and_nothing_recoverable_remains(tmp_path: Path, moto_url: str) -> None:
    """Each version is a record; a key whose versions all expire loses every version and its delete markers."""
    box = S3Sandbox(tmp_path / "sandbox", moto_url, versioned=True)
    box.put("uploads/gone", collected_at=OLD)
    box.put("uploads/gone", collected_at=OLD)
    box.s3.delete_object(Bucket=box.bucket, Key="uploads/gone")  # a plain delete: only a marker, recoverable
    box.put("uploads/mixed", collected_at=OLD)
    box.put("uploads/mixed", collected_at=datetime.now(UTC).isoformat())
    box.write(RULE.format(bucket=box.bucket, field="metadata:collected-at"))
    rule = box.plan()
    assert (3, 4) == (rule["matched"], rule["total"])
    report = box.run()
    assert 3 == report["rules"][0]["changed"]
    assert (["uploads/mixed"], []) == box.versions()


def test_anonymize_on_s3_is_a_config_error_that_says_why(moto: S3Sandbox) -> None:
    """Objects are deleted, not rewritten: anonymize and deidentify are refused before anything connects."""
    moto.write(RULE.format(bucket=moto.bucket, field="LastModified").replace(
        'action = "delete"', 'action = "anonymize"\nmarker = "m"\ntransforms = { a = "null" }'))
    result = moto.cli("check", "--offline")
    assert 2 == result.exit_code
    assert 'action = "anonymize" is not possible on a s3 connector: S3 objects are deleted, not rewritten' in \
        result.stderr


def test_a_missing_bucket_fails_the_rule(moto: S3Sandbox) -> None:
    """A bucket that does not exist is a rule failure (exit 1), named in the report."""
    moto.write(RULE.format(bucket="no-such-bucket-here", field="LastModified"))
    report = moto.run(expect=1)
    assert "bucket no-such-bucket-here does not exist" in report["rules"][0]["error"]


def test_thresholds_apply_to_objects(moto: S3Sandbox) -> None:
    """max_fraction counts objects: 2 of 3 expired is over 0.5, so nothing is deleted (exit 3)."""
    moto.put("uploads/a", collected_at=OLD)
    moto.put("uploads/b", collected_at=OLD)
    moto.put("uploads/c", collected_at=datetime.now(UTC).isoformat())
    moto.write(RULE.format(bucket=moto.bucket, field="metadata:collected-at").replace("max_fraction = 1.0",
                                                                                      "max_fraction = 0.5"))
    moto.run(expect=3)
    assert 3 == len(moto.keys())


def test_client_lifetime_from_the_key_with_the_registry_in_sql(moto: S3Sandbox, tmp_path: Path) -> None:
    """client_key reads the client id from the key; the registry lives in another store (SQLite here)."""
    registry = SqliteStore(tmp_path / "registry.db")
    registry.execute("CREATE TABLE clients (id TEXT PRIMARY KEY, status TEXT, closed_at DATETIME)")
    registry.insert("clients", [{"id": "c-gone", "status": "closed", "closed_at": datetime.now(UTC) - timedelta(90)},
                                {"id": "c-live", "status": "active", "closed_at": None}])
    for key in ("uploads/clients/c-gone/a.pdf", "uploads/clients/c-gone/b.pdf", "uploads/clients/c-live/c.pdf",
                "uploads/clients/c-unknown/d.pdf", "uploads/stray.txt"):
        moto.put(key)
    moto.write(f"""
[[rules]]
name = "client-files"
connector = "files"
bucket = "{moto.bucket}"
prefix = "uploads/clients/"
client_key = "uploads/clients/{{client_id}}/"
expire = {{ grace = "30 days" }}
action = "delete"
max_fraction = 1.0
""", extra=f'[connectors.registry]\ntype = "sql"\nurl = "sqlite:///{tmp_path}/registry.db"\n'
            '[clients]\nconnector = "registry"\ntable = "clients"\nended_at_field = "closed_at"\n'
            'active_statuses = ["active"]\nended_statuses = ["closed"]\n')
    rule = moto.plan()
    assert (2, 1, 4) == (rule["matched"], rule["unknown_age"], rule["total"])
    moto.run()
    assert ["uploads/clients/c-live/c.pdf", "uploads/clients/c-unknown/d.pdf", "uploads/stray.txt"] == moto.keys()


def test_per_key_errors_are_counted_not_hidden(tmp_path: Path, seaweedfs_url: str) -> None:
    """A DeleteObjects answer with per-key errors reports them by code, and deletes what it could."""
    box = S3Sandbox(tmp_path / "sandbox", seaweedfs_url, locked=True)
    locked = box.put("uploads/locked", ObjectLockLegalHoldStatus="ON")
    free = box.put("uploads/free")
    connector = S3Connector("files", {"endpoint_url": seaweedfs_url, "region": "us-east-1"})
    now = datetime.now(UTC)
    deleted, failed = connector._delete(box.bucket, [S3Record("uploads/locked", locked, now),
                                                     S3Record("uploads/free", free, now)])
    connector.close()
    assert (["uploads/free"], {"AccessDenied": 1}) == ([r.key for r in deleted], failed)


@pytest.fixture
def locked(tmp_path: Path, seaweedfs_url: str) -> Iterator[S3Sandbox]:
    box = S3Sandbox(tmp_path / "sandbox", seaweedfs_url, locked=True)
    yield box
    for version in box.s3.list_object_versions(Bucket=box.bucket).get("Versions", []):
        box.s3.put_object_legal_hold(Bucket=box.bucket, Key=version["Key"], VersionId=version["VersionId"],
                                     LegalHold={"Status": "OFF"})


def test_object_lock_is_held_never_bypassed(locked: S3Sandbox) -> None:
    """Versions under COMPLIANCE or GOVERNANCE retention or a legal hold are held, named in the sidecar, kept."""
    until = datetime.now(UTC) + timedelta(minutes=5)
    locked.put("uploads/compliance", collected_at=OLD, ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
    locked.put("uploads/governance", collected_at=OLD, ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until)
    locked.put("uploads/legal-hold", collected_at=OLD, ObjectLockLegalHoldStatus="ON")
    locked.put("uploads/plain", collected_at=OLD)
    locked.write(RULE.format(bucket=locked.bucket, field="metadata:collected-at"))
    rule = locked.plan()
    assert (1, 3) == (rule["matched"], rule["held"])
    report = locked.run()
    assert ("ok", 1) == (report["rules"][0]["status"], report["rules"][0]["changed"])
    assert ["uploads/compliance", "uploads/governance", "uploads/legal-hold"] == locked.versions()[0]
    sidecar = Path(report["audit_file"].replace(".jsonl", ".ids")).read_text().splitlines()
    key = derive(PSEUDONYM_KEY, RECORD_ID_LABEL)
    held = {line.split()[2] for line in sidecar if line.startswith("held ")}
    versions = locked.s3.list_object_versions(Bucket=locked.bucket)["Versions"]
    assert {pseudonym(key, f"{v['Key']}?versionId={v['VersionId']}") for v in versions} == held


def worm_box(tmp_path: Path, seaweedfs_url: str, audit_bucket: str) -> S3Sandbox:
    box = S3Sandbox(tmp_path / "sandbox", seaweedfs_url)
    box.put("uploads/a", collected_at=OLD)
    box.write(RULE.format(bucket=box.bucket, field="metadata:collected-at"))
    config = (box.root / "retention.toml").read_text().replace(
        "[secrets]", f'[audit.s3]\nconnector = "files"\nbucket = "{audit_bucket}"\nprefix = "runs/"\n'
                     "retain_days = 1\n[secrets]")
    (box.root / "retention.toml").write_text(config)
    return box


def test_signed_runs_are_copied_to_a_compliance_locked_bucket(tmp_path: Path, seaweedfs_url: str) -> None:
    """Each run's log, signature and sidecar land in the WORM bucket under COMPLIANCE lock; no one can delete them."""
    audit_bucket = f"audit-{uuid.uuid4().hex[:8]}"
    box = worm_box(tmp_path, seaweedfs_url, audit_bucket)
    box.s3.create_bucket(Bucket=audit_bucket, ObjectLockEnabledForBucket=True)
    report = box.run()
    name = Path(report["audit_file"]).name
    copies = {v["Key"]: v["VersionId"] for v in box.s3.list_object_versions(Bucket=audit_bucket)["Versions"]}
    assert {f"runs/{name}", f"runs/{name}.sig", f"runs/{name[:-6]}.ids"} == set(copies)
    head = box.s3.head_object(Bucket=audit_bucket, Key=f"runs/{name}")
    assert "COMPLIANCE" == head["ObjectLockMode"]
    assert Path(report["audit_file"]).read_bytes() == box.s3.get_object(Bucket=audit_bucket,
                                                                          Key=f"runs/{name}")["Body"].read()
    refused = box.s3.delete_objects(Bucket=audit_bucket, Delete={"Objects": [
        {"Key": f"runs/{name}", "VersionId": copies[f"runs/{name}"]}]})
    assert ["AccessDenied"] == [e["Code"] for e in refused.get("Errors", [])]


def test_a_fresh_container_chains_to_the_bucket(tmp_path: Path, seaweedfs_url: str) -> None:
    """With an empty audit dir, the next run's first `prev` is the SHA-256 of the newest run in the bucket."""
    import hashlib
    import shutil

    audit_bucket = f"audit-{uuid.uuid4().hex[:8]}"
    box = worm_box(tmp_path, seaweedfs_url, audit_bucket)
    box.s3.create_bucket(Bucket=audit_bucket, ObjectLockEnabledForBucket=True)
    first = Path(box.run()["audit_file"]).read_bytes()
    shutil.rmtree(box.root / "audit")
    second = Path(box.run()["audit_file"])
    assert hashlib.sha256(first).hexdigest() == json.loads(second.read_text().splitlines()[0])["prev"]


def test_a_failed_upload_fails_the_run_and_keeps_the_local_log(tmp_path: Path, seaweedfs_url: str) -> None:
    """No WORM bucket: the run exits 1 and says why; its local, signed log is still there and verifies."""
    box = worm_box(tmp_path, seaweedfs_url, f"missing-{uuid.uuid4().hex[:8]}")
    report = box.run(expect=1)
    assert "WORM upload" in (report["audit_copy_error"] or "") or "WORM copy" in (report["audit_copy_error"] or "")
    assert 0 == box.cli("audit", "verify").exit_code


def test_unicode_and_spaces_in_keys(moto: S3Sandbox) -> None:
    """Keys with spaces, accents and emoji are listed, judged and deleted like any other."""
    for key in ("uploads/Zoë Ångström/cv final.pdf", "uploads/日本語/ファイル.txt", "uploads/🙂 smile.png"):
        moto.put(key, collected_at=OLD)
    moto.put("uploads/keep me.txt", collected_at=datetime.now(UTC).isoformat())
    moto.write(RULE.format(bucket=moto.bucket, field="metadata:collected-at"))
    assert 3 == moto.run()["rules"][0]["changed"]
    assert ["uploads/keep me.txt"] == moto.keys()


def test_a_dead_run_reaches_the_bucket_once_a_signed_run_seals_it(tmp_path: Path, seaweedfs_url: str) -> None:
    """A run that died unsigned is copied with the next signed run; the bucket's files verify with exit 0."""
    audit_bucket = f"audit-{uuid.uuid4().hex[:8]}"
    box = worm_box(tmp_path, seaweedfs_url, audit_bucket)
    box.s3.create_bucket(Bucket=audit_bucket, ObjectLockEnabledForBucket=True)
    box.run()
    config = box.root / "retention.toml"
    with_worm = config.read_text()
    config.write_text(with_worm.split("[audit.s3]")[0] + "[secrets]" + with_worm.split("[secrets]", 1)[1])
    dead = Path(box.run()["audit_file"])  # a run that never reached the bucket, then "died"
    Path(f"{dead}.sig").unlink()
    dead.write_bytes(b"".join(dead.read_bytes().splitlines(keepends=True)[:-1]))
    config.write_text(with_worm)
    box.run()
    copies = tmp_path / "bucket"
    copies.mkdir()
    for item in box.s3.list_objects_v2(Bucket=audit_bucket, Prefix="runs/")["Contents"]:
        (copies / item["Key"].removeprefix("runs/")).write_bytes(
            box.s3.get_object(Bucket=audit_bucket, Key=item["Key"])["Body"].read())
    assert (copies / dead.name).read_bytes() == dead.read_bytes()
    result = box.cli("audit", "verify", str(copies))
    assert 0 == result.exit_code, result.stdout


def test_a_failed_delete_call_still_reports_the_calls_beside_it(moto: S3Sandbox) -> None:
    """One DeleteObjects call fails outright while others are in flight: every object that is gone is reported."""
    import threading
    from types import SimpleNamespace

    from retention.config import load_config
    from retention.errors import ConnectorError
    from retention.units import compile_rule

    for n in range(8):
        moto.put(f"uploads/{n}", collected_at=OLD)
    moto.write(RULE.format(bucket=moto.bucket, field="metadata:collected-at"))
    config = load_config(moto.root / "retention.toml")
    work = compile_rule(config, config.rules[0], datetime.now(UTC), b"k" * 32)
    connector = S3Connector("files", {"endpoint_url": moto.endpoint, "region": "us-east-1"})
    calls, guard = [0], threading.Lock()

    def first_call_fails(**_: object) -> object:
        with guard:
            calls[0] += 1
            if calls[0] > 1:
                return None  # the real call
        return SimpleNamespace(status_code=500), {"Error": {"Code": "InternalError", "Message": "injected"},
                                                  "ResponseMetadata": {"HTTPStatusCode": 500}}

    connector.client.meta.events.register("before-call.s3.DeleteObjects", first_call_fails)
    batches = connector.apply(work.selection, work.action, batch_size=2, limit=100, id_key=b"k" * 32)
    counts: list[int] = []
    with pytest.raises(ConnectorError, match="InternalError"):
        counts.extend(batch.count for batch in batches)
    connector.close()
    reported = sum(counts)
    assert 8 - len(moto.keys()) == reported  # nothing deleted without being named in the evidence
    assert reported == 6
