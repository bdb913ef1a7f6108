"""Instants and calendar durations, always in UTC."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache

_DURATION = re.compile(r"^\s*(\d+)\s*(day|week|month|year)s?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Duration:
    """A calendar duration such as "24 months": months and years clamp to the end of the month."""

    amount: int
    unit: str  # day | week | month | year

    def __str__(self) -> str:
        return f"{self.amount} {self.unit}{'' if self.amount == 1 else 's'}"

    def before(self, instant: datetime) -> datetime:
        """The instant this duration before `instant`, with calendar arithmetic in UTC."""
        instant = instant.astimezone(UTC)
        if self.unit == "day":
            return instant - timedelta(days=self.amount)
        if self.unit == "week":
            return instant - timedelta(weeks=self.amount)
        months = self.amount * (12 if self.unit == "year" else 1)
        return _minus_months(instant, months)

    def longest(self) -> timedelta:
        """The longest span this duration can cover (24 months: 731 days), to compare it with a fixed span: one at
        least this long never ends before the duration does, whatever the date."""
        if self.unit in ("day", "week"):
            return timedelta(days=self.amount * (7 if self.unit == "week" else 1))
        return timedelta(days=_longest_months(self.amount * (12 if self.unit == "year" else 1)))


@cache
def _longest_months(months: int) -> int:
    """Days in the longest span of `months` calendar months. Counted back from each month's last day (clamping
    reaches furthest back from there) over one 400-year cycle, after which the Gregorian calendar repeats."""
    longest = 0
    for index in range(2400 * 12, 2800 * 12):
        year, month = divmod(index, 12)
        end = datetime(year, month + 1, calendar.monthrange(year, month + 1)[1], tzinfo=UTC)
        longest = max(longest, (end - _minus_months(end, months)).days)
    return longest


def _minus_months(instant: datetime, months: int) -> datetime:
    index = instant.year * 12 + (instant.month - 1) - months
    year, month = divmod(index, 12)
    month += 1
    day = min(instant.day, calendar.monthrange(year, month)[1])
    return instant.replace(year=year, month=month, day=day)


MAX_YEARS = 1000  # longer than any retention period, short enough for every date arithmetic to work
_UNIT_DAYS = {"day": 1, "week": 7, "month": 31, "year": 366}


def parse_duration(text: str) -> Duration:
    """Parse "N day(s)|week(s)|month(s)|year(s)"; raise ValueError with the accepted forms."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f'expected a duration like "30 days", "6 weeks", "24 months" or "7 years", got {text!r}')
    duration = Duration(int(match.group(1)), match.group(2).lower())
    if duration.amount * _UNIT_DAYS[duration.unit] > MAX_YEARS * 366:
        raise ValueError(f"{text!r} is longer than {MAX_YEARS} years, more than any date arithmetic here can "
                         "take; a retention period is years, not millennia")
    return duration


_SPAN = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day|week)s?\s*$", re.IGNORECASE)


def parse_span(text: str) -> timedelta:
    """Parse a span of clock time, "N second(s)|minute(s)|hour(s)|day(s)|week(s)", above zero."""
    match = _SPAN.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f'expected a span above zero like "90 seconds", "30 minutes" or "4 hours", got {text!r}')
    amount, unit = int(match.group(1)), match.group(2).lower()
    if amount * {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}[unit] > 366 * 86400:
        raise ValueError(f"expected a span of at most a year, got {text!r}")
    return timedelta(**{f"{unit}s": amount})


def parse_instant(text: str) -> datetime:
    """Parse an RFC 3339 instant; a time zone offset (or Z) is required."""
    try:
        value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(f"expected an RFC 3339 instant like 2026-11-29T03:00:00Z, got {text!r}") from None
    if value.tzinfo is None:
        raise ValueError(f"expected an RFC 3339 instant with an offset or Z, got {text!r}")
    return value.astimezone(UTC)


def end_of_day_or_instant(text: str) -> datetime:
    """A hold's `until`: a UTC date counts through its last microsecond; an instant is taken as is."""
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        return parse_instant(text)
    return datetime.combine(day, time.max, tzinfo=UTC)


def stored_instant(value: object) -> datetime | None:
    """An instant as a store returned it, in UTC: naive timestamps (SQL `timestamp`, BSON dates) are UTC, a date is
    its first instant, text is ISO 8601 (SQLite's; naive is UTC too); anything else is None."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.min, tzinfo=UTC)
    if isinstance(value, str):
        try:
            return stored_instant(datetime.fromisoformat(value.strip().replace("z", "Z")))
        except ValueError:
            return None
    return None


def rfc3339(instant: datetime) -> str:
    """Format an instant as RFC 3339 UTC with a Z, microseconds only when present."""
    instant = instant.astimezone(UTC)
    spec = "microseconds" if instant.microsecond else "seconds"
    return instant.replace(tzinfo=None).isoformat(timespec=spec) + "Z"
