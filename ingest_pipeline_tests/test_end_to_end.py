"""Sample files for all four feeds land (S3 on a loopback moto server, or a folder); the sensors
pick them up; the runs materialize; the warehouse holds exactly what the independent oracle says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from ingest_pipeline import warehouse
from ingest_pipeline.definitions import RESOURCES, defs
from ingest_pipeline.feeds import FEEDS, feed_for_key
from ingest_pipeline.landing import landing_from_url
from ingest_pipeline.samples import sample_files
from ingest_pipeline_tests import oracle

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def pipeline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INGEST_LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("INGEST_WAREHOUSE_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("INGEST_TENANT", "default")
    monkeypatch.setenv("INGEST_MAX_FILES_PER_RUN", "2")  # several runs per feed: batching works
    return tmp_path


@pytest.fixture(params=["s3", "local"])
def landing_url(
    request: pytest.FixtureRequest, pipeline_env: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    if request.param == "s3":
        _client, bucket = request.getfixturevalue("s3_bucket")
        url = f"s3://{bucket}/incoming"
    else:
        url = str(pipeline_env / "landing")
    monkeypatch.setenv("INGEST_LANDING_URL", url)
    return url


def tick_and_run(instance: dg.DagsterInstance, cursors: dict[str, str | None]) -> int:
    """One tick of every feed sensor; execute the runs it requests. Returns the run count."""
    runs = 0
    for name in FEEDS:
        sensor = defs.get_sensor_def(f"{name}_landing_sensor")
        with dg.build_sensor_context(
            instance=instance,
            cursor=cursors.get(name),
            resources=RESOURCES,
            definitions=defs,
        ) as context:
            result = sensor.evaluate_tick(context)
        cursors[name] = result.cursor
        job = defs.resolve_job_def(f"ingest_{name}")
        for request in result.run_requests or []:
            outcome = job.execute_in_process(
                run_config=request.run_config,
                partition_key=request.partition_key,
                instance=instance,
                tags=request.tags,
            )
            assert outcome.success
            runs += 1
    return runs


def landed_files(url: str, prefix: str) -> list[oracle.LandedFile]:
    landing = landing_from_url(url)
    files = []
    for obj in landing.list(prefix):
        body = Path(obj.uri).read_bytes() if not obj.uri.startswith("s3://") else _s3_body(obj.uri)
        files.append(
            oracle.LandedFile(uri=obj.uri, key=obj.key, landed_at=obj.last_modified, body=body)
        )
    return files


def _s3_body(uri: str) -> bytes:
    import boto3

    bucket, key = uri[len("s3://") :].split("/", 1)
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def test_sample_files_land_and_match_the_oracle(landing_url: str, pipeline_env: Path) -> None:
    landing = landing_from_url(landing_url)
    for key, body in sample_files().items():
        landing.put(key, body)

    cursors: dict[str, str | None] = {}
    with dg.instance_for_test() as instance:
        runs = tick_and_run(instance, cursors)
        assert runs >= len({feed_for_key(key).name for key in sample_files()})  # a run per feed
        # Nothing new: a second tick requests nothing.
        assert tick_and_run(instance, cursors) == 0

    with warehouse.connect(pipeline_env / "warehouse.duckdb", read_only=True) as con:
        # events
        expected = oracle.expected_events(landed_files(landing_url, "track/"))
        got = {
            (t, c, e, ts): {"properties": json.loads(p), "source_uri": s, "line_number": n}
            for t, c, e, ts, p, s, n in con.execute(
                "SELECT tenant_id, contact_key, event_text, event_timestamp, properties, source_uri, "
                "line_number FROM events"
            ).fetchall()
        }
        assert got == expected

        # contacts: email column + attributes JSON
        expected_contacts = oracle.expected_attributes(
            landed_files(landing_url, "identify/"), "identify", "contact_key"
        )
        got_contacts = {
            (t, k): {**json.loads(a), "email": e}
            for t, k, e, a in con.execute(
                "SELECT tenant_id, contact_key, email, attributes FROM contacts"
            ).fetchall()
        }
        assert got_contacts == expected_contacts

        # group: latest account per contact; account attributes
        group_files = landed_files(landing_url, "group/")
        assert dict(
            ((t, c), a)
            for t, c, a in con.execute(
                "SELECT tenant_id, contact_key, account_key FROM contact_accounts"
            ).fetchall()
        ) == oracle.expected_contact_accounts(group_files)
        expected_accounts = oracle.expected_attributes(group_files, "group", "account_key")
        got_accounts = {
            (t, k): json.loads(a)
            for t, k, a in con.execute(
                "SELECT tenant_id, account_key, attributes FROM accounts"
            ).fetchall()
        }
        assert got_accounts == expected_accounts

        # crm leads
        assert dict(
            ((t, e), a)
            for t, e, a in con.execute("SELECT tenant_id, email, account FROM crm_leads").fetchall()
        ) == oracle.expected_crm_emails(landed_files(landing_url, "crm/"))

        # the ledger: every sample file once, ingested, and every row accounted for
        ledger_rows = con.execute(
            "SELECT landing_key, status, rows_read, rows_loaded, rows_duplicate, rows_rejected "
            "FROM ingested_files ORDER BY landing_key"
        ).fetchall()
        samples = sample_files()
        assert [r[0] for r in ledger_rows] == sorted(samples)
        for key, status, read, loaded, duplicate, rejected in ledger_rows:
            assert status == "ingested", key
            assert read == oracle.rows_read(key, samples[key]), key
            assert read == loaded + duplicate + rejected, key
        # the bad rows of the sample are quarantined with reasons
        rejected = con.execute(
            "SELECT line_number, reason FROM rejected_rows ORDER BY line_number"
        ).fetchall()
        assert [r[0] for r in rejected] == [4, 5, 6]
        assert "event_timestamp" in rejected[0][1] and "milliseconds" in rejected[1][1]
        assert "invalid JSON" in rejected[2][1]


WAREHOUSE_TABLES = (
    "events",
    "contacts",
    "accounts",
    "contact_accounts",
    "crm_leads",
    "rejected_rows",
)


def snapshot(path: Path) -> dict[str, list[tuple]]:
    with warehouse.connect(path, read_only=True) as con:
        return {
            t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in WAREHOUSE_TABLES
        }


def test_backfill_range_and_single_file_reingest_are_idempotent(
    pipeline_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(pipeline_env / "landing")
    monkeypatch.setenv("INGEST_LANDING_URL", url)
    landing = landing_from_url(url)
    for key, body in sample_files().items():
        landing.put(key, body)
    wh = pipeline_env / "warehouse.duckdb"
    with dg.instance_for_test() as instance:
        tick_and_run(instance, {})
    before = snapshot(wh)
    assert before["events"]

    # Lose the events, then backfill the landing dates with the CLI: the same rows come back.
    with warehouse.connect(wh) as con:
        con.execute("DELETE FROM events")
    day = next(iter(landing.list("track/"))).last_modified.date()
    home = pipeline_env / "dagster_home"
    home.mkdir()
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dg"),
            "launch",
            "--job",
            "ingest_track",
            "--partition-range",
            f"{day - timedelta(days=1)}...{day}",
        ],
        cwd=REPO,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert snapshot(wh) == before
    with warehouse.connect(wh, read_only=True) as con:
        statuses = con.execute(
            "SELECT status, count(*) FROM ingested_files WHERE feed = 'track' GROUP BY 1"
        ).fetchall()
    assert statuses == [("ingested", 3)]

    # One file on its own, by landing key, even though it is already ingested.
    with warehouse.connect(wh) as con:
        con.execute("DELETE FROM events WHERE source_uri LIKE '%sample_track.csv'")
    with dg.instance_for_test() as instance:
        outcome = defs.resolve_job_def("ingest_track").execute_in_process(
            run_config={"ops": {"track_bronze": {"config": {"keys": ["track/sample_track.csv"]}}}},
            partition_key=day.isoformat(),
            instance=instance,
        )
    assert outcome.success
    bronze_meta = outcome.asset_materializations_for_node("track_bronze")[0].metadata
    assert bronze_meta["files"].value == 1
    assert snapshot(wh) == before


def test_sensor_ingests_fifty_same_second_uploads_exactly_once(
    s3_bucket, pipeline_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 track files land on S3 around one second, some after a tick already ran in that
    second; every file is ingested once, in batches (several files per run)."""
    client, bucket = s3_bucket
    url = f"s3://{bucket}/drop"
    monkeypatch.setenv("INGEST_LANDING_URL", url)
    monkeypatch.setenv("INGEST_MAX_FILES_PER_RUN", "20")
    landing = landing_from_url(url, s3_client=client)

    def drop(i: int) -> None:
        row = {"event_text": "opened", "event_timestamp": 1_767_225_600 + i, "contact_key": f"c{i}"}
        landing.put(f"track/burst-{i:02d}.jsonl", (json.dumps(row) + "\n").encode())

    cursors: dict[str, str | None] = {}
    with dg.instance_for_test() as instance:
        for i in range(30):
            drop(i)
        first = tick_and_run(instance, cursors)
        for i in range(30, 50):
            drop(i)
        second = tick_and_run(instance, cursors)
        assert tick_and_run(instance, cursors) == 0
        runs = instance.get_runs()
    assert first >= 2 and second >= 1  # batched: 20 files per run at most
    assert all(int(r.tags["ingest/files"]) <= 20 for r in runs)
    assert sum(int(r.tags["ingest/files"]) for r in runs) == 50
    with warehouse.connect(pipeline_env / "warehouse.duckdb", read_only=True) as con:
        files = con.execute(
            "SELECT landing_key, status, rows_loaded FROM ingested_files ORDER BY 1"
        ).fetchall()
        events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    assert files == [(f"track/burst-{i:02d}.jsonl", "ingested", 1) for i in range(50)]
    assert events == 50
