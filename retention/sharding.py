"""Splitting a large rule into shards that run side by side (threads, or Dask workers), judged whole first.

A rule is split only where that is safe and pays: its store can split it (the Sharding capability), the run can
run several units at once (executor "threads", or Dask), it serves no erasure request, and it has at least one
batch of records to change per shard. The coordinator first assesses the whole rule, as its unit would: a target
problem or a threshold leaves it whole, so that the unit itself records why it changes nothing, and no shard ever
starts on a rule whose thresholds the whole rule trips. Otherwise each shard runs as a unit of its own: its
`rule_started` names the shard ("2/8"), its batches name their worker, and the run's report and metrics show the
rule once, its shards' counts added up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import structlog

from retention.config import Config
from retention.connector import Sharding
from retention.dispatch import Unit
from retention.execute import assess, report_for
from retention.redact import error_summary
from retention.report import ERROR, INTERRUPTED, OK, OVER_THRESHOLD, RuleReport
from retention.stores import Stores

log = structlog.get_logger("retention")

SEVERITY = (OK, OVER_THRESHOLD, INTERRUPTED, ERROR)  # a merged rule reports its shards' worst status


def split(units: Sequence[Unit], connectors: Stores, parts: int, config: Config) -> list[Unit]:
    """The units, each large rule replaced by its shards (in order); `parts` is how many can run at once."""
    return [piece for unit in units for piece in _split(unit, connectors, parts, config.batch_size(unit.work.rule))]


def _split(unit: Unit, connectors: Stores, parts: int, batch_size: int) -> list[Unit]:
    work = unit.work
    connector = connectors[work.rule.connector]
    if parts < 2 or work.request is not None or not isinstance(connector, Sharding):
        return [unit]
    whole = report_for(work)
    try:
        judged, counts = assess(connectors, work, whole)
        if counts is None or whole.status != OK or counts.matched < 2 * batch_size:
            return [unit]  # left whole: the unit records its own problem, threshold or small size
        shards = connector.shards(judged.selection, min(parts, counts.matched // batch_size))
    except Exception as exc:  # the unit meets the same trouble, and says so in the log
        log.warning("not_sharded", rule=work.rule.name, error_class=error_summary(exc)[0])
        return [unit]
    if len(shards) < 2:
        return [unit]
    log.info("rule_sharded", rule=work.rule.name, shards=len(shards), matched=counts.matched)
    return [Unit(replace(judged, selection=replace(judged.selection, shard=shard)), report_for(work), part_of=unit)
            for shard in shards]


def reports_of(units: Sequence[Unit]) -> list[RuleReport]:
    """One report per original unit that started, in order: a sharded rule's shards merged into its own."""
    groups: dict[int, tuple[Unit, list[RuleReport]]] = {}
    for unit in units:
        original = unit.part_of or unit
        _, started = groups.setdefault(id(original), (original, []))
        if unit.started:
            started.append(unit.report)
    return [started[0] if started[0] is original.report else merged(original.report, started)
            for original, started in groups.values() if started]


def merged(whole: RuleReport, shards: Sequence[RuleReport]) -> RuleReport:
    """The whole rule's report from its shards': counts added, the worst status, every distinct error."""
    whole.total = max(shard.total for shard in shards)
    for name in ("matched", "held", "unknown_age", "changed", "blocked"):
        setattr(whole, name, sum(getattr(shard, name) for shard in shards))
    whole.duration_ms = max(shard.duration_ms for shard in shards)
    measured = [shard.remaining for shard in shards if shard.remaining is not None]
    whole.remaining = sum(measured) if len(measured) == len(shards) else None  # unknown when one shard is
    whole.oldest_expired = min((s.oldest_expired for s in shards if s.oldest_expired), default=None)
    whole.status = max((shard.status for shard in shards), key=SEVERITY.index)
    errors = list(dict.fromkeys(shard.error for shard in shards if shard.error))
    whole.error = "; ".join(errors) or None
    whole.statement = shards[0].statement
    whole.held_by = tuple(dict.fromkeys(name for shard in shards for name in shard.held_by))
    return whole
