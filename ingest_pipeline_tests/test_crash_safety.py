"""Crash safety (SPEC section 4, issue #3): a run SIGKILLed at any point leaves the warehouse as
before or as after, never half-merged, and the next run finishes the job.

Each test runs a pipeline step in a child process (ingest_pipeline_tests/chaos.py), makes it park
at a chosen point (inside the merge transaction after rows were inserted; after a bronze Parquet
was written but before its ledger row), SIGKILLs it there, checks the warehouse opened afresh,
re-runs the step in this process and compares every table with a reference warehouse built
sequentially from the same landed files.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from ingest_pipeline import pipeline, warehouse
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import LocalLanding
from ingest_pipeline_tests import chaos

ROWS = 3000


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, LocalLanding, dict[str, str]]:
    landing = LocalLanding(tmp_path / "landing")
    return tmp_path, landing, chaos.pipeline_env(tmp_path, landing)


def _step(root: Path, landing: LocalLanding, feed, objects) -> None:
    """Bronze for `objects`, in this process, against the site's warehouse and lake."""
    pipeline.ingest_to_bronze(
        objects,
        feed,
        landing=landing,
        lake=LocalLanding(root / "lake"),
        warehouse_path=root / "warehouse.duckdb",
        tenant_id=chaos.TENANT,
        run_id="parent",
    )


def _merge(root: Path, feed) -> pipeline.MergeOutcome:
    return pipeline.merge_pending(
        feed, lake=LocalLanding(root / "lake"), warehouse_path=root / "warehouse.duckdb"
    )


def _assert_each_file_once(root: Path, keys: list[str]) -> None:
    with warehouse.connect(root / "warehouse.duckdb") as con:
        rows = con.execute(
            "SELECT landing_key, status, rows_read, rows_loaded, rows_duplicate, rows_rejected "
            "FROM ingested_files"
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(keys)
    for key, status, read, loaded, duplicate, rejected in rows:
        assert status == "ingested", (key, status)
        assert read == loaded + duplicate + rejected, key


@pytest.mark.parametrize("feed_name", ["track", "identify"])
def test_sigkill_inside_the_merge_transaction_leaves_the_warehouse_as_before(
    site, feed_name: str
) -> None:
    root, landing, env = site
    feed = FEEDS[feed_name]
    # One file already merged, three waiting (`parsed`) for the merge that will be killed.
    first = chaos.drop(landing, feed, ["a"], ROWS)
    _step(root, landing, feed, first)
    _merge(root, feed)
    waiting = chaos.drop(landing, feed, ["b", "c", "d"], ROWS)
    _step(root, landing, feed, waiting)
    wh = root / "warehouse.duckdb"
    before = chaos.snapshot(wh)
    assert {k: s for k, s in chaos.ledger(wh).items() if s == "parsed"} == {
        o.key: "parsed" for o in waiting
    }

    child = chaos.Child(root, env, "merge", feed, stop_at=1)
    parked = child.wait_stopped()
    child.kill()
    # The child was provably inside the transaction: its rows were in (uncommitted) and the
    # three files were already flipped to ingested (in one statement).
    table = feed.primary_target.table
    assert parked["counts"][table] > len(before[table]), parked
    assert parked["counts"]["ingested"] == 1 + 3, parked

    # Opened afresh after the kill: exactly as before, the files still parsed.
    assert chaos.snapshot(wh) == before
    assert all(chaos.ledger(wh)[o.key] == "parsed" for o in waiting)

    # The next merge finishes the job: same as a run that was never killed.
    outcome = _merge(root, feed)
    assert len(outcome.files) == len(waiting)
    reference = chaos.reference_run(landing, feed, [first, waiting], root / "ref")
    assert chaos.snapshot(wh) == chaos.snapshot(reference)
    _assert_each_file_once(root, [o.key for o in first + waiting])


def test_sigkill_between_bronze_parquet_and_ledger_row_then_rerun_equals_reference(site) -> None:
    root, landing, env = site
    feed = FEEDS["track"]
    first = chaos.drop(landing, feed, ["a"], ROWS)
    _step(root, landing, feed, first)
    _merge(root, feed)
    batch = chaos.drop(landing, feed, ["b", "c", "d"], ROWS)
    wh = root / "warehouse.duckdb"
    before = chaos.snapshot(wh)

    # Stop when the pass's bronze Parquet (and quarantine) is in the lake, before its files'
    # ledger rows are written (the three small files are read in one pass).
    child = chaos.Child(root, env, "bronze", feed, stop_at=1, keys=[o.key for o in batch])
    parked = child.wait_stopped()
    child.kill()
    assert parked["files"] == [o.uri for o in batch]
    assert (root / "lake" / parked["bronze_uri"]).is_file()  # written before the kill

    # The ledger knew the batch from the start: the run had claimed it and was reading its
    # pass; the pass's results were never recorded, so every file of the pass is still
    # `parsing`, with no rows.
    status = chaos.ledger(wh)
    assert {k: status.get(k) for k in (o.key for o in batch)} == {o.key: "parsing" for o in batch}
    with warehouse.connect(wh) as con:
        assert con.execute(
            "SELECT count(*) FROM rejected_rows WHERE source_uri = ?", [batch[0].uri]
        ).fetchall() == [(0,)]
    after_kill = chaos.snapshot(wh)
    for table in chaos.TABLES:
        if table not in ("ingested_files", "rejected_rows"):
            assert after_kill[table] == before[table], table

    # Re-run the whole step (bronze for the batch, then merge): as if never killed.
    _step(root, landing, feed, batch)
    _merge(root, feed)
    reference = chaos.reference_run(landing, feed, [first, batch], root / "ref")
    assert chaos.snapshot(wh) == chaos.snapshot(reference)
    _assert_each_file_once(root, [o.key for o in first + batch])


def _events_match_the_ledger(wh: Path, rows_by_key: dict[str, int]) -> None:
    """At any moment: a file's events are in the warehouse iff the ledger says it is ingested
    (files share no event keys, so each ingested file owns exactly its valid deduped rows)."""
    with warehouse.connect(wh) as con:
        status = dict(con.execute("SELECT source_uri, status FROM ingested_files").fetchall())
        loaded = dict(con.execute("SELECT source_uri, rows_loaded FROM ingested_files").fetchall())
        events = dict(con.execute("SELECT source_uri, count(*) FROM events GROUP BY 1").fetchall())
    assert set(status.values()) <= {"queued", "parsing", "parsed", "ingested"}, status
    for uri, state in status.items():
        if state == "ingested":
            assert events.get(uri) == loaded[uri] == rows_by_key[uri], (uri, state, events)
        else:
            assert uri not in events, (uri, state)
    assert set(events) <= {u for u, s in status.items() if s == "ingested"}


def test_sigkill_at_random_moments_then_the_next_run_finishes_the_job(site) -> None:
    root, landing, env = site
    feed = FEEDS["track"]
    objects = chaos.drop(landing, feed, [f"r{i}" for i in range(6)], ROWS)
    wh = root / "warehouse.duckdb"
    started = time.monotonic()
    reference = chaos.reference_run(landing, feed, [objects], root / "ref")
    duration = time.monotonic() - started  # what one uninterrupted run takes
    with warehouse.connect(reference) as con:
        rows_by_uri = dict(
            con.execute("SELECT source_uri, rows_loaded FROM ingested_files").fetchall()
        )

    # Kill a child running bronze + merge at moments spread over its work (each restart resumes
    # where the previous left off: ingested files are skipped).
    rng = random.Random(20261101)
    kills = 0
    for fraction in (0.15, 0.5, 0.85):
        child = chaos.Child(root, env, "full", feed)
        child.wait_ready()
        time.sleep(duration * rng.uniform(fraction - 0.1, fraction + 0.1))
        if child.proc.poll() is None:
            kills += 1
        child.kill()
        if wh.exists():
            _events_match_the_ledger(wh, rows_by_uri)
    assert kills >= 1

    # The next run finishes the job.
    child = chaos.Child(root, env, "full", feed)
    assert child.wait() == 0, child.output()
    _events_match_the_ledger(wh, rows_by_uri)
    assert chaos.snapshot(wh) == chaos.snapshot(reference)
    _assert_each_file_once(root, [o.key for o in objects])
