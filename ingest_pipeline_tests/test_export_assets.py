"""Flow export assets in Dagster: built from ingest.yaml, downstream of the warehouse assets,
requested after merges, serialized with them, and reporting what they wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from ingest_pipeline.config import parse_config
from ingest_pipeline.defs.exports.assets import build_flow_export_asset
from ingest_pipeline.defs.ingestion.assets import all_feed_assets
from ingest_pipeline.defs.warehouse.resources import IngestResource
from ingest_pipeline_tests.test_exports import initial_contacts, members, set_contacts

REPO = Path(__file__).resolve().parent.parent

FLOW_YAML = """
tenants:
  acme: {{}}
flows:
  - id: 7
    name: active-contacts
    client: acme
    tenant: acme
    segment:
      name: active
      sql: >
        select contact_key as identifier, attributes->>'plan' as plan
        from contacts where cast(attributes->>'active' as boolean)
    actions: [email_welcome]
    format: jsonl
    hash_identity: true
    target: {target}
    path: feeds/acme
    custom_contexts: [plan]
"""


def _flow(target: Path):
    import yaml

    return parse_config(yaml.safe_load(FLOW_YAML.format(target=target))).flows[0]


def test_export_asset_shape(tmp_path: Path) -> None:
    asset = build_flow_export_asset(_flow(tmp_path / "out"))
    assert asset.key == dg.AssetKey("flow_7_active_contacts_export")
    assert asset.node_def.pool == "duckdb_warehouse"
    # The segment reads `contacts`, which the identify and kissmetrics feeds and the API's
    # contact stream write.
    assert asset.dependency_keys == {
        dg.AssetKey("identify_warehouse"),
        dg.AssetKey("kissmetrics_warehouse"),
        dg.AssetKey("contact_warehouse"),
    }
    condition = asset.automation_conditions_by_key[asset.key]
    assert condition is not None and condition.get_label() == "after_warehouse_merge"
    assert asset.group_names_by_key[asset.key] == "exports"
    assert asset.node_def.retry_policy is not None


def test_materialize_reports_files_and_rows_then_no_change(tmp_path: Path) -> None:
    wh = tmp_path / "warehouse.duckdb"
    set_contacts(wh, initial_contacts())
    asset = build_flow_export_asset(_flow(tmp_path / "out"))
    resources = {"ingest": IngestResource(s3=S3Resource(), warehouse_path=str(wh))}
    instance = dg.DagsterInstance.ephemeral()

    def metadata() -> dict:
        result = dg.materialize([asset], resources=resources, instance=instance)
        assert result.success
        (mat,) = result.asset_materializations_for_node(asset.node_def.name)
        return {k: v.value for k, v in mat.metadata.items()}

    first = metadata()
    expected = len(members(initial_contacts()))
    assert first["status"] == "exported"
    assert first["members_added"] == expected and first["rows_add"] == 2 * expected
    assert first["rows_remove"] == 0 and first["files_written"] == 2
    (entry,) = first["files"]
    assert entry["operation"] == "add" and entry["rows"] == 2 * expected
    assert Path(entry["data"].removeprefix("file://")).is_file()
    assert Path(entry["control"].removeprefix("file://")).is_file()

    second = metadata()
    assert second["status"] == "no change" and second["files_written"] == 0
    assert second["segment_members"] == expected
    assert "No change" in second["files_table"]


def test_export_is_requested_when_the_flow_is_added_and_after_a_merge(tmp_path: Path) -> None:
    asset = build_flow_export_asset(_flow(tmp_path / "out"))
    defs = dg.Definitions(
        assets=[*all_feed_assets, asset],
        resources={"ingest": IngestResource(s3=S3Resource())},
    )
    instance = dg.DagsterInstance.ephemeral()

    def requested(cursor):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        return result.get_num_requested(asset.key), result.cursor

    count, cursor = requested(None)
    assert count == 1  # a new flow exports once
    instance.report_runless_asset_event(dg.AssetMaterialization(asset.key))
    count, cursor = requested(cursor)
    assert count == 0  # nothing new upstream
    instance.report_runless_asset_event(
        dg.AssetMaterialization("identify_warehouse", partition="2026-03-01")
    )
    count, cursor = requested(cursor)
    assert count == 1  # new data merged: export
    instance.report_runless_asset_event(dg.AssetMaterialization(asset.key))
    instance.report_runless_asset_event(
        dg.AssetMaterialization("track_warehouse", partition="2026-03-01")
    )
    count, cursor = requested(cursor)
    assert count == 0  # the segment does not read what track writes


def test_code_location_loads_with_flows(tmp_path: Path) -> None:
    config = tmp_path / "ingest.yaml"
    config.write_text(FLOW_YAML.format(target=tmp_path / "out"))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "python"),
            "-c",
            "from ingest_pipeline.definitions import defs; "
            "defs.resolve_asset_graph(); "
            "print(defs.resolve_assets_def('flow_7_active_contacts_export').key.to_user_string()); "
            "print(defs.resolve_job_def('export_flows').name); "
            "print(defs.get_sensor_def('flow_exports_automation_sensor').default_status)",
        ],
        cwd=REPO,
        env=dict(os.environ, INGEST_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "flow_7_active_contacts_export",
        "export_flows",
        "DefaultSensorStatus.RUNNING",
    ]


def test_code_location_refuses_an_invalid_flow_naming_its_path(tmp_path: Path) -> None:
    config = tmp_path / "ingest.yaml"
    config.write_text(FLOW_YAML.format(target=tmp_path / "out").replace("jsonl", "xml"))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "python"), "-c", "import ingest_pipeline.definitions"],
        cwd=REPO,
        env=dict(os.environ, INGEST_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "flows[0].format: must be one of csv, tsv, jsonl" in result.stderr


def test_a_flow_schedule_also_requests_the_export_on_its_cron(tmp_path: Path) -> None:
    import datetime as dt

    flow = _flow(tmp_path / "out").model_copy(update={"schedule": "0 * * * *"})
    asset = build_flow_export_asset(flow)
    defs = dg.Definitions(
        assets=[*all_feed_assets, asset],
        resources={"ingest": IngestResource(s3=S3Resource())},
    )
    instance = dg.DagsterInstance.ephemeral()
    start = dt.datetime(2026, 3, 1, 10, 15, tzinfo=dt.UTC)

    def requested(cursor, minutes: int):
        result = dg.evaluate_automation_conditions(
            defs=defs,
            instance=instance,
            cursor=cursor,
            evaluation_time=start + dt.timedelta(minutes=minutes),
        )
        return result.get_num_requested(asset.key), result.cursor

    count, cursor = requested(None, 0)
    assert count == 1
    instance.report_runless_asset_event(dg.AssetMaterialization(asset.key))
    count, cursor = requested(cursor, 10)
    assert count == 0  # 10:25, no new data, no cron tick
    count, cursor = requested(cursor, 50)
    assert count == 1  # 11:05: the 11:00 tick passed
