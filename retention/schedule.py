"""`retention schedule`: the same `run`, on the config's cron schedule, under APScheduler 3."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from retention.config import JobConfig
from retention.errors import ConfigError

log = structlog.get_logger("retention")
JOB_ID = "retention-run"
MISFIRE_GRACE_SECONDS = 6 * 3600  # a host that was down at 03:00 still runs when it comes back that morning


def trigger(job: JobConfig) -> CronTrigger:
    """The config's cron expression in its time zone."""
    try:
        return CronTrigger.from_crontab(job.schedule, timezone=zoneinfo.ZoneInfo(job.timezone))
    except ValueError as exc:
        raise ConfigError(f"not a valid cron expression: {exc}", key="job.schedule") from None


def next_fire(job: JobConfig, after: datetime) -> datetime | None:
    return trigger(job).get_next_fire_time(None, after)  # type: ignore[no-any-return]


def build(job: JobConfig, run: Callable[[], int], *, when: BaseTrigger | None = None,
          scheduler: BaseScheduler | None = None) -> BaseScheduler:
    """A scheduler that calls `run` on the schedule: misfires coalesced, one run at a time, a grace time."""
    scheduler = scheduler or BlockingScheduler(timezone=zoneinfo.ZoneInfo(job.timezone))
    scheduler.add_job(run, when or trigger(job), id=JOB_ID, coalesce=True, max_instances=1,
                      misfire_grace_time=MISFIRE_GRACE_SECONDS, replace_existing=True)

    def report(event: JobExecutionEvent) -> None:
        outcome: dict[str, Any] = {"exit_code": event.retval} if event.code == EVENT_JOB_EXECUTED else {}
        if event.code == EVENT_JOB_ERROR:
            outcome["error"] = type(event.exception).__name__
        jobs = scheduler.get_jobs()
        following = jobs[0].next_run_time.isoformat() if jobs and jobs[0].next_run_time else None
        name = {EVENT_JOB_EXECUTED: "scheduled_run_finished", EVENT_JOB_ERROR: "scheduled_run_failed",
                EVENT_JOB_MISSED: "scheduled_run_missed"}[event.code]
        log.info(name, next_run=following, **outcome)

    scheduler.add_listener(report, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    return scheduler
