"""Calendar durations and instants: UTC arithmetic, months clamped to the month's end."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from retention.timeutil import (
    Duration,
    end_of_day_or_instant,
    parse_duration,
    parse_instant,
    rfc3339,
    stored_instant,
)


@pytest.mark.parametrize(("now", "duration", "expected"), [
    (datetime(2026, 3, 31, tzinfo=UTC), "1 month", datetime(2026, 2, 28, tzinfo=UTC)),
    (datetime(2028, 2, 29, tzinfo=UTC), "24 months", datetime(2026, 2, 28, tzinfo=UTC)),
    (datetime(2028, 2, 29, tzinfo=UTC), "1 year", datetime(2027, 2, 28, tzinfo=UTC)),
    (datetime(2026, 1, 15, 3, tzinfo=UTC), "2 months", datetime(2025, 11, 15, 3, tzinfo=UTC)),
    (datetime(2026, 11, 29, 3, tzinfo=UTC), "30 days", datetime(2026, 10, 30, 3, tzinfo=UTC)),
    (datetime(2026, 11, 29, 3, tzinfo=UTC), "2 weeks", datetime(2026, 11, 15, 3, tzinfo=UTC)),
])
def test_calendar_arithmetic(now: datetime, duration: str, expected: datetime) -> None:
    """Months and years step the calendar and clamp; days and weeks are exact."""
    assert expected == parse_duration(duration).before(now)


@pytest.mark.parametrize(("duration", "days"), [
    ("30 days", 30), ("2 weeks", 14), ("1 month", 31), ("2 months", 62), ("1 year", 366), ("24 months", 731),
])
def test_longest_span_of_a_duration(duration: str, days: int) -> None:
    """The longest a calendar duration can last: 2 months from 31 August back to 30 June are 62 days."""
    assert timedelta(days=days) == parse_duration(duration).longest()


def test_offsets_are_converted_to_utc_first() -> None:
    """The cutoff of an instant given with an offset is computed on its UTC value."""
    tokyo = datetime(2026, 3, 1, 5, tzinfo=timezone(timedelta(hours=9)))  # 2026-02-28T20:00Z
    assert datetime(2026, 1, 28, 20, tzinfo=UTC) == Duration(1, "month").before(tokyo)


@pytest.mark.parametrize("text", ["24", "two years", "3 fortnights", "-1 day", ""])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    """The message shows the accepted forms."""
    with pytest.raises(ValueError, match="expected a duration like"):
        parse_duration(text)


def test_instants_need_an_offset() -> None:
    """A naive --now is ambiguous and refused."""
    with pytest.raises(ValueError, match="with an offset"):
        parse_instant("2026-11-29T03:00:00")
    assert datetime(2026, 11, 29, 2, tzinfo=UTC) == parse_instant("2026-11-29T03:00:00+01:00")


def test_a_hold_date_lasts_through_its_whole_day() -> None:
    """`until = "2027-06-30"` holds until the last microsecond of that UTC day."""
    assert datetime(2027, 6, 30, 23, 59, 59, 999999, tzinfo=UTC) == end_of_day_or_instant("2027-06-30")


def test_rfc3339_is_utc_with_z() -> None:
    """Reports and audit lines write instants in UTC with a Z."""
    assert "2026-11-29T03:00:00Z" == rfc3339(datetime(2026, 11, 29, 4, tzinfo=timezone(timedelta(hours=1))))


def test_stored_instants_are_read_as_utc() -> None:
    """Naive timestamps (SQL `timestamp`, BSON dates, SQLite text) are UTC; a date is its first instant."""
    utc = datetime(2024, 6, 12, 3, tzinfo=UTC)
    assert utc == stored_instant(datetime(2024, 6, 12, 3))
    assert utc == stored_instant(datetime(2024, 6, 12, 5, tzinfo=timezone(timedelta(hours=2))))
    assert datetime(2024, 6, 12, tzinfo=UTC) == stored_instant(date(2024, 6, 12))
    assert utc == stored_instant("2024-06-12 03:00:00") == stored_instant("2024-06-12T03:00:00.000Z")
    assert None is stored_instant("not a time") is stored_instant(17) is stored_instant(None)
