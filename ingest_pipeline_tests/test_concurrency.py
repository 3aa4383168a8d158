"""Concurrency (issue #3): runs that overlap on one DuckDB warehouse end with the same warehouse
as a sequential run, and DuckDB's single-writer lock never reaches the user as a failed run.

(a) two `dagster asset materialize` processes for different batches, started together;
(b) a partition-range backfill (`dg launch`) running while the track sensor requests runs for
    newly landed files, executed in this process.
Each run's Dagster instance is its own (no shared pool), so only `warehouse.connect`'s wait on the
DuckDB file lock keeps the writers apart: the hardest case for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from ingest_pipeline import warehouse
from ingest_pipeline.definitions import RESOURCES, defs
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import LandedObject, LocalLanding
from ingest_pipeline_tests import chaos
from ingest_pipeline_tests.helpers import sorted_rows

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FEED = FEEDS["track"]
ROWS = 4000
LOCK_ERRORS = ("Could not set lock", "Conflicting lock", "IO Error: Could not set lock")


def _comparable(snap: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """A snapshot without per-file loaded/duplicate split of re-sent rows: which file's merge
    counts a row shared by two files as loaded depends on merge order (documented); their sum
    and every table's contents do not."""
    out = dict(snap)
    files = []
    for row in snap["ingested_files"]:
        row = dict(row)
        row["rows_merged"] = row.pop("rows_loaded") + row.pop("rows_duplicate")
        files.append(row)
    out["ingested_files"] = sorted_rows(files)
    return out


def _spans(wh: Path) -> dict[str, tuple[datetime, datetime]]:
    """run_id -> (first bronze start, last merge end) of the files it ingested."""
    with warehouse.connect(wh) as con:
        rows = con.execute(
            "SELECT run_id, min(started_at), max(finished_at) FROM ingested_files GROUP BY 1"
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _overlap(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# `dagster asset materialize`, started once both processes have paid their imports: the runs
# then start within moments of each other, however unevenly a loaded machine starts processes.
START_TOGETHER = r"""
import pathlib, sys, time
import ingest_pipeline.definitions
from dagster._cli import main
barrier, parties, name = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
(barrier / name).touch()
deadline = time.monotonic() + 300
while len(list(barrier.iterdir())) < parties and time.monotonic() < deadline:
    time.sleep(0.01)
sys.argv = ["dagster", *sys.argv[4:]]
sys.exit(main())
"""


def _materialize(
    root: Path, env: dict[str, str], name: str, objects: list[LandedObject], day: str
) -> subprocess.Popen:
    home = root / f"home-{name}"
    home.mkdir()
    config = {"ops": {"track_bronze": {"config": {"files": [o.to_dict() for o in objects]}}}}
    log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - closed when the process ends
    barrier = root / "barrier"
    barrier.mkdir(exist_ok=True)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            START_TOGETHER,
            str(barrier),
            "2",
            name,
            "asset",
            "materialize",
            "-m",
            "ingest_pipeline.definitions",
            "--select",
            "track_bronze,track_warehouse",
            "--partition",
            day,
            "--config-json",
            json.dumps(config),
        ],
        cwd=REPO,
        env={**env, "DAGSTER_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_two_runs_started_together_end_like_a_sequential_run(tmp_path: Path) -> None:
    landing = LocalLanding(tmp_path / "landing")
    env = chaos.pipeline_env(tmp_path, landing)
    batch_a = chaos.drop(landing, FEED, [f"a{i}" for i in range(5)], ROWS)
    batch_b = chaos.drop(landing, FEED, [f"b{i}" for i in range(5)], ROWS)
    # b also re-sends a0's events (landed later: its rows must win wherever they are merged)
    batch_b.append(landing.put("track/b-resend.jsonl", chaos.track_body("a0", ROWS)))
    day = batch_a[0].last_modified.date().isoformat()
    assert {o.last_modified.date().isoformat() for o in batch_a + batch_b} == {day}

    procs = {
        "a": _materialize(tmp_path, env, "a", batch_a, day),
        "b": _materialize(tmp_path, env, "b", batch_b, day),
    }
    codes = {name: p.wait(timeout=400) for name, p in procs.items()}
    logs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in procs}
    for name, code in codes.items():
        assert code == 0, logs[name][-5000:]
        assert "RUN_SUCCESS" in logs[name]
        assert not any(e in logs[name] for e in LOCK_ERRORS), logs[name][-5000:]

    wh = tmp_path / "warehouse.duckdb"
    spans = _spans(wh)
    assert len(spans) == 2, spans
    first, second = spans.values()
    assert _overlap(first, second), f"the two runs did not overlap: {spans}"

    reference = chaos.reference_run(landing, FEED, [batch_a, batch_b], tmp_path / "ref")
    assert _comparable(chaos.snapshot(wh)) == _comparable(chaos.snapshot(reference))
    with warehouse.connect(wh) as con:
        winners = con.execute(
            "SELECT DISTINCT source_uri FROM events WHERE contact_key LIKE 'a0-%'"
        ).fetchall()
    assert winners == [(batch_b[-1].uri,)]


def _count_lock_waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count, in this process, the DuckDB lock conflicts `warehouse.connect` waited out."""
    import duckdb

    waits = [0]

    class Spy:
        def __getattr__(self, name: str):
            return getattr(duckdb, name)

        @staticmethod
        def connect(*args, **kwargs):
            try:
                return duckdb.connect(*args, **kwargs)
            except duckdb.Error as exc:
                if "lock" in str(exc).lower():
                    waits[0] += 1
                raise

    monkeypatch.setattr(warehouse, "duckdb", Spy())
    return waits


def _tick_and_run(instance: dg.DagsterInstance, cursor: str | None, on_start) -> tuple[str, int]:
    """One tick of the track sensor; its run requests executed here. Returns (cursor, runs)."""
    sensor = defs.get_sensor_def("track_landing_sensor")
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=RESOURCES, definitions=defs
    ) as context:
        result = sensor.evaluate_tick(context)
    job = defs.resolve_job_def("ingest_track")
    runs = 0
    for request in result.run_requests or []:
        on_start()
        outcome = job.execute_in_process(
            run_config=request.run_config,
            partition_key=request.partition_key,
            instance=instance,
            tags=request.tags,
        )
        assert outcome.success
        runs += 1
    return result.cursor, runs


def test_backfill_while_the_sensor_launches_runs_ends_like_a_sequential_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    landing = LocalLanding(tmp_path / "landing")
    env = chaos.pipeline_env(tmp_path, landing, INGEST_MAX_FILES_PER_RUN="2")
    for name in ("INGEST_LANDING_URL", "INGEST_LAKE_URL", "INGEST_WAREHOUSE_PATH", "INGEST_TENANT"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("INGEST_MAX_FILES_PER_RUN", "2")
    old = chaos.drop(landing, FEED, [f"old{i:02d}" for i in range(12)], ROWS)
    day = old[0].last_modified.date()
    waits = _count_lock_waits(monkeypatch)

    home = tmp_path / "dagster_home"
    home.mkdir()
    log = open(tmp_path / "backfill.log", "wb")  # noqa: SIM115
    backfill = subprocess.Popen(
        [
            str(BIN / "dg"),
            "launch",
            "--job",
            "ingest_track",
            "--partition-range",
            f"{day - timedelta(days=1)}...{day}",
        ],
        cwd=REPO,
        env={**env, "DAGSTER_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Wait until the backfill is writing bronze files, then land new files and let the sensor
        # launch runs for them while the backfill goes on.
        bronze = tmp_path / "lake" / "bronze" / "track"
        deadline = time.monotonic() + 180
        while not (bronze.exists() and any(bronze.rglob("*.parquet"))):
            assert backfill.poll() is None, (tmp_path / "backfill.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "the backfill never started its bronze step"
            time.sleep(0.05)
        new = chaos.drop(landing, FEED, [f"new{i}" for i in range(3)], ROWS)

        alive_at_start: list[bool] = []
        cursor, runs = None, 0
        with dg.instance_for_test() as instance:
            while True:
                cursor, n = _tick_and_run(
                    instance, cursor, lambda: alive_at_start.append(backfill.poll() is None)
                )
                runs += n
                if n == 0:
                    break
        code = backfill.wait(timeout=400)
    finally:
        if backfill.poll() is None:
            backfill.kill()
            backfill.wait()
        log.close()
    output = (tmp_path / "backfill.log").read_text(errors="replace")
    assert code == 0, output[-5000:]
    assert not any(e in output for e in LOCK_ERRORS), output[-5000:]
    assert runs >= 2  # 15 files, 2 per run: the sensor asked for several runs
    assert alive_at_start and alive_at_start[0], (
        f"the sensor's runs did not overlap the backfill (lock waits here: {waits[0]})"
    )

    wh = tmp_path / "warehouse.duckdb"
    reference = chaos.reference_run(landing, FEED, [old + new], tmp_path / "ref")
    assert _comparable(chaos.snapshot(wh)) == _comparable(chaos.snapshot(reference))
    with warehouse.connect(wh) as con:
        statuses = con.execute("SELECT status, count(*) FROM ingested_files GROUP BY 1").fetchall()
    assert statuses == [("ingested", len(old) + len(new))]
