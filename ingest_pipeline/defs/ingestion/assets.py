"""Per feed: a bronze asset (files -> Parquet + ledger + quarantine) and a warehouse asset
(merge of every parsed file into the feed's tables). Both are built from the feed declaration."""

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb

from ingest_pipeline import ledger, pipeline, quality, warehouse
from ingest_pipeline.config import IngestConfig, load_config
from ingest_pipeline.defs.ingestion.partitions import landing_date_partitions, partition_key_for
from ingest_pipeline.defs.warehouse.resources import IngestResource
from ingest_pipeline.feeds import FEEDS, FeedSpec
from ingest_pipeline.health import ledger_health, ledger_health_metadata
from ingest_pipeline.landing import LandedObject
from ingest_pipeline.ledger import rejects_sample
from ingest_pipeline.settings import get_settings
from ingest_pipeline.tenants import TenantLanding, by_landing, describe_problem

WAREHOUSE_POOL = "duckdb_warehouse"
# The feeds' checks run on a cron (ledger_health_sensor), not in every run: a stuck file is one
# nothing runs for, and a scan of `events` per run would make a run's cost grow with the table.
CHECKS_EVERY_10_MINUTES = dg.AutomationCondition.cron_tick_passed("*/10 * * * *")


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
    # With `keys`: the tenant whose own landing zone holds them (empty: the default zone).
    tenant: str = ""


def _files_to_ingest(
    context: dg.AssetExecutionContext,
    config: IngestFilesConfig,
    feed: FeedSpec,
    ingest: IngestResource,
) -> tuple[list[tuple[TenantLanding, list[LandedObject]]], bool]:
    """The run's files per landing zone (each file is read from the zone its URI names, as
    that zone's tenant's), and whether ingested files are re-ingested."""
    landings = ingest.landings()
    if config.request:
        with warehouse.connect(ingest.warehouse()) as con, warehouse.transaction(con):
            requested = ledger.requested_files(con, config.request)
            groups, lost = by_landing(landings, requested, lambda f: (f.source_uri, f.landing_key))
            # Its tenant's landing_url was removed or changed since it was requested: no zone
            # to read it from, and waiting would not bring one.
            ledger.fail(con, lost, error=LANDING_GONE, at=pipeline.now())
        for f in lost:
            context.log.warning(f"{f.source_uri}: failed: {LANDING_GONE}")
        return [(la, [f.landed for f in files]) for la, files in groups], config.force
    if config.files:
        objects = [LandedObject.from_dict(f.model_dump()) for f in config.files]
        found, unknown = by_landing(landings, objects, lambda o: (o.uri, o.key))
        if unknown:
            raise dg.Failure(
                f"not in any landing zone configured now: {', '.join(o.uri for o in unknown[:5])}"
            )
        return found, config.force
    if config.keys:
        landing = _landing_of(landings, config.tenant)
        zone = ingest.open_landing(landing)
        objs = []
        for key in config.keys:
            obj = zone.stat(key)
            if obj is None:
                raise dg.Failure(f"no file at landing key {key!r} ({zone.url})")
            objs.append(obj)
        return [(landing, objs)], True
    days = set(context.partition_keys)
    by_zone = []
    for landing in landings:
        try:
            zone = ingest.open_landing(landing)
            listed = [
                o
                for o in zone.list(feed.landing_prefix)
                if partition_key_for(o.last_modified) in days
            ]
        except Exception as exc:  # noqa: BLE001 - one zone's trouble does not stop the others
            context.log.warning(f"{landing.name} not listed: {describe_problem(exc, landing.url)}")
            continue
        if listed:
            by_zone.append((landing, listed))
    context.log.info(
        f"backfill of {min(days)}..{max(days)}: "
        f"{sum(len(o) for _, o in by_zone)} {feed.name} file(s) landed then"
    )
    return by_zone, True


LANDING_GONE = (
    "its landing zone is no longer configured (the tenant's landing_url was removed or changed "
    "in ingest.yaml): put it back, then re-ingest the file"
)


def _landing_of(landings: list[TenantLanding], tenant: str) -> TenantLanding:
    """The landing zone run config `tenant` names: that tenant's own, or the default one."""
    if not tenant:
        return landings[0]
    for landing in landings:
        if landing.own and landing.tenant == tenant:
            return landing
    raise dg.Failure(
        f"tenant {tenant!r} has no landing zone of its own (tenants.<name>.landing_url)"
    )


def _add_outcome(into: pipeline.BronzeOutcome, part: pipeline.BronzeOutcome) -> None:
    """Add one landing zone's outcome to the run's."""
    for f in dataclasses.fields(part):
        value = getattr(part, f.name)
        if isinstance(value, dict):
            getattr(into, f.name).update(value)
        else:
            getattr(into, f.name).extend(value)


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


def _merged_files_markdown(outcome: pipeline.MergeOutcome, limit: int = 50) -> str:
    if not outcome.files:
        return "No file merged."
    lines = ["| landing date | file | rows read | rows rejected |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {partition_key_for(f.landed_at)} | {f.source_uri} | {f.rows_read} | {f.rows_rejected} |"
        for f in outcome.files[:limit]
    ]
    if len(outcome.files) > limit:
        lines.append(f"\n… and {len(outcome.files) - limit} more")
    return "\n".join(lines)


def build_feed_assets(feed: FeedSpec) -> list[dg.AssetsDefinition | dg.AssetChecksDefinition]:
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
        groups, force = _files_to_ingest(context, config, feed, ingest)
        settings = get_settings()
        yaml_config = ingest_config()
        outcome = pipeline.BronzeOutcome()
        try:
            # A sensor's run holds one tenant's files of one landing zone; a backfill, any.
            for landing, objects in groups:
                part = pipeline.ingest_to_bronze(
                    objects,
                    yaml_config.feed(feed.name),
                    landing=ingest.open_landing(landing),
                    lake=ingest.lake(),
                    warehouse_path=ingest.warehouse(),
                    tenant_id=landing.tenant,
                    own_landing=landing.own,
                    run_id=context.run.run_id,
                    force=force,
                    policy=yaml_config.policy(feed.name),
                    retry=pipeline.RetryPolicy(
                        max_attempts=settings.max_attempts,
                        delay_seconds=settings.retry_delay_seconds,
                    ),
                    isolate=config.isolate,
                    log=context.log.warning,
                )
                _add_outcome(outcome, part)
        except pipeline.IngestAborted as exc:
            _add_outcome(outcome, exc.outcome)
            raise dg.Failure(
                description=str(exc),
                metadata={"failed_files": dg.MetadataValue.md(_failed_files_markdown(outcome))},
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
        # Only the files of this run's landing dates: a partition's materialization reports
        # its own files (the sensor asks a merge of each date that has parsed files left).
        partitions = context.partition_keys
        outcome = pipeline.merge_pending(
            feed,
            lake=ingest.lake(),
            warehouse_path=ingest.warehouse(),
            max_cluster_size=ingest_config().identity.max_cluster_size,
            partitions=partitions,
        )
        dates = sorted({partition_key_for(f.landed_at) for f in outcome.files})
        context.log.info(
            f"merged {len(outcome.files)} file(s) landed on {', '.join(dates) or 'no date'}: "
            f"{outcome.rows_loaded} rows loaded, {outcome.rows_duplicate} duplicates"
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
                # The landing dates of the files merged. A range run (a backfill of several
                # days is one run) records the same result on each of its days: the range says so.
                "landing_dates": dg.MetadataValue.text(", ".join(dates) or "none"),
                "run_covers": dg.MetadataValue.text(
                    partitions[0] if len(partitions) == 1 else f"{partitions[0]}...{partitions[-1]}"
                ),
                "merged_files": dg.MetadataValue.md(_merged_files_markdown(outcome)),
                "files_failed_to_merge": dg.MetadataValue.int(len(outcome.failed)),
                "files_to_read_again": dg.MetadataValue.int(len(outcome.reread)),
                "rows_loaded": dg.MetadataValue.int(outcome.rows_loaded),
                "rows_duplicate": dg.MetadataValue.int(outcome.rows_duplicate),
                # Numbers, so the asset's Plots tab charts loaded and rejected rows per day.
                "rows_rejected": dg.MetadataValue.int(sum(f.rows_rejected for f in outcome.files)),
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
        automation_condition=CHECKS_EVERY_10_MINUTES,
    )
    def files_reach_a_final_status(ingest: IngestResource) -> dg.AssetCheckResult:
        health = ledger_health(ingest.warehouse(), feed.name)
        return dg.AssetCheckResult(
            passed=not health.stuck,
            severity=dg.AssetCheckSeverity.ERROR,
            description=health.summary,
            metadata=health.metadata(),
        )

    @dg.asset_check(
        asset=merged,
        name="rows_add_up",
        description=(
            f"Every ingested {feed.name} file's rows add up: rows read = loaded + duplicate + "
            "rejected (nothing lost). Lists the files that do not. Reads the warehouse as of "
            "the last committed merge."
        ),
        automation_condition=CHECKS_EVERY_10_MINUTES,
    )
    def rows_add_up(ingest: IngestResource) -> dg.AssetCheckResult:
        with _reader(ingest) as con:
            check = quality.accounting(con, feed.name)
        return dg.AssetCheckResult(
            passed=check.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=check.summary,
            metadata={
                "files_checked": dg.MetadataValue.int(check.files_checked),
                "files_not_adding_up": dg.MetadataValue.int(len(check.broken)),
                "rows_read": dg.MetadataValue.int(check.rows_read),
                "rows_loaded": dg.MetadataValue.int(check.rows_loaded),
                "rows_duplicate": dg.MetadataValue.int(check.rows_duplicate),
                "rows_rejected": dg.MetadataValue.int(check.rows_rejected),
                "broken_files": dg.MetadataValue.md(check.markdown()),
            },
        )

    checks: list[dg.AssetChecksDefinition] = [files_reach_a_final_status, rows_add_up]
    event_keys = quality.unique_key_targets(feed, "events")
    if event_keys:
        key = event_keys[0]

        @dg.asset_check(
            asset=merged,
            name="no_duplicate_event_keys",
            description=(
                f"No two rows of `events` share the key ({', '.join(key)}): the merge keeps one "
                "row per key. Reads the warehouse as of the last committed merge."
            ),
            automation_condition=CHECKS_EVERY_10_MINUTES,
        )
        def no_duplicate_event_keys(ingest: IngestResource) -> dg.AssetCheckResult:
            with _reader(ingest) as con:
                dupes = quality.duplicate_keys(con, "events", key)
            return dg.AssetCheckResult(
                passed=dupes.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=dupes.summary,
                metadata={
                    "rows": dg.MetadataValue.int(dupes.rows),
                    "duplicated_keys": dg.MetadataValue.int(dupes.duplicated_keys),
                    "sample": dg.MetadataValue.md(dupes.markdown()),
                },
            )

        checks.append(no_duplicate_event_keys)

    return [bronze, merged, *checks]


@contextmanager
def _reader(ingest: IngestResource) -> Iterator[duckdb.DuckDBPyConnection]:
    """The read snapshot (never waits for a merge); an empty warehouse for a new deployment."""
    try:
        con = warehouse.connect_reader(ingest.warehouse())
    except warehouse.NoSnapshot:
        con = duckdb.connect()
        warehouse.ensure_schema(con)
    try:
        yield con
    finally:
        con.close()


_feed_defs = {name: build_feed_assets(feed) for name, feed in FEEDS.items()}
feed_assets: dict[str, list[dg.AssetsDefinition]] = {
    name: [defs[0], defs[1]] for name, defs in _feed_defs.items()
}
feed_checks = [check for defs in _feed_defs.values() for check in defs[2:]]
all_feed_assets = [a for pair in feed_assets.values() for a in pair]
