"""When an import's schedule runs it: its cron (`once`: every minute until it has run), in the
import's time zone, not before `start_at`, not after `end_at` or `end_after_runs` runs. Dagster
schedules have no end conditions of their own: a tick past them is skipped with the reason,
which the UI shows on the tick."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from ingest_pipeline.config import ImportConfig

EVERY_MINUTE = "* * * * *"


def import_cron(imp: ImportConfig) -> str:
    """The cron of the import's schedule (already a cron string unless `once`)."""
    return EVERY_MINUTE if imp.schedule == "once" else imp.schedule


def local_time(imp: ImportConfig, text: str) -> datetime:
    """An ISO date or time of ingest.yaml; without an offset, in the import's time zone."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(imp.timezone))
    return value


@dataclass(frozen=True)
class TickDecision:
    run: bool
    reason: str


def tick_decision(
    imp: ImportConfig, tick: datetime, scheduled_runs: int, *, run_in_progress: bool = False
) -> TickDecision:
    """Whether the schedule's tick at `tick` starts a run, given the runs the schedule started
    before (manual runs are the operator's and do not count)."""
    if imp.end_at is not None and tick >= local_time(imp, imp.end_at):
        return TickDecision(False, f"the import ended at {imp.end_at} ({imp.timezone}; end_at)")
    if imp.end_after_runs is not None and scheduled_runs >= imp.end_after_runs:
        return TickDecision(
            False, f"the import ended after {imp.end_after_runs} run(s) (end_after_runs)"
        )
    if imp.schedule == "once" and scheduled_runs >= 1:
        return TickDecision(False, "a one-time import (schedule: once) that has run")
    if imp.start_at is not None and tick < local_time(imp, imp.start_at):
        return TickDecision(False, f"not before {imp.start_at} ({imp.timezone}; start_at)")
    if run_in_progress:
        return TickDecision(
            False, "the import's previous run is still in progress; the next tick takes new files"
        )
    return TickDecision(True, "")
