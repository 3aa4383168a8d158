"""Per feed: a bronze asset (files -> Parquet + ledger + quarantine) and a warehouse asset
(merge of every parsed file into the feed's tables). Both are built from the feed declaration."""

import dagster as dg

from ingest_pipeline import ledger, pipeline, warehouse
from ingest_pipeline.config import IngestConfig, load_config
from ingest_pipeline.defs.ingestion.partitions import landing_date_partitions
from ingest_pipeline.defs.warehouse.resources import IngestResource
from ingest_pipeline.feeds import FEEDS, FeedSpec
from ingest_pipeline.health import ledger_health, ledger_health_metadata
from ingest_pipeline.landing import LandedObject
from ingest_pipeline.ledger import rejects_sample
from ingest_pipeline.settings import get_settings

WAREHOUSE_POOL = "duckdb_warehouse"


def ingest_config() -> IngestConfig:
    return load_config(get_settings().config_path)


# An invalid ingest.yaml fails here, when the code location loads, naming the offending key.
ingest_config()


class LandedFileConfig(dg.Config):
    """One landed object as the sensor saw it (LandedObject.to_dict)."""

    key: str
    etag: str
    size: int
    last_modified: str
    uri: str


class IngestFilesConfig(dg.Config):
    """Which files a run ingests. Empty: every file of the feed that landed on the partition's
    date (a backfill), re-ingested idempotently."""

    # The sensor's request: the files the ledger holds as queued under this key (a run's
    # config stays small however many files it takes).
    request: str = ""
    files: list[LandedFileConfig] = []
    keys: list[str] = []  # landing keys to (re-)ingest on their own, e.g. track/2026/a.jsonl
    force: bool = False  # re-ingest files the ledger already shows as ingested
    # Each file in a pass of its own: set by the reconciliation for files that were being read
    # when an earlier run died, so that a file that kills its run kills it alone.
    isolate: bool = False


def _files_to_ingest(
    context: dg.AssetExecutionContext,
    config: IngestFilesConfig,
    feed: FeedSpec,
    ingest: IngestResource,
) -> tuple[list[LandedObject], bool]:
    landing = ingest.landing()
    if config.request:
        with warehouse.connect(ingest.warehouse()) as con:
            requested = ledger.requested_files(con, config.request)
        return [f.landed for f in requested], config.force
    if config.files:
        return [LandedObject.from_dict(f.model_dump()) for f in config.files], config.force
    if config.keys:
        found = []
        for key in config.keys:
            obj = landing.stat(key)
            if obj is None:
                raise dg.Failure(f"no file at landing key {key!r} ({landing.url})")
            found.append(obj)
        return found, True
    days = set(context.partition_keys)
    objects = [
        o for o in landing.list(feed.landing_prefix) if o.last_modified.date().isoformat() in days
    ]
    context.log.info(
        f"backfill of {min(days)}..{max(days)}: {len(objects)} {feed.name} file(s) landed then"
    )
    return objects, True


def _failed_files_markdown(outcome: pipeline.BronzeOutcome) -> str:
    rows = [
        (r.source.uri, f"{r.status}: {r.error or ''}")
        for r in outcome.reports
        if r.status in ("failed", "skipped")
    ]
    rows += [(uri, f"failed: {error}") for uri, error in outcome.unreadable.items()]
    rows += [(uri, f"retrying: {error}") for uri, (error, _) in outcome.retrying.items()]
    rows += [(uri, "vanished: deleted or replaced after it was listed") for uri in outcome.vanished]
    if not rows:
        return "No failed files."
    lines = ["| file | status: error |", "| --- | --- |"]
    lines += [f"| {uri} | {text.replace('|', '/')} |" for uri, text in rows]
    return "\n".join(lines)


def build_feed_assets(feed: FeedSpec) -> list[dg.AssetsDefinition]:
    bronze_name = f"{feed.name}_bronze"
    tables = ", ".join(t.table for t in feed.targets)

    @dg.asset(
        name=bronze_name,
        group_name="ingestion",
        partitions_def=landing_date_partitions,
        # A date-range backfill is one run (one process), not one run per day.
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"duckdb", "parquet"},
        description=(
            f"{feed.description} Files under `{feed.landing_prefix}` parsed, validated and "
            "typed into bronze Parquet; bad rows quarantined in `rejected_rows`."
        ),
    )
    def bronze(
        context: dg.AssetExecutionContext, config: IngestFilesConfig, ingest: IngestResource
    ) -> dg.MaterializeResult:
        objects, force = _files_to_ingest(context, config, feed, ingest)
        settings = get_settings()
        try:
            outcome = pipeline.ingest_to_bronze(
                objects,
                ingest_config().feed(feed.name),
                landing=ingest.landing(),
                lake=ingest.lake(),
                warehouse_path=ingest.warehouse(),
                tenant_id=ingest.tenant_id(),
                run_id=context.run.run_id,
                force=force,
                policy=ingest_config().policy(feed.name),
                retry=pipeline.RetryPolicy(
                    max_attempts=settings.max_attempts,
                    delay_seconds=settings.retry_delay_seconds,
                ),
                isolate=config.isolate,
                log=context.log.warning,
            )
        except pipeline.IngestAborted as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={"failed_files": dg.MetadataValue.md(_failed_files_markdown(exc.outcome))},
            ) from None
        reports = outcome.reports
        rejects = [r for r in reports if r.rows_rejected]
        sample = (
            "\n\n".join(
                f"**{r.source.uri}**\n\n{rejects_sample(r.rejects_head, 5, r.rows_rejected)}"
                for r in rejects[:5]
            )
            or "No rejected rows."
        )
        return dg.MaterializeResult(
            metadata={
                "files": dg.MetadataValue.int(
                    len(reports) + len(outcome.unreadable) + len(outcome.retrying)
                ),
                "files_failed": dg.MetadataValue.int(outcome.count("failed")),
                "files_skipped": dg.MetadataValue.int(outcome.count("skipped")),
                "files_retrying": dg.MetadataValue.int(len(outcome.retrying)),
                "files_already_ingested": dg.MetadataValue.int(
                    len(outcome.skipped_already_ingested)
                ),
                "files_vanished": dg.MetadataValue.int(len(outcome.vanished)),
                "rows_read": dg.MetadataValue.int(sum(r.rows_read for r in reports)),
                "rows_valid": dg.MetadataValue.int(sum(r.rows_valid for r in reports)),
                "rows_rejected": dg.MetadataValue.int(sum(r.rows_rejected for r in reports)),
                "failed_files": dg.MetadataValue.md(_failed_files_markdown(outcome)),
                "rejected_sample": dg.MetadataValue.md(sample),
                "file_uris": dg.MetadataValue.json([r.source.uri for r in reports][:200]),
                **ledger_health_metadata(ingest.warehouse(), feed.name),
            }
        )

    @dg.asset(
        name=f"{feed.name}_warehouse",
        group_name="warehouse",
        deps=[bronze],
        partitions_def=landing_date_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WAREHOUSE_POOL,
        kinds={"duckdb"},
        description=(
            f"Merges every parsed {feed.name} file into `{tables}` in one transaction "
            "(newest landed file wins; see merge.py)."
        ),
    )
    def merged(context: dg.AssetExecutionContext, ingest: IngestResource) -> dg.MaterializeResult:
        outcome = pipeline.merge_pending(
            feed,
            lake=ingest.lake(),
            warehouse_path=ingest.warehouse(),
            max_cluster_size=ingest_config().identity.max_cluster_size,
        )
        context.log.info(
            f"merged {len(outcome.files)} file(s): {outcome.rows_loaded} rows loaded, "
            f"{outcome.rows_duplicate} duplicates"
        )
        for uri, error in {**outcome.failed, **outcome.reread}.items():
            context.log.warning(f"{uri}: {error}")
        identity: dict[str, dg.MetadataValue] = {}
        if outcome.identity is not None:
            identity = {k: dg.MetadataValue.int(v) for k, v in outcome.identity.metadata().items()}
            if outcome.identity.refused:
                identity["aliases_refused_sample"] = dg.MetadataValue.md(
                    "\n".join(
                        f"- {r['source']}: `{r['alias_key']}` -> `{r['contact_key']}`: {r['reason']}"
                        for r in outcome.identity.refused
                    )
                )
        return dg.MaterializeResult(
            metadata={
                **identity,
                "files_merged": dg.MetadataValue.int(len(outcome.files)),
                "files_failed_to_merge": dg.MetadataValue.int(len(outcome.failed)),
                "files_to_read_again": dg.MetadataValue.int(len(outcome.reread)),
                "rows_loaded": dg.MetadataValue.int(outcome.rows_loaded),
                "rows_duplicate": dg.MetadataValue.int(outcome.rows_duplicate),
                "tables": dg.MetadataValue.text(tables),
            }
        )

    @dg.asset_check(
        asset=bronze,
        name="files_reach_a_final_status",
        description=(
            f"Every requested {feed.name} file reaches a final status (ingested, failed, skipped, "
            "vanished) within INGEST_STUCK_AFTER_SECONDS; lists the files that did not and the "
            "failed files with their reasons."
        ),
        # Also evaluated when nothing runs: a stuck file is exactly when nothing happens.
        automation_condition=dg.AutomationCondition.cron_tick_passed("*/10 * * * *"),
    )
    def files_reach_a_final_status(ingest: IngestResource) -> dg.AssetCheckResult:
        health = ledger_health(ingest.warehouse(), feed.name)
        return dg.AssetCheckResult(
            passed=not health.stuck,
            severity=dg.AssetCheckSeverity.ERROR,
            description=health.summary,
            metadata=health.metadata(),
        )

    return [bronze, merged, files_reach_a_final_status]


_feed_defs = {name: build_feed_assets(feed) for name, feed in FEEDS.items()}
feed_assets: dict[str, list[dg.AssetsDefinition]] = {
    name: [bronze, merged] for name, (bronze, merged, _check) in _feed_defs.items()
}
feed_checks = [check for _bronze, _merged, check in _feed_defs.values()]
all_feed_assets = [a for pair in feed_assets.values() for a in pair]
