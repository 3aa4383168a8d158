"""The real thing: `dagster-daemon run` with a temporary DAGSTER_HOME, files dropped into the moto
bucket, and the warehouse filling up with no further action (sensors RUNNING by default)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import pytest

from ingest_pipeline import warehouse
from ingest_pipeline.landing import landing_from_url
from ingest_pipeline.samples import sample_files
from ingest_pipeline_tests import oracle
from ingest_pipeline_tests.daemon import dagster_home, running_daemon

REPO = Path(__file__).resolve().parent.parent
DEADLINE_SECONDS = 300


def _warehouse_state(path: Path) -> tuple[int, list[tuple[str, str]]]:
    try:
        with warehouse.connect(path, read_only=True, wait_seconds=5) as con:
            events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
            files = con.execute("SELECT landing_key, status FROM ingested_files").fetchall()
            return events, files
    except (duckdb.Error, OSError):
        return -1, []  # not created yet, or a writer holds it: look again


@pytest.mark.timeout(DEADLINE_SECONDS + 60)
def test_daemon_ingests_dropped_files(s3_bucket, tmp_path: Path) -> None:
    client, bucket = s3_bucket
    wh_path = tmp_path / "warehouse.duckdb"
    env = dict(
        os.environ,
        INGEST_LANDING_URL=f"s3://{bucket}/drop",
        INGEST_LAKE_URL=str(tmp_path / "lake"),
        INGEST_WAREHOUSE_PATH=str(wh_path),
        INGEST_SENSOR_INTERVAL_SECONDS="1",
    )
    env["DAGSTER_HOME"] = str(dagster_home(tmp_path, env))
    with running_daemon(tmp_path, env) as daemon:
        landing = landing_from_url(f"s3://{bucket}/drop", s3_client=client)
        samples = {k: v for k, v in sample_files().items() if k.startswith(("track/", "identify/"))}
        for key, body in samples.items():
            landing.put(key, body)
        expected_events = len(
            oracle.expected_events(
                [
                    oracle.LandedFile(
                        uri=o.uri, key=o.key, landed_at=o.last_modified, body=samples[o.key]
                    )
                    for o in landing.list("track/")
                ]
            )
        )
        deadline = time.monotonic() + DEADLINE_SECONDS
        state: tuple[int, list[tuple[str, str]]] = (-1, [])
        while time.monotonic() < deadline:
            state = _warehouse_state(wh_path)
            events, files = state
            if events == expected_events and sorted(
                k for k, s in files if s == "ingested"
            ) == sorted(samples):
                break
            assert daemon.alive(), daemon.tail(3000)
            time.sleep(2)
        else:
            pytest.fail(
                f"warehouse not filled in {DEADLINE_SECONDS}s: {state}\n" + daemon.tail(3000)
            )
