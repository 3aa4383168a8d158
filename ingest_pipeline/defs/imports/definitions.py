"""One job per configured import (`import_<name>`, its asset and its schedule), built when the
code location loads definitions (@dg.definitions), from ingest.yaml's `imports:`.

The asset runs the import (imports/run.py): the folder's new files through the shared path,
then one e-mail to the import's addresses. A manual run (UI or `dagster job execute -j
import_<name>`) takes the folder's new files at once, whatever the schedule and its end
conditions; run config `files` re-runs named files (an operator's forced re-run).
"""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from ingest_pipeline.config import ImportConfig, load_config
from ingest_pipeline.defs.ingestion.sensors import job_busy
from ingest_pipeline.defs.warehouse.resources import IngestResource
from ingest_pipeline.health import ledger_health
from ingest_pipeline.imports.feed import import_feed_name
from ingest_pipeline.imports.notify import ImportRunSummary, SmtpSettings, send_summary
from ingest_pipeline.imports.run import ImportRunResult, run_import
from ingest_pipeline.imports.schedule import import_cron, tick_decision
from ingest_pipeline.settings import get_settings

WAREHOUSE_POOL = "duckdb_warehouse"
SCHEDULE_TAG = "dagster/schedule_name"


class ImportRunConfig(dg.Config):
    """Empty: the folder's new files. `files`: those file names again, whatever their earlier
    outcome (a forced re-run, an operator's explicit action)."""

    files: list[str] = []


def _table(summary: ImportRunSummary) -> str:
    if not summary.files:
        return "No new files."
    rows = ["| file | status | read | loaded | duplicates | rejected | error / note |"]
    rows.append("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for f in summary.files:
        note = (f.error or "").replace("|", "/").replace("\n", " ")
        rows.append(
            f"| {f.name} | {f.status} | {f.rows_read} | {f.rows_loaded} | {f.rows_duplicate} "
            f"| {f.rows_rejected} | {note} |"
        )
    return "\n".join(rows)


def _rejected(summary: ImportRunSummary) -> str:
    parts = []
    for f in summary.files:
        if f.rejected_sample:
            lines = "\n".join(
                f"- line {n}: {reason} — `{raw[:120]}`" for n, raw, reason in f.rejected_sample
            )
            parts.append(f"**{f.name}**\n\n{lines}")
    return "\n\n".join(parts) or "No rejected rows."


def _metadata(result: ImportRunResult) -> dict[str, dg.MetadataValue]:
    s, plan = result.summary, result.plan
    ignored = "\n".join(f"- `{name}`: {why}" for name, why in s.ignored) or "None."
    return {
        "folder": dg.MetadataValue.text(s.folder),
        "files": dg.MetadataValue.int(len(s.files)),
        "files_failed": dg.MetadataValue.int(len(s.failed_files)),
        "files_already_processed": dg.MetadataValue.int(len(plan.already)),
        "files_waiting_for_retry": dg.MetadataValue.int(len(plan.waiting)),
        "files_ignored": dg.MetadataValue.int(len(s.ignored)),
        "rows_read": dg.MetadataValue.int(sum(f.rows_read for f in s.files)),
        "rows_loaded": dg.MetadataValue.int(s.rows_loaded),
        "rows_duplicate": dg.MetadataValue.int(sum(f.rows_duplicate for f in s.files)),
        "rows_rejected": dg.MetadataValue.int(s.rows_rejected),
        "file_report": dg.MetadataValue.md(_table(s)),
        "rejected_sample": dg.MetadataValue.md(_rejected(s)),
        "ignored_files": dg.MetadataValue.md(ignored),
    }


def build_import_asset(imp: ImportConfig) -> dg.AssetsDefinition:
    table = "events" if imp.type == "events" else "contacts"

    @dg.asset(
        name=f"{imp.name}_import",
        group_name="imports",
        pool=WAREHOUSE_POOL,
        kinds={"csv", "duckdb"},
        description=(
            f"Configured import {imp.name}: {imp.file_prefix}_<datetime>.csv files from "
            f"{imp.folder} (manifest {imp.manifest}) into `{table}`; each file once."
        ),
    )
    def import_asset(
        context: dg.AssetExecutionContext, config: ImportRunConfig, ingest: IngestResource
    ) -> dg.MaterializeResult:
        settings = get_settings()
        ingest_yaml = load_config(settings.config_path)
        current = ingest_yaml.import_config(imp.name)
        result = run_import(
            ingest_yaml,
            current,
            lake=ingest.lake(),
            warehouse_path=ingest.warehouse(),
            run_id=context.run.run_id,
            names=config.files,
            log=context.log.warning,
        )
        summary = result.summary
        # A failed send is logged, never the import's failure.
        send_summary(summary, current.notify, SmtpSettings.from_env(), log=context.log.warning)
        metadata = _metadata(result)
        if summary.error is not None or summary.failed_files:
            if summary.files:
                context.log_event(dg.AssetMaterialization(context.asset_key, metadata=metadata))
            # the whole cause, not the mail's subject line (cut to fit a subject)
            cause = summary.error or "; ".join(
                f"{f.name}: {f.status}: {f.error or ''}" for f in summary.failed_files
            )
            context.log.error(f"import {imp.name} failed: {cause}")
            raise dg.Failure(description=f"import {imp.name} failed: {cause}", metadata=metadata)
        return dg.MaterializeResult(metadata=metadata)

    return import_asset


def build_import_check(imp: ImportConfig, asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    """The import's files reach a final status: a run killed while reading leaves files that
    only the import's next run takes again; until then this check names them."""
    feed = import_feed_name(imp)

    @dg.asset_check(
        asset=asset,
        name="files_reach_a_final_status",
        description=(
            f"Every file of import {imp.name} reaches a final status (ingested, failed, skipped, "
            "vanished) within INGEST_STUCK_AFTER_SECONDS; lists the ones that did not and the "
            "failed files with their reasons."
        ),
        automation_condition=dg.AutomationCondition.cron_tick_passed("*/10 * * * *"),
    )
    def files_reach_a_final_status(ingest: IngestResource) -> dg.AssetCheckResult:
        health = ledger_health(ingest.warehouse(), feed)
        return dg.AssetCheckResult(
            passed=not health.stuck,
            severity=dg.AssetCheckSeverity.ERROR,
            description=health.summary,
            metadata=health.metadata(),
        )

    return files_reach_a_final_status


def build_import_schedule(
    imp: ImportConfig, job: UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition:
    name = f"{imp.job_name}_schedule"

    @dg.schedule(
        name=name,
        job=job,
        cron_schedule=import_cron(imp),
        execution_timezone=imp.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Runs import {imp.name}: {imp.schedule} ({imp.timezone})"
            + (f", from {imp.start_at}" if imp.start_at else "")
            + (f", until {imp.end_at}" if imp.end_at else "")
            + (f", {imp.end_after_runs} run(s) at most" if imp.end_after_runs else "")
        ),
    )
    def import_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        instance = context.instance
        runs = instance.get_runs_count(dg.RunsFilter(job_name=job.name, tags={SCHEDULE_TAG: name}))
        busy = job_busy(instance, job.name)
        tick = context.scheduled_execution_time
        assert tick is not None
        decision = tick_decision(imp, tick, runs, run_in_progress=busy)
        if not decision.run:
            return dg.SkipReason(decision.reason)
        return dg.RunRequest(
            run_key=f"{imp.name}-{tick.isoformat()}", tags={"ingest/import": imp.name}
        )

    return import_schedule


@dg.definitions
def defs() -> dg.Definitions:
    config = load_config(get_settings().config_path)
    assets, jobs, schedules, checks = [], [], [], []
    for imp in config.imports:
        asset = build_import_asset(imp)
        checks.append(build_import_check(imp, asset))
        job = dg.define_asset_job(
            imp.job_name,
            selection=[asset],
            description=f"Import {imp.name}: the folder's new files, now.",
        )
        assets.append(asset)
        jobs.append(job)
        schedules.append(build_import_schedule(imp, job))
    sensors = []
    if checks:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "import_health_sensor",
                target=dg.AssetSelection.checks(*checks),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=60,
                description="Runs each import's `files_reach_a_final_status` check every 10 min.",
            )
        )
    return dg.Definitions(
        assets=assets, asset_checks=checks, jobs=jobs, schedules=schedules, sensors=sensors
    )
