"""Helpers for the crash and concurrency tests: generated feed files, warehouse snapshots that
ignore only run-dependent columns, a sequential reference run, and child processes that run
pipeline steps (and can be made to stop at a chosen point so the parent can SIGKILL them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ingest_pipeline import pipeline, warehouse
from ingest_pipeline.feeds import FEEDS, FeedSpec
from ingest_pipeline.landing import LandedObject, LocalLanding
from ingest_pipeline_tests.helpers import rows_of, sorted_rows

TENANT = "default"
BASE_SECONDS = 1_767_225_600

# Every warehouse table (SPEC section 6 plus attribute_values).
TABLES = (
    "events",
    "account_events",
    "contacts",
    "accounts",
    "attribute_values",
    "contact_accounts",
    "aliases",
    "crm_leads",
    "rejected_rows",
    "ingested_files",
)
# Columns that say when or by which run or request something happened, not what the warehouse
# holds.
RUN_COLUMNS = {
    "ingested_files": (
        "started_at",
        "finished_at",
        "run_id",
        "queued_at",
        "request_key",
        "attempts",
        "requests",
        # Small files read in one bulk pass share its bronze file; which pass (and so which
        # bronze file) a file lands in depends on how the runs grouped them.
        "bronze_uri",
    )
}


# --- files ---------------------------------------------------------------------------------------


def track_body(tag: str, rows: int, *, bad_every: int = 97, dup_every: int = 89) -> bytes:
    """NDJSON track events with contact keys unique to `tag` (no collisions across files), a
    rejected line every `bad_every` lines and a duplicate of the previous event every `dup_every`."""
    lines = []
    previous = None
    for i in range(rows):
        if i and i % bad_every == 0:
            lines.append('{"event_text": "broken", ')
            continue
        if previous is not None and i % dup_every == 0:
            lines.append(previous)
            continue
        previous = json.dumps(
            {
                "event_text": ("opened", "clicked", "bought")[i % 3],
                "event_timestamp": BASE_SECONDS + i,
                "contact_key": f"{tag}-{i % 500}",
                "plan": ("free", "pro", None)[i % 3],
                "n": i,
            }
        )
        lines.append(previous)
    return ("\n".join(lines) + "\n").encode()


def identify_body(tag: str, rows: int, *, bad_every: int = 101) -> bytes:
    lines = []
    for i in range(rows):
        if i and i % bad_every == 0:
            lines.append(json.dumps({"contact_key": f"{tag}-{i}", "email": "not-an-email"}))
            continue
        lines.append(
            json.dumps(
                {
                    "contact_key": f"{tag}-{i % 700}",
                    "email": f"{tag}.{i % 700}@example.com",
                    "plan": ("free", "pro", None)[i % 3],
                    "seats": i % 50,
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def body_for(feed: FeedSpec, tag: str, rows: int) -> bytes:
    return track_body(tag, rows) if feed.name == "track" else identify_body(tag, rows)


def drop(
    landing: LocalLanding, feed: FeedSpec, tags: Sequence[str], rows: int
) -> list[LandedObject]:
    return [
        landing.put(f"{feed.landing_prefix}{tag}.jsonl", body_for(feed, tag, rows)) for tag in tags
    ]


# --- warehouse state -----------------------------------------------------------------------------


def snapshot(path: str | Path, tables: Sequence[str] = TABLES) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows (sorted), without the run-dependent columns of the ledger."""
    with warehouse.connect(path) as con:
        out = {}
        for table in tables:
            rows = rows_of(con, f"SELECT * FROM {table}")
            for row in rows:
                for col in RUN_COLUMNS.get(table, ()):
                    row.pop(col, None)
            out[table] = sorted_rows(rows)
    return out


def ledger(path: str | Path) -> dict[str, str]:
    """landing key -> status."""
    with warehouse.connect(path) as con:
        return dict(con.execute("SELECT landing_key, status FROM ingested_files").fetchall())


def reference_run(
    landing: LocalLanding,
    feed: FeedSpec,
    batches: Sequence[Sequence[LandedObject]],
    root: Path,
) -> Path:
    """The same files ingested sequentially into a fresh warehouse and lake under `root`: per
    batch, bronze then merge. Returns the warehouse path."""
    wh = root / "reference.duckdb"
    lake = LocalLanding(root / "reference-lake")
    for batch in batches:
        pipeline.ingest_to_bronze(
            batch, feed, landing=landing, lake=lake, warehouse_path=wh, tenant_id=TENANT
        )
        pipeline.merge_pending(feed, lake=lake, warehouse_path=wh)
    return wh


# --- child processes -----------------------------------------------------------------------------

CHILD = r'''
"""A pipeline step in its own process; with a stop point it parks there so it can be killed."""
import json, os, sys, time
from pathlib import Path

from ingest_pipeline import ledger, pipeline
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import LocalLanding

mode, feed_name, marker, stop_at = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
keys = sys.argv[5:]
feed = FEEDS[feed_name]
landing = LocalLanding(os.environ["INGEST_LANDING_URL"])
lake = LocalLanding(os.environ["INGEST_LAKE_URL"])
wh = os.environ["INGEST_WAREHOUSE_PATH"]
calls = 0
print("ready", flush=True)


def park(info):
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(info, default=str))
    os.replace(tmp, marker)
    time.sleep(600)


def counts(con):
    tables = [t.table for t in feed.targets] + ["ingested_files"]
    out = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    out["ingested"] = con.execute(
        "SELECT count(*) FROM ingested_files WHERE status = 'ingested'").fetchall()[0][0]
    return out


if mode == "merge":
    # Stop inside the merge transaction, after the rows were inserted and the files were
    # flipped to ingested, before COMMIT (`stop_at`: the how-manieth merge transaction).
    original = ledger.record_merged_many

    def record_merged_many(con, merged, at):
        global calls
        original(con, merged, at)
        calls += 1
        if calls == stop_at:
            park({"stopped": "merge", "files": [p.source_uri for p, _ in merged],
                  "counts": counts(con)})

    ledger.record_merged_many = record_merged_many

if mode == "bronze":
    # Stop when the `stop_at`-th pass's bronze Parquet is in the lake, before its files'
    # ledger rows are written.
    original_outcomes = ledger.record_outcomes

    def record_outcomes(con, outcomes, feed, **kwargs):
        global calls
        calls += 1
        if calls == stop_at:
            park({"stopped": "bronze", "files": [o.source.uri for o in outcomes],
                  "bronze_uri": outcomes[0].bronze_uri})
        original_outcomes(con, outcomes, feed, **kwargs)

    ledger.record_outcomes = record_outcomes

objects = [landing.stat(k) for k in keys] if keys else list(landing.list(feed.landing_prefix))
if mode in ("bronze", "full"):
    pipeline.ingest_to_bronze(objects, feed, landing=landing, lake=lake, warehouse_path=wh,
                              tenant_id=os.environ.get("INGEST_TENANT", "default"),
                              run_id=f"child-{os.getpid()}")
if mode in ("merge", "full"):
    pipeline.merge_pending(feed, lake=lake, warehouse_path=wh)
print("done", flush=True)
'''


def pipeline_env(root: Path, landing: LocalLanding, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "INGEST_LANDING_URL": str(landing.root),
        "INGEST_LAKE_URL": str(root / "lake"),
        "INGEST_WAREHOUSE_PATH": str(root / "warehouse.duckdb"),
        "INGEST_TENANT": TENANT,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    # The parent may run under a coverage or a plugin that children need not load.
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


class Child:
    """A child process running CHILD: `mode` is merge, bronze or full."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str],
        mode: str,
        feed: FeedSpec,
        *,
        stop_at: int = 0,
        keys: Sequence[str] = (),
    ) -> None:
        script = root / "chaos_child.py"
        script.write_text(CHILD)
        self.marker = root / f"stopped-{mode}-{time.monotonic_ns()}.json"
        self.log = root / f"child-{mode}-{time.monotonic_ns()}.log"
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), mode, feed.name, str(self.marker), str(stop_at), *keys],
            env=env,
            cwd=root,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the child has imported the pipeline and is about to start its work."""
        deadline = time.monotonic() + timeout
        while "ready" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"child did not start ({self.proc.poll()}):\n{self.output()}")
            time.sleep(0.01)

    def wait_stopped(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the child parks at its stop point; returns what it reported there."""
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"child exited ({self.proc.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"child never reached its stop point:\n{self.output()}")
            time.sleep(0.02)
        return json.loads(self.marker.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 300.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log_file.close()


def feed_named(name: str) -> FeedSpec:
    return FEEDS[name]
