"""One sensor per feed family: lists the feed's landing prefix and requests runs for new files,
many files per run (see discovery.py for the cursor that never loses or doubles a file)."""

import dagster as dg

from ingest_pipeline.defs.ingestion.jobs import feed_jobs
from ingest_pipeline.defs.warehouse.resources import IngestResource
from ingest_pipeline.discovery import plan_tick
from ingest_pipeline.feeds import FEEDS, FeedSpec
from ingest_pipeline.settings import get_settings


def build_feed_sensor(feed: FeedSpec) -> dg.SensorDefinition:
    settings = get_settings()

    @dg.sensor(
        name=f"{feed.name}_landing_sensor",
        job=feed_jobs[feed.name],
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Watches `{feed.landing_prefix}` in the landing zone for new {feed.name} files.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, ingest: IngestResource):
        current = get_settings()
        landing = ingest.landing()
        plan = plan_tick(
            landing.list(feed.landing_prefix),
            context.cursor,
            max_files_per_run=current.max_files_per_run,
            max_runs_per_tick=current.max_runs_per_tick,
            lookback_seconds=current.sensor_lookback_seconds,
        )
        for batch in plan.batches:
            yield dg.RunRequest(
                run_key=batch.run_key,
                partition_key=batch.partition_key,
                run_config={
                    "ops": {f"{feed.name}_bronze": {"config": {"files": batch.to_config()}}}
                },
                tags={"ingest/feed": feed.name, "ingest/files": str(len(batch.files))},
            )
        context.update_cursor(plan.cursor)
        if not plan.batches:
            yield dg.SkipReason(f"no new files under {feed.landing_prefix}")

    return landing_sensor


feed_sensors = [build_feed_sensor(feed) for feed in FEEDS.values()]
