"""The connector conformance suite: the same scenarios, the same expectations, on every store.

Shipped in the package, as singer-sdk ships its tests: a connector passes when a subclass of ConnectorConformance
that provides its `store` fixture (a `retention.testing.Store` for its database) passes. Scenarios speak through
the Store, never through the connector under test.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retention import transforms
from retention.connector import RowTables, capable, connector_type
from retention.secrets import RECORD_ID_LABEL, TRANSFORM_LABEL, derive
from retention.testing.sandbox import PSEUDONYM_KEY, Sandbox, audit_files, make_sandbox
from retention.testing.store import Store

NOW_TEXT = "2026-11-29T03:00:00Z"
NOW = datetime(2026, 11, 29, 3, tzinfo=UTC)  # the scenarios' instant: every age is counted from it

COOKIE_RULE = """
[[rules]]
name = "cookies"
policy = "s.4"
connector = "app"
{target} = "cookie_events"
expire = { after = "24 months", field = "collected_at" }
action = "delete"
max_fraction = 1.0
"""

END_USER_TRANSFORMS = ('{ email = "redact", full_name = { redact = "X" }, phone = { mask = 4 }, '
                       'last_ip = "truncate_ip", birth_date = { generalize_date = "year" } }')
END_USER_RULE = """
[[rules]]
name = "end-users"
policy = "s.5"
connector = "app"
{target} = "end_users"
expire = { client_field = "client_id", grace = "30 days" }
action = "anonymize"
marker = "anonymized_at"
transforms = TRANSFORMS
max_fraction = 1.0
""".replace("TRANSFORMS", END_USER_TRANSFORMS)

DEIDENTIFY_RULE = END_USER_RULE.replace('"anonymize"', '"deidentify"').split("transforms =")[0] + \
    'transforms = { email = "hmac", full_name = "hmac" }\nmax_fraction = 1.0\n'

CLIENTS = [("c-active", "active", None), ("c-gone", "closed", 60), ("c-recent", "closed", 10),
           ("c-asked", "deletion_requested", 40), ("c-odd", "paused", None), ("c-nodate", "closed", None)]
# end user i belongs to OWNERS[i]: expired are c-gone (1, 2) and c-asked (4); unknown are c-odd, c-nodate,
# c-missing (not in the registry) and the user without a client
OWNERS = ["c-active", "c-gone", "c-gone", "c-recent", "c-asked", "c-odd", "c-nodate", "c-missing", None]


def add_cookies(store: Store, now: Any, *ages: timedelta | None) -> None:
    store.insert("cookie_events", [{"id": i, "visitor_id": "v", "collected_at": now - age if age is not None else None,
                                    "ip": "192.0.2.1"} for i, age in enumerate(ages)])


def seed_clients(store: Store, now: Any) -> None:
    store.insert("clients", [{"id": c, "status": s, "closed_at": now - timedelta(days=d) if d else None}
                             for c, s, d in CLIENTS])
    store.insert("end_users", [{"id": i, "client_id": c, "email": f"user{i}@example.org", "full_name": "Ada Lovelace",
                                "phone": "+44 20 7946 0958", "last_ip": "203.0.113.77",
                                "birth_date": store.day(date(1990, 6, 15)), "anonymized_at": None}
                               for i, c in enumerate(OWNERS)])


def ids(store: Store, table: str, **where: Any) -> list[Any]:
    """The ids of `table`'s records whose fields equal `where` (a value of ... means "is set")."""
    return [row["id"] for row in store.find(table)
            if all((row.get(k) is not None) if v is ... else row.get(k) == v for k, v in where.items())]


class ConnectorConformance:
    """Scenarios every connector must pass. Subclasses provide the `store` fixture (an empty store)."""

    @pytest.fixture
    def sandbox(self, tmp_path: Path, store: Store) -> Sandbox:
        store.standard_schema()
        return make_sandbox(tmp_path / "sandbox", store)

    @pytest.fixture
    def now(self) -> Any:
        return NOW

    @staticmethod
    def requires(store: Store, *needs: str) -> None:
        """Skip a scenario the connector cannot take part in: an action it lacks, or `rows` (a registry table)."""
        kind = connector_type(store.type_name)
        missing = [need for need in needs if not (capable(kind, RowTables) if need == "rows" else need in kind.actions)]
        if missing:
            named = ["tables of rows (a client registry)" if need == "rows" else f"{need} action" for need in missing]
            pytest.skip(f"a {store.type_name} connector has no {', '.join(named)}")

    def plan(self, sandbox: Sandbox, *args: str, now: str = NOW_TEXT) -> dict[str, dict[str, Any]]:
        result = sandbox.cli("plan", "--now", now, "--format", "json", *args)
        assert result.exit_code in (0, 3), result.output + result.stderr
        return {rule["name"]: rule for rule in json.loads(result.stdout)["rules"]}

    def run(self, sandbox: Sandbox, *args: str, expect: int = 0) -> dict[str, Any]:
        result = sandbox.cli("run", "--now", NOW_TEXT, "--format", "json", *args)
        assert result.exit_code == expect, result.stdout + result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def test_age_rule_deletes_only_expired_records(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """Records older than 24 months go; newer ones and those without a timestamp stay."""
        add_cookies(store, now, timedelta(days=800), timedelta(days=731), timedelta(days=700), None)
        sandbox.write(COOKIE_RULE)
        planned = self.plan(sandbox)["cookies"]
        assert (2, 0, 1, "2024-11-29T03:00:00Z") == (planned["matched"], planned["held"], planned["unknown_age"],
                                                     planned["cutoff"])
        assert 2 == self.run(sandbox)["rules"][0]["changed"]
        assert [2, 3] == ids(store, "cookie_events")

    def test_months_clamp_to_the_end_of_the_month(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """As of 2028-02-29, "24 months" before is 2026-02-28: just before it expires, at it does not."""
        store.insert("cookie_events", [
            {"id": 1, "collected_at": now.replace(year=2026, month=2, day=27, hour=23, minute=59)},
            {"id": 2, "collected_at": now.replace(year=2026, month=2, day=28, hour=0, minute=0)}])
        sandbox.write(COOKIE_RULE)
        rule = self.plan(sandbox, now="2028-02-29T00:00:00Z")["cookies"]
        assert ("2026-02-28T00:00:00Z", 1) == (rule["cutoff"], rule["matched"])

    def test_client_lifetime_rule_follows_the_registry(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """Ended clients past their grace expire; active, recent, unknown-state and unregistered ones do not."""
        self.requires(store, "anonymize", "rows")
        seed_clients(store, now)
        sandbox.write(END_USER_RULE)
        planned = self.plan(sandbox)["end-users"]
        assert (3, 0, 4, None) == (planned["matched"], planned["held"], planned["unknown_age"], planned["cutoff"])
        self.run(sandbox)
        assert [1, 2, 4] == ids(store, "end_users", anonymized_at=...)

    def test_anonymize_applies_every_transform(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """redact, mask, truncate_ip and generalize_date give the documented values; other fields stay."""
        self.requires(store, "anonymize", "rows")
        seed_clients(store, now)
        sandbox.write(END_USER_RULE)
        self.run(sandbox)
        row = store.find("end_users")[1]
        assert ("[redacted]", "X", "************0958", "203.0.113.0", "1990-01-01", "c-gone") == (
            row["email"], row["full_name"], row["phone"], str(row["last_ip"]), str(row["birth_date"])[:10],
            row["client_id"])
        assert "user0@example.org" == store.find("end_users")[0]["email"]

    def test_processed_records_are_never_selected_again(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """After an anonymize run, the marker keeps the same records out of the next plan and run."""
        self.requires(store, "anonymize", "rows")
        seed_clients(store, now)
        sandbox.write(END_USER_RULE)
        self.run(sandbox)
        assert 0 == self.plan(sandbox)["end-users"]["matched"]
        assert 0 == self.run(sandbox)["rules"][0]["changed"]

    def test_deidentify_hmac_gives_keyed_pseudonyms(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """hmac writes HMAC-SHA256 under the derived transform key: the same value, the same pseudonym."""
        self.requires(store, "deidentify", "rows")
        seed_clients(store, now)
        sandbox.write(DEIDENTIFY_RULE)
        self.run(sandbox)
        key = derive(PSEUDONYM_KEY, TRANSFORM_LABEL)
        rows = store.find("end_users")
        assert [(transforms.pseudonym(key, f"user{i}@example.org"), transforms.pseudonym(key, "Ada Lovelace"))
                for i in (1, 2)] == [(rows[i]["email"], rows[i]["full_name"]) for i in (1, 2)]

    def test_client_hold_keeps_a_clients_records(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """A legal hold on a client: its expired records are counted as held and never changed."""
        self.requires(store, "anonymize", "rows")
        seed_clients(store, now)
        sandbox.write(END_USER_RULE, extra='[[holds]]\nname = "lit-1"\nclient_ids = ["c-gone"]\n')
        planned = self.plan(sandbox)["end-users"]
        assert (1, 2) == (planned["matched"], planned["held"])
        self.run(sandbox)
        assert [4] == ids(store, "end_users", anonymized_at=...)

    def test_rule_hold_keeps_the_whole_rule_until_it_lapses(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """A hold on a rule keeps all its records; once its `until` date has passed it no longer applies."""
        add_cookies(store, now, timedelta(days=800), timedelta(days=900))
        hold = '[[holds]]\nname = "audit-2026"\nrules = ["cookies"]\nuntil = "{until}"\n'
        sandbox.write(COOKIE_RULE, clients=False, extra=hold.format(until="2026-11-29"))
        held = self.plan(sandbox)["cookies"]
        assert (0, 2) == (held["matched"], held["held"])
        self.run(sandbox)
        assert [0, 1] == ids(store, "cookie_events")
        sandbox.write(COOKIE_RULE, clients=False, extra=hold.format(until="2026-11-28"))
        lapsed = self.plan(sandbox)["cookies"]
        assert (2, 0) == (lapsed["matched"], lapsed["held"])

    def test_fraction_threshold_skips_the_rule_unchanged(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """More than max_fraction of the target would change: the rule is skipped, nothing changes, exit 3."""
        add_cookies(store, now, timedelta(days=800), timedelta(days=800), timedelta(days=800), timedelta(days=1))
        sandbox.write(COOKIE_RULE.replace("max_fraction = 1.0", "max_fraction = 0.5"))
        rule = self.run(sandbox, expect=3)["rules"][0]
        assert ("over_threshold", 0, 3) == (rule["status"], rule["changed"], rule["matched"])
        assert 4 == len(store.find("cookie_events"))
        events = [json.loads(line)["event"] for line in audit_files(sandbox)[-1].read_text().splitlines()]
        assert "rule_skipped" in events and "batch_applied" not in events

    def test_record_threshold_skips_the_rule(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """max_records is an absolute cap on what one run may change per rule; plan exits 3 on it."""
        add_cookies(store, now, timedelta(days=800), timedelta(days=800))
        sandbox.write(COOKIE_RULE.replace("max_fraction = 1.0", "max_records = 1"))
        assert "over_threshold" == self.plan(sandbox)["cookies"]["status"]
        assert 3 == sandbox.cli("plan", "--now", NOW_TEXT).exit_code

    def test_plan_changes_nothing_byte_for_byte(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """`plan` reads only: the store is byte-for-byte the same afterwards."""
        self.requires(store, "anonymize", "rows")
        seed_clients(store, now)
        add_cookies(store, now, timedelta(days=800), timedelta(days=10))
        sandbox.write(COOKIE_RULE + END_USER_RULE)
        before = store.fingerprint()
        assert 3 == self.plan(sandbox)["end-users"]["matched"]
        assert before == store.fingerprint()

    def test_dry_run_changes_nothing_and_is_audited(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """`run --dry-run` counts and writes a signed audit log, and changes nothing."""
        self.requires(store, "anonymize", "rows")
        seed_clients(store, now)
        add_cookies(store, now, timedelta(days=800))
        sandbox.write(COOKIE_RULE + END_USER_RULE)
        before = store.fingerprint()
        report = self.run(sandbox, "--dry-run")
        assert before == store.fingerprint()
        assert ([1, 3], [0, 0]) == ([r["matched"] for r in report["rules"]], [r["changed"] for r in report["rules"]])
        assert json.loads(Path(report["audit_file"]).read_text().splitlines()[0])["dry_run"] is True

    def test_plan_and_dry_run_of_an_age_rule_change_nothing(self, sandbox: Sandbox, store: Store, now: Any
                                                            ) -> None:
        """A delete rule on ages alone, on every store (one without a registry too): plan and dry run read only."""
        add_cookies(store, now, timedelta(days=800), timedelta(days=10), None)
        sandbox.write(COOKIE_RULE, clients=False)
        before = store.fingerprint()
        assert 1 == self.plan(sandbox)["cookies"]["matched"]
        rule = self.run(sandbox, "--dry-run")["rules"][0]
        assert (1, 0) == (rule["matched"], rule["changed"])
        assert before == store.fingerprint()

    def test_backlog_is_measured_after_each_rule(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """`remaining` and `oldest_expired`: what a dry run would leave, what a threshold left, nothing after a run.

        Held and unknown-age records are not backlog; the oldest expired record is named by its timestamp.
        """
        add_cookies(store, now, timedelta(days=900), timedelta(days=800), timedelta(days=10), None)
        sandbox.write(COOKIE_RULE, clients=False)
        dry = self.run(sandbox, "--dry-run")["rules"][0]
        assert (2, "2024-06-12T03:00:00Z") == (dry["remaining"], dry["oldest_expired"])
        sandbox.write(COOKIE_RULE.replace("max_fraction = 1.0", "max_records = 1"), clients=False)
        skipped = self.run(sandbox, expect=3)["rules"][0]
        assert (2, "2024-06-12T03:00:00Z") == (skipped["remaining"], skipped["oldest_expired"])
        sandbox.write(COOKIE_RULE, clients=False)
        done = self.run(sandbox)
        assert (0, None) == (done["rules"][0]["remaining"], done["rules"][0]["oldest_expired"])
        events = [json.loads(line) for line in Path(done["audit_file"]).read_text().splitlines()]
        finished = next(e for e in events if e["event"] == "rule_finished")
        assert (0, None) == (finished["remaining"], finished["oldest_expired"])
        assert [2, 3] == ids(store, "cookie_events")

    def test_backlog_of_a_held_rule_is_zero(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """Records a legal hold keeps are not backlog: the rule met its work."""
        add_cookies(store, now, timedelta(days=900))
        sandbox.write(COOKIE_RULE, clients=False, extra='[[holds]]\nname = "lit"\nrules = ["cookies"]\n')
        rule = self.run(sandbox)["rules"][0]
        assert (1, 0, None) == (rule["held"], rule["remaining"], rule["oldest_expired"])

    def test_batches_cover_every_record(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """With batch_size = 2, seven expired records take four batches, each one audit event.

        A connector may keep several batches in flight (S3: DeleteObjects calls), so they may be audited in the
        order they complete: the batches are compared as a multiset.
        """
        add_cookies(store, now, *[timedelta(days=800)] * 7, timedelta(days=1))
        sandbox.write(COOKIE_RULE)
        report = self.run(sandbox)
        events = [json.loads(line) for line in Path(report["audit_file"]).read_text().splitlines()]
        assert sorted([2, 2, 2, 1]) == sorted(e["count"] for e in events if e["event"] == "batch_applied")
        assert [7] == ids(store, "cookie_events")

    def test_sidecar_names_records_by_the_reference_keyed_hash(self, sandbox: Sandbox, store: Store, now: Any
                                                               ) -> None:
        """Changed and held records appear in the sidecar as HMAC-SHA256 of their key under the record-id key."""
        self.requires(store, "anonymize", "rows")
        seed_clients(store, now)
        sandbox.write(END_USER_RULE, extra='[[holds]]\nname = "lit-1"\nclient_ids = ["c-asked"]\n')
        report = self.run(sandbox)
        key = derive(PSEUDONYM_KEY, RECORD_ID_LABEL)
        sidecar = Path(report["audit_file"].replace(".jsonl", ".ids")).read_text().splitlines()
        assert sorted([f"changed end-users {transforms.pseudonym(key, i)}" for i in (1, 2)]
                      + [f"held end-users {transforms.pseudonym(key, 4)}"]) == sorted(sidecar)

    def test_sidecar_names_held_then_deleted_records_by_the_reference_keyed_hash(
            self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """A delete rule's held records, and once the hold lapses its deleted ones, by HMAC-SHA256 of their key."""
        add_cookies(store, now, timedelta(days=800), timedelta(days=10), timedelta(days=900))
        key = derive(PSEUDONYM_KEY, RECORD_ID_LABEL)
        hold = '[[holds]]\nname = "audit-2026"\nrules = ["cookies"]\nuntil = "2026-12-31"\n'
        for extra, kind in ((hold, "held"), ("", "changed")):
            sandbox.write(COOKIE_RULE, clients=False, extra=extra)
            report = self.run(sandbox)
            sidecar = Path(report["audit_file"].replace(".jsonl", ".ids")).read_text().splitlines()
            assert sorted(f"{kind} cookies {transforms.pseudonym(key, i)}" for i in (0, 2)) == sorted(sidecar)
        assert [1] == ids(store, "cookie_events")

    def test_a_missing_target_fails_only_its_rule(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """A rule whose table or collection is gone fails (exit 1); the other rules complete."""
        add_cookies(store, now, timedelta(days=800))
        sandbox.write(COOKIE_RULE + COOKIE_RULE.replace('name = "cookies"', 'name = "ghost"')
                      .replace("cookie_events", "no_such_target"), clients=False)
        rules = {r["name"]: r for r in self.run(sandbox, expect=1)["rules"]}
        assert ("ok", 1, "error") == (rules["cookies"]["status"], rules["cookies"]["changed"], rules["ghost"]["status"])
        assert f"{store.target_name('no_such_target')} does not exist" in rules["ghost"]["error"]

    def test_client_lifetime_delete_without_a_marker(self, sandbox: Sandbox, store: Store, now: Any) -> None:
        """A client-lifetime rule that deletes (no marker, nothing but the registry in its predicate) works too."""
        self.requires(store, "rows")
        seed_clients(store, now)
        sandbox.write(END_USER_RULE.split("action =")[0] + 'action = "delete"\nmax_fraction = 1.0\n')
        assert (3, 3) == (self.plan(sandbox)["end-users"]["matched"], self.run(sandbox)["rules"][0]["changed"])
        assert [0, 3, 5, 6, 7, 8] == ids(store, "end_users")
