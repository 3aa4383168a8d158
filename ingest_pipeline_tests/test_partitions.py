"""Operator view (issue 12): partitions start at a configurable, recent date; a warehouse
materialization reports only the files of its own landing dates; the per-feed asset checks
(rows add up, no duplicate event keys) pass on a sound warehouse and fail, saying what is wrong,
on a broken one."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import pytest

from ingest_pipeline import discovery, pipeline, quality, warehouse
from ingest_pipeline.definitions import RESOURCES, defs
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import LocalLanding
from ingest_pipeline.settings import partitions_start_date

TRACK = FEEDS["track"]
DAY1, DAY2 = "2026-03-01", "2026-03-02"


def test_default_first_partition_is_recent_and_configurable(monkeypatch) -> None:
    monkeypatch.delenv("INGEST_PARTITIONS_START_DATE", raising=False)
    assert partitions_start_date(date(2026, 12, 1)) == date(2026, 10, 1)
    assert partitions_start_date(date(2026, 1, 31)) == date(2025, 11, 1)
    assert partitions_start_date(date(2026, 2, 1)) == date(2025, 12, 1)
    assert partitions_start_date(date(2026, 3, 15)) == date(2026, 1, 1)
    monkeypatch.setenv("INGEST_PARTITIONS_START_DATE", "2025-06-01")
    assert partitions_start_date() == date(2025, 6, 1)
    monkeypatch.setenv("INGEST_PARTITIONS_START_DATE", "June 2025")
    with pytest.raises(ValueError, match="INGEST_PARTITIONS_START_DATE must be a date"):
        partitions_start_date()


def test_the_code_location_starts_partitions_where_configured(monkeypatch) -> None:
    """A fresh process (the code location) with the variable unset shows about three months of
    days, not years; with it set, from that date."""
    import subprocess
    import sys

    code = (
        "from ingest_pipeline.definitions import defs\n"
        "p = defs.resolve_assets_def('track_bronze').partitions_def\n"
        "keys = p.get_partition_keys()\n"
        "print(keys[0], len(keys))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "INGEST_PARTITIONS_START_DATE"}
    first, count = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    today = datetime.now(UTC).date()
    monkeypatch.delenv("INGEST_PARTITIONS_START_DATE")
    assert first == partitions_start_date(today).isoformat()
    assert first.endswith("-01") and first < today.isoformat()
    assert 59 <= int(count) <= 94
    env["INGEST_PARTITIONS_START_DATE"] = "2026-11-20"
    first, count = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert first == "2026-11-20"


def test_files_that_landed_before_the_first_partition_belong_to_it(monkeypatch) -> None:
    monkeypatch.setenv("INGEST_PARTITIONS_START_DATE", "2026-03-02")
    assert discovery.partition_key_for(datetime(2024, 1, 1, tzinfo=UTC)) == "2026-03-02"
    assert discovery.partition_key_for("2026-03-05T10:00:00+00:00") == "2026-03-05"
    landing_objects = [
        discovery.LandedObject(
            key=f"track/{i}.jsonl",
            etag=f"e{i}",
            size=1,
            last_modified=datetime(2026, 3, 1, 12, i, tzinfo=UTC),
            uri=f"/l/track/{i}.jsonl",
        )
        for i in range(3)
    ]
    plan = discovery.plan_tick(
        landing_objects, None, max_files_per_run=10, max_runs_per_tick=5, lookback_seconds=60
    )
    assert [b.partition_key for b in plan.batches] == ["2026-03-02"]


def _land_on(landing: LocalLanding, name: str, day: str, rows: int, first: int = 0):
    """A track file as the landing zone lists it, landed at noon on `day` (a local landing's
    time is the inode's change time, which cannot be set: the listed object is given it)."""
    body = "".join(
        json.dumps(
            {"contact_key": f"c{i}", "event_text": "opened", "event_timestamp": 1_767_225_600 + i}
        )
        + "\n"
        for i in range(first, first + rows)
    )
    landing.put(f"track/{name}", body.encode())
    listed = landing.stat(f"track/{name}")
    assert listed is not None
    return dataclasses.replace(
        listed, last_modified=datetime.fromisoformat(f"{day}T12:00:00+00:00")
    )


@pytest.fixture
def two_days_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two track files parsed on DAY1 (10 rows, 5 rows), one on DAY2 (7 rows), none merged."""
    monkeypatch.setenv("INGEST_LANDING_URL", str(tmp_path / "landing"))
    monkeypatch.setenv("INGEST_LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("INGEST_WAREHOUSE_PATH", str(tmp_path / "wh.duckdb"))
    monkeypatch.setenv("INGEST_TENANT", "default")
    landing = LocalLanding(tmp_path / "landing")
    objects = [
        _land_on(landing, "a.jsonl", DAY1, 10),
        _land_on(landing, "b.jsonl", DAY1, 5, first=100),
        _land_on(landing, "c.jsonl", DAY2, 7, first=200),
    ]
    pipeline.ingest_to_bronze(
        objects,
        TRACK,
        landing=landing,
        lake=LocalLanding(tmp_path / "lake"),
        warehouse_path=tmp_path / "wh.duckdb",
        tenant_id="default",
    )
    return tmp_path


def test_a_warehouse_materialization_reports_only_its_own_landing_date(
    two_days_parsed: Path,
) -> None:
    job = defs.resolve_job_def("ingest_track")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            partition_key=DAY2,
            instance=instance,
            op_selection=["track_warehouse"],
        )
    assert result.success
    meta = result.asset_materializations_for_node("track_warehouse")[0].metadata
    assert meta["files_merged"].value == 1
    assert meta["landing_dates"].value == DAY2
    assert meta["rows_loaded"].value == 7
    assert "c.jsonl" in meta["merged_files"].value
    assert "a.jsonl" not in meta["merged_files"].value
    with warehouse.connect_reader(two_days_parsed / "wh.duckdb") as con:
        statuses = dict(
            con.execute(
                "SELECT regexp_extract(source_uri, '[abc][.]jsonl'), status FROM ingested_files"
            ).fetchall()
        )
    assert statuses == {"a.jsonl": "parsed", "b.jsonl": "parsed", "c.jsonl": "ingested"}


def test_the_sensor_asks_one_merge_per_landing_date_left_parsed(
    two_days_parsed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_REQUEST_GRACE_SECONDS", "1")
    time.sleep(1.2)
    sensor = defs.get_sensor_def("track_landing_sensor")
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(
            instance=instance, cursor=None, resources=RESOURCES, definitions=defs
        ) as context,
    ):
        # The first tick lists the landed files (already parsed: nothing new to request).
        result = sensor.evaluate_tick(context)
    merges = [
        r for r in result.run_requests or [] if r.tags.get("ingest/why") == "merge parsed files"
    ]
    assert sorted(r.partition_key for r in merges) == [DAY1, DAY2]
    assert all(r.asset_selection == [dg.AssetKey("track_warehouse")] for r in merges)


def _merge_all(tmp: Path) -> None:
    pipeline.merge_pending(TRACK, lake=LocalLanding(tmp / "lake"), warehouse_path=tmp / "wh.duckdb")


def _run_checks(*names: str) -> dict[str, dg.AssetCheckEvaluation]:
    checks = [dg.AssetCheckKey(dg.AssetKey("track_warehouse"), name) for name in names]
    job = dg.Definitions.merge(
        defs,
        dg.Definitions(
            jobs=[dg.define_asset_job("checks", selection=dg.AssetSelection.checks(*checks))]
        ),
    ).resolve_job_def("checks")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, resources=None)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == set(names)
    return evaluations


def test_checks_pass_on_a_sound_warehouse_and_name_what_breaks(two_days_parsed: Path) -> None:
    tmp = two_days_parsed
    _merge_all(tmp)
    ok = _run_checks("rows_add_up", "no_duplicate_event_keys")
    assert ok["rows_add_up"].passed and ok["no_duplicate_event_keys"].passed
    assert ok["rows_add_up"].metadata["files_checked"].value == 3
    assert ok["rows_add_up"].metadata["rows_read"].value == 22
    assert ok["no_duplicate_event_keys"].metadata["rows"].value == 22

    # A ledger row that does not add up, and an event row copied: published as a merge would.
    with warehouse.connect(tmp / "wh.duckdb", publish=True) as con:
        con.execute(
            "UPDATE ingested_files SET rows_loaded = rows_loaded - 1 WHERE source_uri LIKE '%b.jsonl'"
        )
        con.execute("INSERT INTO events SELECT * FROM events WHERE contact_key = 'c3'")
    bad = _run_checks("rows_add_up", "no_duplicate_event_keys")
    accounting, dupes = bad["rows_add_up"], bad["no_duplicate_event_keys"]
    assert not accounting.passed and not dupes.passed
    assert accounting.metadata["files_not_adding_up"].value == 1
    assert "b.jsonl" in accounting.metadata["broken_files"].value
    assert "a.jsonl" not in accounting.metadata["broken_files"].value
    assert dupes.metadata["duplicated_keys"].value == 1
    assert "c3" in dupes.metadata["sample"].value
    assert "bypassed" in (dupes.description or "")


def test_quality_rules_directly(tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    with warehouse.connect(wh) as con:
        assert quality.accounting(con, "track").passed
        assert quality.accounting(con, "track").files_checked == 0
        con.execute(
            "INSERT INTO ingested_files (source_uri, etag, tenant_id, feed, status, rows_read,"
            " rows_loaded, rows_duplicate, rows_rejected) VALUES"
            " ('s3://b/x', 'e', 't', 'track', 'ingested', 5, 3, 1, 1),"
            " ('s3://b/y', 'e', 't', 'track', 'ingested', 5, NULL, 1, 1),"
            " ('s3://b/z', 'e', 't', 'track', 'failed', 5, 0, 0, 0)"
        )
        check = quality.accounting(con, "track")
        assert check.files_checked == 2
        assert [b[0] for b in check.broken] == ["s3://b/y"]
        assert "1 of 2" in check.summary
