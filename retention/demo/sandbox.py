"""The demo's sandbox: a SQLite database of a small SaaS, keys, and the configs that enforce its policy."""

from __future__ import annotations

import random
import secrets
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retention.audit import generate_keypair

if TYPE_CHECKING:
    from pymongo.collection import Collection

SCHEMA = """
CREATE TABLE clients (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, closed_at DATETIME);
CREATE TABLE cookie_events (id INTEGER PRIMARY KEY, visitor_id TEXT, collected_at DATETIME, ip TEXT, page TEXT);
CREATE TABLE end_users (id INTEGER PRIMARY KEY, client_id TEXT, email TEXT, full_name TEXT, phone TEXT,
                        last_ip TEXT, anonymized_at DATETIME);
CREATE TABLE client_contacts (id INTEGER PRIMARY KEY, client_id TEXT, email TEXT, role TEXT, deidentified_at DATETIME);
CREATE TABLE legal_holds (name TEXT, client_id TEXT, rule TEXT, until TEXT, reason TEXT);
CREATE TABLE erasure_requests (id TEXT PRIMARY KEY, client_id TEXT, subject_id TEXT, reason TEXT,
                               received_at DATETIME, status TEXT, result TEXT);
"""

CONFIG = """\
# A sandbox built by `retention demo`. Every rule cites the policy promise it keeps.
[job]
state_dir = "{dir}/state"
batch_size = 500

[audit]
dir = "{dir}/audit"
signing_key = "{dir}/keys/audit-private.pem"
record_ids = "hashed"

[secrets]
pseudonym_key = "${{RETENTION_PSEUDONYM_KEY}}"   # the demo keeps it in keys/pseudonym.key

[connectors.app]
type = "sql"
url = "sqlite:///{dir}/app.db"

[clients]
connector = "app"
table = "clients"
id_field = "id"
status_field = "status"
ended_at_field = "closed_at"
active_statuses = ["active", "trial", "suspended"]
ended_statuses = ["closed", "deletion_requested"]

[[holds]]                        # a hold reviewed like code
name = "litigation-2026-017"
client_ids = ["c-1042"]
rules = ["end-users-after-client-leaves", "client-contacts-after-client-leaves"]  # the rules that know clients

[holds_source]                   # holds legal places and lifts as rows, without a deploy
connector = "app"
table = "legal_holds"

[requests]                       # erasure requests: a client's instruction, an end user's, a child's data
connector = "app"
table = "erasure_requests"

[[rules]]
name = "cookie-data-24-months"
policy = "Privacy Policy s.4: site visitor cookie data is kept for up to 24 months"
connector = "app"
table = "cookie_events"
expire = {{ after = "24 months", field = "collected_at" }}
action = "delete"
max_fraction = 0.6

[[rules]]
name = "end-users-after-client-leaves"
policy = "Privacy Policy s.5: end-user data is kept while the client's account is active"
connector = "app"
table = "end_users"
expire = {{ client_field = "client_id", grace = "30 days" }}
subject_field = "email"          # which end user an end-user or child-data request names
action = "anonymize"
marker = "anonymized_at"
transforms = {{ email = "redact", full_name = "redact", phone = {{ mask = 4 }}, last_ip = "truncate_ip" }}

[[rules]]
name = "client-contacts-after-client-leaves"
policy = "Privacy Policy s.5: client data is kept while the client engages us; de-identified afterwards"
connector = "app"
table = "client_contacts"
expire = {{ client_field = "client_id", grace = "30 days" }}
action = "deidentify"
marker = "deidentified_at"
transforms = {{ email = "hmac", role = "keep" }}
"""

MONGO_CONFIG = """
[connectors.events]
type = "mongodb"
url = "${{DEMO_MONGODB_URL}}"          # the embedded server the demo starts (see the end of its output)
database = "events"

[[rules]]
name = "web-sessions-24-months"
policy = "Privacy Policy s.4: site visitor cookie data is kept for up to 24 months"
connector = "events"
collection = "web_sessions"
expire = {{ after = "24 months", field = "visit.started_at" }}
action = "delete"
max_fraction = 0.6
"""

S3_CONFIG = """
[connectors.files]
type = "s3"
endpoint_url = "${{DEMO_S3_URL}}"        # moto's S3 server, in-process while the demo runs
region = "us-east-1"

[[rules]]
name = "uploaded-visitor-files-24-months"
policy = "Privacy Policy s.4: site visitor data is kept for up to 24 months"
connector = "files"
bucket = "{bucket}"
prefix = "visitors/"
expire = {{ after = "24 months", field = "metadata:uploaded-at" }}
action = "delete"
max_fraction = 0.6
"""
S3_BUCKET = "demo-uploads"

# (id, status, days since the account ended): ended long ago, within grace, still active, held, unknown state.
CLIENTS = [("c-1001", "active", None), ("c-1002", "trial", None), ("c-1003", "closed", 75),
           ("c-1004", "closed", 10), ("c-1005", "deletion_requested", 45), ("c-1042", "closed", 400),
           ("c-1099", "paused", None)]


# A managed hold (a row legal wrote): the end users of c-1005, who asked for deletion 45 days ago, are kept.
HOLDS = [("tax-audit-2026", "c-1005", "end-users-after-client-leaves", "2027-12-31", "tax audit")]
# (id, client, subject, reason, hours ago): an active client's instruction, one end user's request, a known child's
# data (deleted, not anonymized), and a request under the litigation hold (stays pending, saying why).
REQUESTS = [("r-1", "c-1002", None, "client_instruction", 30),
            ("r-2", "c-1001", "user7@example.org", "end_user_request", 20),
            ("r-3", "c-1001", "user14@example.org", "child_data", 10),
            ("r-4", "c-1042", None, "client_instruction", 5)]


def build(directory: Path, now: datetime, seed: int = 2026, mongodb_url: str | None = None,
          s3_url: str | None = None) -> Path:
    """Create the sandbox: databases, keys and two configs. Returns the path of the one with every store.

    `retention.toml` holds the SQLite rules, holds and requests: it works after the demo, with no server.
    `all-stores.toml` adds the MongoDB and S3 rules, whose servers run in-process only while the demo does.
    """
    directory = directory.resolve()
    rng = random.Random(seed)
    with sqlite3.connect(directory / "app.db") as db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO clients VALUES (?, ?, ?, ?)",
                       [(cid, f"Client {cid}", status, _ts(now - timedelta(days=days)) if days else None)
                        for cid, status, days in CLIENTS])
        four_years = 4 * 365 * 24 * 60
        events: list[tuple[None, str, str | None, str, str]] = [
            (None, f"v-{rng.randrange(10**6):06d}", _ts(now - timedelta(minutes=rng.randrange(four_years))),
             f"198.51.100.{rng.randrange(256)}", rng.choice(["/", "/pricing", "/docs"])) for _ in range(4000)]
        events += [(None, "v-unknown", None, "203.0.113.9", "/")] * 3  # no timestamp: unknown age, never touched
        db.executemany("INSERT INTO cookie_events VALUES (?, ?, ?, ?, ?)", events)
        users = []
        for n in range(700):
            client = CLIENTS[n % len(CLIENTS)][0]
            users.append((None, client, f"user{n}@example.org", f"User Number{n}", f"+1-555-01{n:04d}",
                          f"192.0.2.{n % 256}", None))
        db.executemany("INSERT INTO end_users VALUES (?, ?, ?, ?, ?, ?, ?)", users)
        db.executemany("INSERT INTO client_contacts VALUES (?, ?, ?, ?, ?)",
                       [(None, cid, f"billing@{cid}.example.com", "billing", None) for cid, _, _ in CLIENTS])
        db.executemany("INSERT INTO legal_holds VALUES (?, ?, ?, ?, ?)", HOLDS)
        db.executemany("INSERT INTO erasure_requests VALUES (?, ?, ?, ?, ?, 'pending', NULL)",
                       [(rid, client, subject, reason, _ts(now - timedelta(hours=hours)))
                        for rid, client, subject, reason, hours in REQUESTS])
    keys = directory / "keys"
    generate_keypair(keys / "audit-private.pem", keys / "audit-public.pem")
    pseudonym = keys / "pseudonym.key"
    pseudonym.write_text(secrets.token_hex(32))
    pseudonym.chmod(0o600)
    if mongodb_url:
        _seed_mongodb(mongodb_url, now, rng)
    if s3_url:
        _seed_s3(s3_url, now, rng)
    (directory / "retention.toml").write_text(CONFIG.format(dir=directory))
    config = directory / "all-stores.toml"
    config.write_text(CONFIG.format(dir=directory) + (MONGO_CONFIG.format() if mongodb_url else "")
                      + (S3_CONFIG.format(bucket=S3_BUCKET) if s3_url else ""))
    return config


def _seed_s3(url: str, now: datetime, rng: random.Random) -> None:
    """Visitor uploads over four years, their age in metadata (LastModified is always "just now" here)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    s3.create_bucket(Bucket=S3_BUCKET)
    for n in range(300):
        uploaded = now - timedelta(minutes=rng.randrange(4 * 365 * 24 * 60))
        s3.put_object(Bucket=S3_BUCKET, Key=f"visitors/v-{n:04d}/avatar.png", Body=b"...",
                      Metadata={"uploaded-at": uploaded.isoformat()})


def _seed_mongodb(url: str, now: datetime, rng: random.Random) -> None:
    """Web sessions over four years in nested documents; a few without a usable date (unknown age)."""
    import pymongo

    four_years = 4 * 365 * 24 * 60
    client: pymongo.MongoClient[dict[str, Any]]
    with pymongo.MongoClient(url) as client:
        sessions: Collection[dict[str, Any]] = client["events"]["web_sessions"]
        sessions.insert_many([{"visit": {"started_at": now - timedelta(minutes=rng.randrange(four_years)),
                                         "page": rng.choice(["/", "/pricing", "/docs"])},
                               "visitor": f"v-{rng.randrange(10**6):06d}"} for _ in range(2000)])
        sessions.insert_many([{"visit": {"started_at": "last tuesday"}, "visitor": "v-unknown"} for _ in range(2)])


def _ts(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%d %H:%M:%S.%f")
