"""Transforms: the stores compute exactly what the reference implementation says."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from retention.connectors.sql_dialects import PostgresDialect
from sqlalchemy import literal, select
from sqlalchemy.dialects import postgresql

from retention import transforms
from retention.model import Transform
from tests.stores import PostgresStore

ADDRESSES = ["203.0.113.77", "10.1.2.3", "2001:db8:abcd:12::1", "::1", "fe80::1%eth0", "not-an-ip", "999.1.1.1",
             "1:2:3:4:5:6:7:8:9", "", " 203.0.113.7", "203.0.113.7\n", "::ffff:1.2.3.4",
             # shaped like IPv6 but not addresses: PostgreSQL's inet cast would fail the whole batch on them
             "1:2:3:4::5:6:7:8", "1:2:3:4:5:6::7:8", "1::2::3", "12345::1", ":1:2", "1:2:",
             # valid forms at the edges of the grammar
             "::", "1::", "::8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5::6:7", "0:0:0:0:0:0:0:0"]


def test_reference_truncate_ip() -> None:
    """IPv4 keeps its /24, IPv6 its /48; anything else becomes None."""
    assert "203.0.113.0" == transforms.truncate_ip("203.0.113.77")
    assert "2001:db8:abcd::" == transforms.truncate_ip("2001:db8:abcd:12::1")
    assert transforms.truncate_ip("not-an-ip") is None


def test_reference_mask_and_generalize() -> None:
    """mask keeps the last N characters; short values are masked whole; dates go to the month or year start."""
    assert ("*******4567", "***", None) == (transforms.mask("555-01-4567", 4), transforms.mask("abc", 4),
                                            transforms.mask(None, 4))
    assert date(1990, 1, 1) == transforms.generalize_date(date(1990, 6, 15), "year")
    assert datetime(2026, 11, 1, tzinfo=UTC) == transforms.generalize_date(datetime(2026, 11, 29, 3, tzinfo=UTC),
                                                                            "month")


def test_keyed_hasher_equals_hmac_sha256() -> None:
    """The fast hasher for record ids gives exactly HMAC-SHA256."""
    hasher = transforms.KeyedHasher(b"k" * 40)
    assert [transforms.pseudonym(b"k" * 40, v) for v in (1, "x", "é")] == [hasher(v) for v in (1, "x", "é")]


def test_keyed_hasher_names_many_records_as_it_names_one() -> None:
    """`records` (the batch loop) names single and composite keys exactly as `hasher(record_text(key))` does."""
    hasher = transforms.KeyedHasher(b"k" * 40)
    keys = [(1,), ("x",), ("é",), (7, "a"), ("a", None, 2.5)]
    assert hasher.records(keys) == tuple(hasher(transforms.record_text(key)) for key in keys)
    assert hasher.records([]) == ()


@pytest.mark.parametrize("address", ADDRESSES)
def test_postgres_truncate_ip_matches_the_reference_without_failing(address: str, pg_store: PostgresStore) -> None:
    """Server-side truncate_ip on text gives the reference's answer, and odd text never aborts the batch."""
    expression = PostgresDialect().transform(literal(address, postgresql.TEXT()).label("ip").element,
                                             Transform("ip", "truncate_ip"), None)
    with pg_store.engine.connect() as connection:
        assert transforms.truncate_ip(address) == connection.execute(select(expression)).scalar()


def test_postgres_hmac_matches_the_reference(pg_store: PostgresStore) -> None:
    """HMAC built from sha256() in SQL equals Python's hmac, for ASCII and non-ASCII text."""
    key = b"a-derived-key-of-32-bytes-length"
    with pg_store.engine.connect() as connection:
        for value in ("user@example.org", "Zoë Ångström", "12345"):
            sql = select(PostgresDialect.keyed_hash(literal(value, postgresql.TEXT()), key))
            assert transforms.pseudonym(key, value) == connection.execute(sql).scalar()


def test_postgres_mask_matches_the_reference(pg_store: PostgresStore) -> None:
    """Server-side mask equals the reference for long, short and empty values."""
    with pg_store.engine.connect() as connection:
        for value in ("+44 20 7946 0958", "abc", ""):
            sql = select(PostgresDialect().transform(literal(value, postgresql.TEXT()), Transform("p", "mask", 4),
                                                     None))
            assert transforms.mask(value, 4) == connection.execute(sql).scalar()
