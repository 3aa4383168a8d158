"""Dagster beyond one machine (docs/DEPLOYMENT.md): the instance on PostgreSQL with
deploy/dagster.postgres.yaml, unchanged code, the real `dagster-daemon run`.

A PostgreSQL server of its own (127.0.0.1, a free port) holds the instance. Two batches of track
files land; INGEST_MAX_FILES_PER_RUN makes the sensor ask for one run per batch, and the run
queue starts both. Then:

* every file is `ingested` once in the ledger, parsed once, and its rows are in `events` once;
* the two runs parsed at the same time: some file of one run was being read while some file of
  the other was (from each file's read start in the ledger to the moment its bronze Parquet was
  put in the lake: no DuckDB lock is taken in between), and their `track_bronze` steps overlap
  in the event log;
* the two runs' `track_warehouse` steps never overlap (the `duckdb_warehouse` pool admits one
  merge at a time across run workers);
* runs, their event logs and the sensor's ticks are rows in PostgreSQL, and the Dagster home
  holds no SQLite database.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import psycopg2
import pytest

from ingest_pipeline import warehouse
from ingest_pipeline.defs.ingestion.assets import WAREHOUSE_POOL
from ingest_pipeline.landing import LocalLanding
from ingest_pipeline_tests import chaos
from ingest_pipeline_tests.daemon import dagster_home, running_daemon
from ingest_pipeline_tests.postgres_server import PostgresParams, postgres_server

REPO = Path(__file__).resolve().parent.parent
INSTANCE_YAML = REPO / "deploy" / "dagster.postgres.yaml"
FILES_PER_BATCH = 3
# Each file is read alone (above bronze.BULK_MAX_BYTES) in a few seconds, a run's parse step
# several times as long as a run launch (the run's process loading the code). The queue launches
# runs queued together at once; when the second run is queued a moment after its pass began, it
# is launched after the first one, and the two parse steps still overlap for seconds.
ROWS_PER_FILE = 300_000
DEADLINE_SECONDS = 480
BASE_SECONDS = 1_767_225_600
IN_PROGRESS = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)

Interval = tuple[float, float]


def _track_file(path: Path, tag: str, rows: int) -> None:
    """NDJSON track events, every one distinct (contact key `tag-i`), written by DuckDB."""
    with duckdb.connect() as con:
        con.execute(
            f"""COPY (SELECT ['opened', 'clicked', 'bought'][i % 3 + 1] AS event_text,
                             {BASE_SECONDS} + i AS event_timestamp,
                             '{tag}-' || i AS contact_key,
                             ['free', 'pro', NULL][i % 3 + 1] AS plan,
                             i AS n
                      FROM range({rows}) t(i))
                TO '{path}' (FORMAT JSON)"""
        )


def _ledger(path: Path) -> list[dict] | None:
    try:
        with warehouse.connect(path, read_only=True, wait_seconds=30) as con:
            cur = con.execute(
                "SELECT landing_key, status, run_id, attempts, started_at, bronze_uri, error "
                "FROM ingested_files"
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    except (duckdb.Error, OSError):
        return None  # not created yet, or a writer holds it: look again


def _overlap(a: Interval, b: Interval) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


def _step_intervals(instance: dg.DagsterInstance, run_id: str) -> dict[str, Interval]:
    """step key -> (STEP_START, STEP_SUCCESS or STEP_FAILURE) timestamps of one run."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    records = instance.get_records_for_run(
        run_id,
        of_type={
            dg.DagsterEventType.STEP_START,
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        },
    ).records
    for record in records:
        entry = record.event_log_entry
        assert entry.step_key and entry.dagster_event
        if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
            starts[entry.step_key] = entry.timestamp
        else:
            ends[entry.step_key] = entry.timestamp
    return {key: (starts[key], ends[key]) for key in starts if key in ends}


def _pg_rows(pg: PostgresParams, sql: str, *params) -> list[tuple]:
    con = psycopg2.connect(pg.dsn())
    try:
        with con.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        con.close()


@pytest.mark.timeout(DEADLINE_SECONDS + 120)
def test_two_runs_on_a_postgres_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres_server())
        landing = LocalLanding(tmp_path / "landing")
        wh_path = tmp_path / "warehouse.duckdb"
        env = chaos.pipeline_env(
            tmp_path,
            landing,
            INGEST_SENSOR_INTERVAL_SECONDS="1",
            INGEST_MAX_FILES_PER_RUN=str(FILES_PER_BATCH),
            # A launch waits for the run's process to load the code; on a loaded machine two at
            # once can take longer than the default 60 s of a code server request.
            DAGSTER_GRPC_TIMEOUT_SECONDS="180",
            **pg.dagster_env(),
        )
        home = dagster_home(tmp_path, env, instance_yaml=INSTANCE_YAML)  # + instance migrate
        env["DAGSTER_HOME"] = str(home)
        for name, value in pg.dagster_env().items():  # this process reads the instance too
            monkeypatch.setenv(name, value)
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
        # As docs/DEPLOYMENT.md sets up an instance (`dagster instance concurrency set
        # duckdb_warehouse 1`, which makes this call): the pool's limit stored before any run,
        # not created by the first merge steps; two of them at once race on PostgreSQL and one
        # run fails (dagster-io/dagster#33552).
        instance.event_log_storage.set_concurrency_slots(WAREHOUSE_POOL, 1)

        # Two batches, landed one after the other before the daemon's first tick: the sensor
        # asks for a run per batch (oldest first, FILES_PER_BATCH files each).
        staging = tmp_path / "staging"
        staging.mkdir()
        batches: list[list[str]] = []
        for batch in ("a", "b"):
            keys = []
            for i in range(FILES_PER_BATCH):
                tag = f"{batch}{i}"
                _track_file(staging / f"{tag}.jsonl", tag, ROWS_PER_FILE)
                keys.append(landing.put(f"track/{tag}.jsonl", staging / f"{tag}.jsonl").key)
            batches.append(keys)
            time.sleep(1.1)  # the second batch lands strictly later
        all_keys = sorted(k for keys in batches for k in keys)

        with running_daemon(tmp_path, env) as daemon:
            deadline = time.monotonic() + DEADLINE_SECONDS
            ledger: list[dict] | None = None
            while True:
                runs = instance.get_runs(dg.RunsFilter(job_name="ingest_track"))
                # The feeds' sensors open the warehouse every second: it is read only when every
                # run has ended, waiting for a moment between their ticks.
                if runs and not any(r.status in IN_PROGRESS for r in runs):
                    ledger = _ledger(wh_path)
                    ingested = sorted(
                        r["landing_key"] for r in ledger or [] if r["status"] == "ingested"
                    )
                    if ingested == all_keys:
                        break
                assert daemon.alive(), daemon.tail(3000)
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"not ingested in {DEADLINE_SECONDS}s: ledger {ledger}, runs "
                        f"{[(r.run_id[:8], r.status.value) for r in runs]}\n" + daemon.tail(3000)
                    )
                time.sleep(1)

            # --- the instance is the PostgreSQL one, and it is all there -----------------------
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            failed = [r for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
            assert not failed, [(r.run_id, r.status) for r in failed]
            steps = {r.run_id: _step_intervals(instance, r.run_id) for r in runs}

        assert ledger is not None
        # --- every file once, every row once ---------------------------------------------------
        assert sorted(r["landing_key"] for r in ledger) == all_keys  # one ledger row per file
        assert all(r["status"] == "ingested" and r["attempts"] == 1 for r in ledger), ledger
        with warehouse.connect(wh_path, read_only=True) as con:
            total, distinct, per_file = con.execute(
                "SELECT count(*), count(DISTINCT (contact_key, event_text, event_timestamp)), "
                "count(DISTINCT source_uri) FROM events"
            ).fetchall()[0]
        assert (total, distinct, per_file) == (
            len(all_keys) * ROWS_PER_FILE,
            len(all_keys) * ROWS_PER_FILE,
            len(all_keys),
        )

        # --- one run per batch, and they parsed at the same time -------------------------------
        by_run: dict[str, list[dict]] = {}
        for row in ledger:
            by_run.setdefault(row["run_id"], []).append(row)
        assert len(by_run) == 2, {k: [r["landing_key"] for r in v] for k, v in by_run.items()}
        assert sorted(sorted(r["landing_key"] for r in rows) for rows in by_run.values()) == sorted(
            batches
        )

        def parse_interval(row: dict) -> Interval:
            bronze = (tmp_path / "lake" / row["bronze_uri"]).stat().st_mtime
            return row["started_at"].timestamp(), bronze

        (run_a, files_a), (run_b, files_b) = by_run.items()
        parse_overlap = max(
            _overlap(parse_interval(x), parse_interval(y))
            for x, y in itertools.product(files_a, files_b)
        )
        timeline = {
            run[:8]: {
                "bronze": steps[run].get("track_bronze"),
                "merge": steps[run].get("track_warehouse"),
                "files": {r["landing_key"]: parse_interval(r) for r in rows},
            }
            for run, rows in by_run.items()
        }
        assert parse_overlap > 0, f"the two runs never read files at the same time: {timeline}"
        assert _overlap(steps[run_a]["track_bronze"], steps[run_b]["track_bronze"]) > 0, timeline

        # --- merges one at a time, across all runs of the job ---------------------------------
        merges = sorted(s["track_warehouse"] for s in steps.values() if "track_warehouse" in s)
        assert len(merges) >= 2, steps
        for earlier, later in itertools.pairwise(merges):
            assert later[0] >= earlier[1], f"two merge steps overlapped: {merges}"

        # --- runs, event logs and sensor ticks are rows in PostgreSQL --------------------------
        run_ids = sorted(steps)
        stored = _pg_rows(
            pg, "SELECT run_id, status FROM runs WHERE pipeline_name = %s", "ingest_track"
        )
        assert sorted(stored) == [(run_id, "SUCCESS") for run_id in run_ids]
        events = _pg_rows(
            pg,
            "SELECT run_id, step_key, dagster_event_type FROM event_logs "
            "WHERE run_id = ANY(%s) AND dagster_event_type IN ('STEP_START', 'STEP_SUCCESS')",
            run_ids,
        )
        for run_id in (run_a, run_b):
            for step in ("track_bronze", "track_warehouse"):
                for kind in ("STEP_START", "STEP_SUCCESS"):
                    assert (run_id, step, kind) in events
        ticks = _pg_rows(
            pg,
            "SELECT count(*) FROM job_ticks WHERE tick_body LIKE %s AND status = 'SUCCESS'",
            "%track_landing_sensor%",
        )
        assert ticks[0][0] >= 1, "no successful track sensor tick stored in PostgreSQL"
        limits = _pg_rows(pg, 'SELECT concurrency_key, "limit" FROM concurrency_limits')
        assert limits == [(WAREHOUSE_POOL, 1)]
        assert not list(home.rglob("*.db")), list(home.rglob("*.db"))
        print(
            f"parse overlap {parse_overlap:.1f}s; merges "
            f"{[(datetime.fromtimestamp(s, UTC).time(), datetime.fromtimestamp(e, UTC).time()) for s, e in merges]}"
        )
