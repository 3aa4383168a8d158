"""One sensor per feed: lists the feed's landing prefix in every landing zone (tenants.py: the
default one and each tenant's own, each with its own cursor entry and per-tick cap), records new
files in the ledger as `queued` and requests runs for them, many files of one tenant per run
(discovery.py: the cursor that never loses or doubles a file). Each tick also reconciles the
ledger (recovery.py): files whose run failed, was killed or never started are requested again,
and parsed files are merged even when no new file arrives."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta

import dagster as dg
import duckdb
from dagster._core.storage.tags import RUN_KEY_TAG

from ingest_pipeline import ledger, warehouse
from ingest_pipeline.defs.ingestion.assets import feed_checks
from ingest_pipeline.defs.ingestion.jobs import feed_jobs
from ingest_pipeline.defs.ingestion.partitions import partition_key_for
from ingest_pipeline.defs.warehouse.resources import IngestResource
from ingest_pipeline.discovery import TickPlan, plan_tick
from ingest_pipeline.feeds import FEEDS, FeedSpec
from ingest_pipeline.pipeline import RetryPolicy, now
from ingest_pipeline.recovery import RunInfo, plan_recovery
from ingest_pipeline.settings import Settings, get_settings
from ingest_pipeline.tenants import (
    TENANT_TAG,
    TenantLanding,
    by_tenant,
    describe_problem,
    dump_cursors,
    landing_cursors,
    round_robin,
    run_key,
)

# The sensor waits at most this long for the warehouse (a merge may hold it); when it cannot
# get it, the tick is skipped and the cursor stays, so the next tick sees the same files.
LEDGER_WAIT_SECONDS = 20.0


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts, delay_seconds=settings.retry_delay_seconds
    )


def _run_lookup(
    instance: dg.DagsterInstance, files: Sequence[ledger.LedgerFile]
) -> Callable[[ledger.LedgerFile], RunInfo]:
    """Whether the run each file belongs to (its run id, else its request's run key) is alive."""
    run_ids = sorted({f.run_id for f in files if f.run_id})
    keys = sorted({f.request_key for f in files if not f.run_id and f.request_key})
    by_id: dict[str, dg.DagsterRun] = {}
    by_key: dict[str, dg.DagsterRun] = {}
    if run_ids:
        for run in instance.get_runs(dg.RunsFilter(run_ids=run_ids)):
            by_id[run.run_id] = run
    if keys:
        for run in instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: keys})):
            by_key.setdefault(run.tags[RUN_KEY_TAG], run)

    def info(f: ledger.LedgerFile) -> RunInfo:
        run = by_id.get(f.run_id or "") or by_key.get(f.request_key or "")
        if run is None:
            return RunInfo("unknown")
        description = f"run {run.run_id[:8]} ({run.status.value})"
        return RunInfo("ended" if run.is_finished else "active", description)

    return info


def job_busy(instance: dg.DagsterInstance, job_name: str) -> bool:
    """Whether a run of the job is queued, starting or running."""
    in_progress = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
    return bool(
        instance.get_run_ids(dg.RunsFilter(job_name=job_name, statuses=in_progress), limit=1)
    )


def _bronze_request(
    feed: FeedSpec,
    run_key: str,
    files: int,
    partition: str,
    *,
    isolate: bool = False,
    reason: str,
    tenant: str = "",
) -> dg.RunRequest:
    """A run of the feed's job for the files the ledger holds under `run_key` (its request):
    one tenant's, tagged `ingest/tenant` (dagster.yaml limits the runs in progress per tenant)."""
    tags = {"ingest/feed": feed.name, "ingest/files": str(files), "ingest/why": reason}
    if tenant:
        tags[TENANT_TAG] = tenant
    return dg.RunRequest(
        run_key=run_key,
        partition_key=partition,
        run_config={
            "ops": {f"{feed.name}_bronze": {"config": {"request": run_key, "isolate": isolate}}}
        },
        tags=tags,
    )


def build_feed_sensor(feed: FeedSpec) -> dg.SensorDefinition:
    settings = get_settings()
    job = feed_jobs[feed.name]

    @dg.sensor(
        name=f"{feed.name}_landing_sensor",
        job=job,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Watches `{feed.landing_prefix}` in every landing zone (the default one and each "
            f"tenant's own) for new {feed.name} files, and takes again the files whose run "
            "failed or died."
        ),
    )
    def landing_sensor(
        context: dg.SensorEvaluationContext, ingest: IngestResource
    ) -> Iterator[dg.RunRequest | dg.SkipReason]:
        current = get_settings()
        cursors = landing_cursors(context.cursor)
        plans, cursors, problems = _plan_landings(context, ingest, feed, current, cursors)
        requests: list[dg.RunRequest] = []
        at = now()
        try:
            with (
                warehouse.connect(ingest.warehouse(), wait_seconds=LEDGER_WAIT_SECONDS) as con,
                warehouse.transaction(con),
            ):
                requests += _reconcile(context, con, feed, current, job.name)
                per_landing = [_queue_new(con, feed, landing, plan, at) for landing, plan in plans]
                requests += round_robin(per_landing)
        except duckdb.Error as exc:
            # The cursor is not moved: the next tick sees the same files again.
            yield dg.SkipReason(f"the warehouse ledger could not be written now ({exc}); retrying")
            return
        yield from requests
        context.update_cursor(dump_cursors(cursors))
        if not requests:
            unlisted = f"; not listed: {'; '.join(problems)}" if problems else ""
            yield dg.SkipReason(f"no new files under {feed.landing_prefix}{unlisted}")

    return landing_sensor


def _plan_landings(
    context: dg.SensorEvaluationContext,
    ingest: IngestResource,
    feed: FeedSpec,
    settings: Settings,
    cursors: dict[str, str],
) -> tuple[list[tuple[TenantLanding, TickPlan]], dict[str, str], list[str]]:
    """Each landing zone listed and planned on its own (its cursor entry, its per-tick cap), so
    one tenant's burst does not use up another's runs. A zone that cannot be listed (bad
    credentials, a missing bucket) is reported and keeps its cursor entry; the others go on.
    Returns the plans, the cursor entries for the next tick (entries of zones no longer
    configured are dropped) and the problems."""
    plans: list[tuple[TenantLanding, TickPlan]] = []
    entries: dict[str, str] = {}
    problems: list[str] = []
    for landing in ingest.landings():
        try:
            zone = ingest.open_landing(landing)
            plan = plan_tick(
                zone.list(feed.landing_prefix),
                cursors.get(landing.entry),
                max_files_per_run=settings.max_files_per_run,
                max_runs_per_tick=settings.max_runs_per_tick,
                lookback_seconds=settings.sensor_lookback_seconds,
            )
        except Exception as exc:  # noqa: BLE001 - one zone's trouble is reported, not raised
            problem = f"{landing.name}: {describe_problem(exc, landing.url)}"
            context.log.warning(f"{feed.landing_prefix} not listed in {problem}")
            problems.append(problem)
            if landing.entry in cursors:
                entries[landing.entry] = cursors[landing.entry]
            continue
        plans.append((landing, plan))
        entries[landing.entry] = plan.cursor
        if plan.pending:
            context.log.info(
                f"{landing.name}: {plan.pending} more {feed.name} file(s) wait for the next tick"
            )
    return plans, entries, problems


def _queue_new(
    con: duckdb.DuckDBPyConnection,
    feed: FeedSpec,
    landing: TenantLanding,
    plan: TickPlan,
    at: datetime,
) -> list[dg.RunRequest]:
    """Queue a landing zone's new files in the ledger: a request per batch and tenant."""
    requests = []
    for batch in plan.batches:
        groups = by_tenant([landing.source(o, feed) for o in batch.files])
        for tenant, sources in groups:
            key = run_key(landing, tenant, batch.run_key, split=len(groups) > 1)
            new = ledger.queue(con, sources, feed.name, at=at, request_key=key)
            if new:
                requests.append(
                    _bronze_request(
                        feed, key, len(new), batch.partition_key, reason="new files", tenant=tenant
                    )
                )
    return requests


def _reconcile(
    context: dg.SensorEvaluationContext,
    con: duckdb.DuckDBPyConnection,
    feed: FeedSpec,
    settings: Settings,
    job_name: str,
) -> list[dg.RunRequest]:
    """Apply recovery.plan_recovery to the feed's active files; the run requests it asks for."""
    active = ledger.active_files(con, feed.name)
    if not active:
        return []
    at = now()
    plan = plan_recovery(
        active,
        feed=feed.name,
        now=at,
        run_info=_run_lookup(context.instance, active),
        feed_busy=job_busy(context.instance, job_name),
        retry=retry_policy(settings),
        grace=timedelta(seconds=settings.request_grace_seconds),
        stuck_after=timedelta(seconds=settings.stuck_after_seconds),
        max_files_per_run=settings.max_files_per_run,
        salt=at.isoformat(),
    )
    for f, error in plan.fail:
        ledger.fail(con, [f], error=error, at=at)
        context.log.warning(f"{f.source_uri}: failed for good: {error}")
    for f, why, retry_at in plan.postpone:
        ledger.postpone(con, [f], error=why, retry_at=retry_at)
    requests = []
    for again in plan.requests:
        ledger.requeue(con, again.files, request_key=again.request_key, at=at)
        requests.append(
            _bronze_request(
                feed,
                again.request_key,
                len(again.files),
                max(f.landed_at for f in again.files).strftime("%Y-%m-%d"),
                isolate=again.isolate,
                reason="isolated retry" if again.isolate else "retry",
                tenant=again.tenant,
            )
        )
    if plan.merge_needed:
        # One merge per landing date with parsed files: each partition's materialization
        # reports its own files (a run merges only its partitions' files).
        parsed = [f for f in active if f.status == "parsed"]
        for partition in sorted({partition_key_for(f.landed_at) for f in parsed}):
            requests.append(
                dg.RunRequest(
                    run_key=f"{feed.name}-merge-{partition}-{at.isoformat()}",
                    partition_key=partition,
                    asset_selection=[dg.AssetKey(f"{feed.name}_warehouse")],
                    tags={"ingest/feed": feed.name, "ingest/why": "merge parsed files"},
                )
            )
    return requests


feed_sensors = [build_feed_sensor(feed) for feed in FEEDS.values()]

# The feeds' asset checks carry a cron automation condition (a stuck file is one nothing runs
# for); this sensor evaluates it.
ledger_health_sensor = dg.AutomationConditionSensorDefinition(
    "ledger_health_sensor",
    target=dg.AssetSelection.checks(*feed_checks),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Runs each feed's `files_reach_a_final_status` check every 10 minutes.",
)
