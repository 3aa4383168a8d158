"""Per feed: a bronze asset (files -> Parquet + ledger + quarantine) and a warehouse asset
(merge of every parsed file into the feed's tables). Both are built from the feed declaration."""

import dagster as dg

from ingest_pipeline import pipeline
from ingest_pipeline.config import IngestConfig, load_config
from ingest_pipeline.defs.ingestion.partitions import landing_date_partitions
from ingest_pipeline.defs.warehouse.resources import IngestResource
from ingest_pipeline.feeds import FEEDS, FeedSpec
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

    files: list[LandedFileConfig] = []
    keys: list[str] = []  # landing keys to (re-)ingest on their own, e.g. track/2026/a.jsonl
    force: bool = False  # re-ingest files the ledger already shows as ingested


def _files_to_ingest(
    context: dg.AssetExecutionContext,
    config: IngestFilesConfig,
    feed: FeedSpec,
    ingest: IngestResource,
) -> tuple[list[LandedObject], bool]:
    landing = ingest.landing()
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
    failed = [r for r in outcome.reports if r.status in ("failed", "skipped")]
    if not failed and not outcome.vanished:
        return "No failed files."
    lines = ["| file | error |", "| --- | --- |"]
    lines += [
        f"| {r.source.uri} | {r.status}: {(r.error or '').replace('|', '/')} |" for r in failed
    ]
    lines += [f"| {uri} | deleted or replaced after it was listed |" for uri in outcome.vanished]
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
        try:
            outcome = pipeline.ingest_to_bronze(
                objects,
                feed,
                landing=ingest.landing(),
                lake=ingest.lake(),
                warehouse_path=ingest.warehouse(),
                tenant_id=ingest.tenant_id(),
                run_id=context.run.run_id,
                force=force,
                policy=ingest_config().policy(feed.name),
            )
        except pipeline.IngestAborted as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={"failed_files": dg.MetadataValue.md(_failed_files_markdown(exc.outcome))},
            ) from None
        reports = outcome.reports
        for r in reports:
            if r.status == "failed":
                context.log.warning(f"{r.source.uri}: {r.error}")
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
                "files": dg.MetadataValue.int(len(reports)),
                "files_failed": dg.MetadataValue.int(sum(r.status == "failed" for r in reports)),
                "files_skipped": dg.MetadataValue.int(sum(r.status == "skipped" for r in reports)),
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
            feed, lake=ingest.lake(), warehouse_path=ingest.warehouse()
        )
        context.log.info(
            f"merged {len(outcome.files)} file(s): {outcome.rows_loaded} rows loaded, "
            f"{outcome.rows_duplicate} duplicates"
        )
        return dg.MaterializeResult(
            metadata={
                "files_merged": dg.MetadataValue.int(len(outcome.files)),
                "rows_loaded": dg.MetadataValue.int(outcome.rows_loaded),
                "rows_duplicate": dg.MetadataValue.int(outcome.rows_duplicate),
                "tables": dg.MetadataValue.text(tables),
            }
        )

    return [bronze, merged]


feed_assets: dict[str, list[dg.AssetsDefinition]] = {
    name: build_feed_assets(feed) for name, feed in FEEDS.items()
}
all_feed_assets = [a for pair in feed_assets.values() for a in pair]
