"""The code location loads the way Dagster's own tools load it, with the shape the SPEC asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from ingest_pipeline.definitions import defs
from ingest_pipeline.feeds import FEEDS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_dg_check_defs_passes() -> None:
    result = _run("dg", "check", "defs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_dagster_definitions_validate_passes() -> None:
    result = _run("dagster", "definitions", "validate", "-w", "workspace.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_every_feed_has_running_sensor_job_and_serialized_merge() -> None:
    for name in FEEDS:
        sensor = defs.get_sensor_def(f"{name}_landing_sensor")
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        assert defs.resolve_job_def(f"ingest_{name}").partitions_def is not None
        merge = defs.resolve_assets_def(f"{name}_warehouse")
        assert merge.node_def.pool == "duckdb_warehouse"


def test_instance_config_limits_the_warehouse_pool_to_one_writer() -> None:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["concurrency"]["pools"]["granularity"] == "op"
