"""One export asset per flow in ingest.yaml (SPEC section 7), downstream of the warehouse.

- Asset `flow_<id>_<name>_export`, group `exports`, deps: the `<feed>_warehouse` assets whose
  tables the segment reads (all of them if it reads none a feed writes).
- Runs after new data merges: an automation condition (`after_warehouse_merge`, below), evaluated
  by the `flow_exports_automation_sensor` (RUNNING by default, like the landing sensors). A flow
  with `schedule:` also runs on that cron, for segments that change with time alone
  ("signed up in the last 7 days").
- `pool="duckdb_warehouse"`: the export writes the warehouse (pending export, then membership),
  so it takes its turn with the merges. Its warehouse connections are short; the file transfer
  in between holds the pool, which keeps "one warehouse writer at a time" simple to reason about.
- A failed step is retried (3 times, 30 s doubling); each retry finishes the pending export.
- No flows (or no ingest.yaml): nothing is defined here.
"""

import re

import dagster as dg

from ingest_pipeline.config import FlowConfig, IngestConfig, load_config
from ingest_pipeline.defs.warehouse.resources import IngestResource
from ingest_pipeline.exports.export import FlowExportResult, export_flow
from ingest_pipeline.exports.membership import check_segment_sql
from ingest_pipeline.exports.targets import resolve_target_url
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import is_s3_url
from ingest_pipeline.settings import get_settings

WAREHOUSE_POOL = "duckdb_warehouse"


def after_warehouse_merge(schedule: str | None = None) -> dg.AutomationCondition:
    """When a flow export is requested.

    Like `AutomationCondition.eager()`, minus its two clauses that do not fit an unpartitioned
    asset downstream of daily-partitioned ones: `any_deps_missing` (some daily partition of a
    warehouse asset is always missing, so the export would never run) and
    `in_latest_time_window`. And where eager ignores an asset that was already missing when the
    condition was first evaluated, a newly configured flow here exports once right away.

    Requested when the flow is new (missing), after any of its warehouse assets updates, or on
    the flow's cron; each trigger once (until the export is requested or materialized), never
    while a merge of its warehouse assets or this export is in progress.
    """
    trigger = dg.AutomationCondition.missing() | dg.AutomationCondition.any_deps_updated()
    if schedule:
        trigger = trigger | dg.AutomationCondition.cron_tick_passed(schedule, "UTC")
    handled = dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    return (
        trigger.since(handled)
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("after_warehouse_merge" + (f" or on_cron({schedule})" if schedule else ""))


def asset_name(flow: FlowConfig) -> str:
    return f"flow_{flow.id}_{re.sub(r'[^A-Za-z0-9_]', '_', flow.name)}_export"


def upstream_feeds(flow: FlowConfig) -> list[str]:
    """The feeds writing a table the segment reads; every feed when it reads none of those."""
    tables = check_segment_sql(flow.segment.sql)
    feeds = [name for name, feed in FEEDS.items() if any(t.table in tables for t in feed.targets)]
    return feeds or list(FEEDS)


def _files_markdown(result: FlowExportResult) -> str:
    if not result.files:
        return "No change: no files written."
    lines = [
        "| operation | members | rows | data file | control file |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {f.operation} | {f.members} | {f.rows} | {f.data_url} | {f.control_url} |"
        for f in result.files
    ]
    return "\n".join(lines)


def build_flow_export_asset(flow: FlowConfig) -> dg.AssetsDefinition:
    feeds = upstream_feeds(flow)
    target = flow.target or "INGEST_EXPORT_URL"

    @dg.asset(
        name=asset_name(flow),
        group_name="exports",
        deps=[dg.AssetKey(f"{feed}_warehouse") for feed in feeds],
        pool=WAREHOUSE_POOL,
        automation_condition=after_warehouse_merge(flow.schedule),
        # A failed export (target unreachable) stays pending; retrying the step finishes it with
        # the same files. Without this it would wait for the next merge or cron tick.
        retry_policy=dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL),
        kinds={"duckdb", flow.format},
        tags={"ingest/flow_id": str(flow.id), "ingest/tenant": flow.tenant},
        description=(
            f"Flow {flow.id} `{flow.name}` (client {flow.client}, tenant {flow.tenant}): members "
            f"of segment `{flow.segment.name}` who entered (add) or left (remove) since the last "
            f"export, as {flow.format} data files with control files under "
            f"`{target}/{flow.path}/YYYY/MM/DD/`. Exactly once: see docs/ARCHITECTURE.md."
        ),
    )
    def flow_export(
        context: dg.AssetExecutionContext, ingest: IngestResource
    ) -> dg.MaterializeResult:
        default_url = get_settings().export_url
        url = resolve_target_url(flow, default_url)
        # A pending export of another target (ingest.yaml changed) may also need S3: a client is
        # cheap to make, so make one whenever S3 is involved at all.
        s3_client = ingest.s3.get_client() if is_s3_url(url) or is_s3_url(default_url) else None
        result = export_flow(
            flow,
            warehouse_path=ingest.warehouse(),
            default_target_url=default_url,
            s3_client=s3_client,
            log=context.log.info,
        )
        rows = result.rows_by_operation()
        members = result.members_by_operation()
        status = "exported" if result.changed else "no change"
        if any(e.resumed for e in result.exports):
            status += " (finished an export left pending by an earlier run)"
        return dg.MaterializeResult(
            metadata={
                "status": dg.MetadataValue.text(status),
                "target": dg.MetadataValue.text(result.target_url),
                "files_written": dg.MetadataValue.int(2 * len(result.files)),
                "rows_add": dg.MetadataValue.int(rows["add"]),
                "rows_remove": dg.MetadataValue.int(rows["remove"]),
                "members_added": dg.MetadataValue.int(members["add"]),
                "members_removed": dg.MetadataValue.int(members["remove"]),
                "segment_members": dg.MetadataValue.int(result.segment_members or 0),
                "export_ids": dg.MetadataValue.json([e.export_id for e in result.exports]),
                "files": dg.MetadataValue.json(
                    [
                        {
                            "operation": f.operation,
                            "data": f.data_url,
                            "control": f.control_url,
                            "rows": f.rows,
                        }
                        for f in result.files
                    ]
                ),
                "files_table": dg.MetadataValue.md(_files_markdown(result)),
            }
        )

    return flow_export


def build_export_defs(config: IngestConfig) -> list[dg.AssetsDefinition]:
    return [build_flow_export_asset(flow) for flow in config.flows]


flow_export_assets = build_export_defs(load_config(get_settings().config_path))

if flow_export_assets:
    flow_exports_job = dg.define_asset_job(
        "export_flows",
        selection=dg.AssetSelection.assets(*flow_export_assets),
        description="Export every flow now (each writes files only if its membership changed).",
    )
    flow_exports_automation_sensor = dg.AutomationConditionSensorDefinition(
        "flow_exports_automation_sensor",
        target=dg.AssetSelection.assets(*flow_export_assets),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Requests flow exports after new data merges into the warehouse.",
    )
