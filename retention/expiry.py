"""Native expiry against the rules: a store's own TTL index or lifecycle rule that deletes before a rule does, or
deletes records a legal hold keeps (the store knows nothing of this job's holds)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from retention.config import Config, Rule
from retention.connector import Connector, Deletes, NativeExpiry, NativeRule
from retention.errors import RetentionError
from retention.holds import applies
from retention.model import Selection
from retention.timeutil import rfc3339

EARLIER = "earlier than the rule"
HELD_AT_RISK = "held records at risk"
LATER = "later than the rule"
DELETES_NOTHING = "deletes nothing"
NOT_CHECKED = "not checked"
PROBLEMS = frozenset({EARLIER, HELD_AT_RISK})


@dataclass(frozen=True)
class ExpiryFinding:
    """One native expiry on a rule's target, and how it compares with the rule."""

    native: NativeRule | None  # None: the store would not say (NOT_CHECKED)
    verdict: str
    detail: str

    @property
    def problem(self) -> bool:
        return self.verdict in PROBLEMS

    @property
    def what(self) -> str:
        return describe(self.native) if self.native else "native expiry (unread)"


def native_findings(config: Config, rule: Rule, connector: Connector, selection: Selection, now: datetime
                    ) -> tuple[ExpiryFinding, ...]:
    """Each native expiry on the rule's target, judged; a store that will not say is a finding, not a failure."""
    if not isinstance(connector, NativeExpiry):
        return ()
    try:
        natives = connector.native_expiry(selection)
    except RetentionError as exc:
        return (ExpiryFinding(None, NOT_CHECKED, str(exc)),)
    holds = holds_for(config, rule, now)
    return tuple(judge(rule, native, holds) for native in natives)


def holds_for(config: Config, rule: Rule, now: datetime) -> tuple[str, ...]:
    """The holds that may keep records of the rule: the config's in force for it, and a holds table, whose rows
    legal may add at any time."""
    names = [repr(hold.name) for hold in config.holds if hold.active_at(now) and applies(hold, rule)]
    if config.holds_source:
        names.append(f"any hold in [holds_source] {config.holds_source.connector}:{config.holds_source.table}")
    return tuple(names)


def judge(rule: Rule, native: NativeRule, holds: tuple[str, ...]) -> ExpiryFinding:
    """Earlier than the rule, or at or after it while holds may keep records: a problem. Later without holds: a note."""
    if native.deletes is Deletes.NOTHING:
        return ExpiryFinding(native, DELETES_NOTHING, "on a versioned bucket it only adds a delete marker: the data "
                             "stays as a noncurrent version, for the rule (or a NoncurrentVersionExpiration) to delete")
    why = _earlier(rule, native)
    if why:
        return ExpiryFinding(native, EARLIER, f"{why}; it deletes records the rule keeps, held ones too")
    after = rule.expire.after
    later = f"{span(native.after)} is at least the rule's {after} (at most {after.longest().days} days)" \
        if native.after is not None and after is not None else "it is not earlier than the rule"
    if holds:
        return ExpiryFinding(native, HELD_AT_RISK, f"{later}, but it deletes records legal holds keep: "
                             f"{', '.join(holds)}")
    then = f"; then it deletes the records the rule left ({rule.action})" if rule.action != "delete" else ""
    return ExpiryFinding(native, LATER, f"{later}, so the rule acts first{then}")


def _earlier(rule: Rule, native: NativeRule) -> str | None:
    """Why the native expiry can delete a record before the rule expires it; None when it never can.

    A calendar `after` is compared at its longest (24 months: 731 days): a fixed span at least that long never
    ends first, whatever the date; a shorter one does on some dates.
    """
    if native.after is None:
        return f"from {rfc3339(native.on) if native.on else 'a date'} on it deletes whatever the age"
    if rule.expire.after is None or rule.expire.field is None:
        return "the rule expires records when their client has left; this deletes by age, active clients' too"
    if native.field != rule.expire.field:
        return (f"it ages by {native.field!r}, the rule by {rule.expire.field!r}: they cannot be compared, so it is "
                "taken as earlier")
    longest = rule.expire.after.longest()
    if native.after < longest:
        return f"{span(native.after)} is shorter than the rule's {rule.expire.after} (at most {longest.days} days)"
    return None


def describe(native: NativeRule) -> str:
    """The native expiry in a line; the store's names (index, rule ID, fields) repr'd, so none can forge a line."""
    if native.after is None:
        when = f"from {rfc3339(native.on)} on" if native.on else "on a date"
    elif native.deletes is Deletes.NONCURRENT:
        when = f"{span(native.after)} after they become noncurrent"
    elif native.deletes is Deletes.DOCUMENTS:
        when = f"{span(native.after)} after {native.field!r}"
    else:
        when = f"{span(native.after)} after they were written"
    what = "current versions (a delete marker)" if native.deletes is Deletes.NOTHING else str(native.deletes)
    only = f" (only {'; '.join(native.narrowed)})" if native.narrowed else ""
    return f"{native.kind} {native.name!r}: {what} {when}{only}"


def span(value: timedelta) -> str:
    """A fixed span in the largest whole unit: "30 days", "12 hours", "90 seconds"."""
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            seconds //= size
            return f"{seconds} {unit}{'' if seconds == 1 else 's'}"
    return f"{seconds} second{'' if seconds == 1 else 's'}"
