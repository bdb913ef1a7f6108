"""`check` confirms the configured role may do what each rule needs, and prints the GRANTs that are missing."""

from __future__ import annotations

from pathlib import Path

from tests.conformance import COOKIE_RULE, END_USER_RULE, seed_clients
from tests.conftest import NOW
from tests.helpers import Sandbox, make_sandbox
from tests.stores import PostgresStore

REQUESTS = '[requests]\nconnector = "app"\ntable = "erasure_requests"\n'


def _as_role(tmp_path: Path, pg_store: PostgresStore, role: str) -> Sandbox:
    pg_store.standard_schema()
    seed_clients(pg_store, NOW)
    pg_store.execute("CREATE TABLE erasure_requests (id TEXT PRIMARY KEY, client_id TEXT, subject_id TEXT, "
                     "reason TEXT, received_at TIMESTAMPTZ, status TEXT, result TEXT)")
    pg_store.execute(f'DROP ROLE IF EXISTS "{role}"; CREATE ROLE "{role}" LOGIN; '
                     f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    box = make_sandbox(tmp_path / "sandbox", pg_store)
    box.write(COOKIE_RULE + END_USER_RULE, extra=REQUESTS)
    url = pg_store.url.replace("postgresql://postgres@", f"postgresql://{role}@")
    assert url != pg_store.url
    box.env = lambda: {**Sandbox.env(box), "APP_DATABASE_URL": url}  # type: ignore[method-assign]
    return box


def test_a_select_only_role_fails_check_with_the_grants_it_needs(tmp_path: Path, pg_store: PostgresStore) -> None:
    """DELETE for a delete rule, UPDATE of the changed columns, UPDATE to share-lock the registry and mark requests."""
    role = f"ro_{tmp_path.name[-8:]}".replace("-", "_").lower()
    box = _as_role(tmp_path, pg_store, role)
    result = box.cli("check")
    assert 2 == result.exit_code, result.stdout + result.stderr
    for grant in (f'GRANT DELETE ON public.cookie_events TO "{role}";',
                  f'GRANT DELETE ON public.end_users TO "{role}";',  # child_data requests delete
                  f'GRANT UPDATE (anonymized_at, birth_date, email, full_name, last_ip, phone) ON public.end_users '
                  f'TO "{role}";',
                  f'GRANT UPDATE (id) ON public.clients TO "{role}";',
                  f'GRANT UPDATE (result, status) ON public.erasure_requests TO "{role}";'):
        assert grant in result.stdout, result.stdout
    for statement in (line for line in result.stdout.splitlines() if line.startswith("GRANT")):
        pg_store.execute(statement)
    result = box.cli("check")
    assert 0 == result.exit_code, result.stdout + result.stderr
    assert 0 == box.cli("run", "--now", "2026-11-29T03:00:00Z").exit_code
