"""Readers never wait for writers (issue 12): each committed merge publishes a read snapshot, and
`ingest-pipeline sql` (or DuckDB opening `<warehouse>.read.duckdb` read-only) answers while a
real merge holds the warehouse file, with the warehouse as of the last committed merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from ingest_pipeline import pipeline, warehouse
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import LocalLanding

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TRACK = FEEDS["track"]

# A merge run in its own process, paused inside its transaction (after its rows are written,
# before the ledger flip commits) until the test lets it go: a merge that is running.
PAUSED_MERGE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ingest_pipeline import ledger, pipeline
    from ingest_pipeline.feeds import FEEDS
    from ingest_pipeline.landing import LocalLanding

    lake, wh, marker, release = sys.argv[1:5]
    original = ledger.record_merged_many

    def paused(con, merged, at):
        original(con, merged, at)
        Path(marker).write_text("merging")
        while not Path(release).exists():
            time.sleep(0.02)

    ledger.record_merged_many = paused
    out = pipeline.merge_pending(FEEDS["track"], lake=LocalLanding(lake), warehouse_path=wh)
    print(len(out.files), out.rows_loaded)
    """
)


def _land(landing: LocalLanding, name: str, rows: int, offset: int = 0) -> None:
    body = "".join(
        json.dumps(
            {
                "contact_key": f"c{i}",
                "event_text": "opened",
                "event_timestamp": 1_767_225_600 + i,
            }
        )
        + "\n"
        for i in range(offset, offset + rows)
    )
    landing.put(f"track/{name}", body.encode())


def _parse(tmp: Path, names: list[str]) -> None:
    landing = LocalLanding(tmp / "landing")
    objects = [o for o in landing.list("track/") if o.key.rsplit("/", 1)[-1] in names]
    pipeline.ingest_to_bronze(
        objects,
        TRACK,
        landing=landing,
        lake=LocalLanding(tmp / "lake"),
        warehouse_path=tmp / "wh.duckdb",
        tenant_id="acme",
    )


def _sql(tmp: Path, query: str, *fmt: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "INGEST_WAREHOUSE_PATH": str(tmp / "wh.duckdb")}
    return subprocess.run(
        [str(BIN / "ingest-pipeline"), "sql", query, *fmt],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _count(tmp: Path) -> int:
    result = _sql(tmp, "SELECT count(*) AS n FROM events", "--format", "csv")
    assert result.returncode == 0, result.stderr
    header, value = result.stdout.split()
    assert header == "n"
    return int(value)


@pytest.fixture
def merged_once(tmp_path: Path) -> Path:
    """A warehouse with one merged file of 300 events, and a second file of 2,000 parsed."""
    landing = LocalLanding(tmp_path / "landing")
    _land(landing, "first.jsonl", 300)
    _parse(tmp_path, ["first.jsonl"])
    pipeline.merge_pending(
        TRACK, lake=LocalLanding(tmp_path / "lake"), warehouse_path=tmp_path / "wh.duckdb"
    )
    _land(landing, "second.jsonl", 2000, offset=300)
    _parse(tmp_path, ["second.jsonl"])
    return tmp_path


def _start_paused_merge(tmp: Path) -> tuple[subprocess.Popen, Path]:
    marker, release = tmp / "merging", tmp / "release"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSED_MERGE,
            str(tmp / "lake"),
            str(tmp / "wh.duckdb"),
            str(marker),
            str(release),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the merge never started"
        time.sleep(0.05)
    return proc, release


def test_reader_answers_while_a_merge_holds_the_warehouse(merged_once: Path) -> None:
    tmp = merged_once
    assert _count(tmp) == 300
    proc, release = _start_paused_merge(tmp)
    try:
        # The merge really holds the file: DuckDB refuses any other process, readers included.
        with pytest.raises(duckdb.IOException, match="[Ll]ock"):
            duckdb.connect(str(tmp / "wh.duckdb"), read_only=True)
        # ... and the documented reader answers at once with the last committed merge.
        started = time.monotonic()
        assert _count(tmp) == 300
        assert time.monotonic() - started < 30
        table = _sql(tmp, "SELECT event_text, count(*) AS n FROM events GROUP BY 1")
        assert table.returncode == 0 and "opened" in table.stdout and "300" in table.stdout
        # Python (or a BI tool) opening the read path read-only, as the README shows.
        with duckdb.connect(str(warehouse.read_path(tmp / "wh.duckdb")), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM events").fetchone() == (300,)
            statuses = dict(
                con.execute("SELECT status, count(*) FROM ingested_files GROUP BY 1").fetchall()
            )
            # As of the last merge: the second file's parse (after it) is not published yet.
            assert statuses == {"ingested": 1}
    finally:
        release.write_text("go")
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["1", "2000"]
    # Once committed, readers see the merge.
    assert _count(tmp) == 2300
    with duckdb.connect(str(warehouse.read_path(tmp / "wh.duckdb")), read_only=True) as con:
        assert con.execute("SELECT DISTINCT status FROM ingested_files").fetchall() == [
            ("ingested",)
        ]


def test_a_killed_merge_leaves_readers_the_last_committed_warehouse(merged_once: Path) -> None:
    tmp = merged_once
    proc, _release = _start_paused_merge(tmp)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert _count(tmp) == 300  # nothing of the killed merge, and no error
    # The next merge takes the file again and publishes.
    out = pipeline.merge_pending(
        TRACK, lake=LocalLanding(tmp / "lake"), warehouse_path=tmp / "wh.duckdb"
    )
    assert out.rows_loaded == 2000
    assert _count(tmp) == 2300


def test_an_open_reader_keeps_its_snapshot_while_newer_ones_replace_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warehouse, "SNAPSHOT_GRACE_SECONDS", 0.0)
    wh = tmp_path / "wh.duckdb"
    with warehouse.connect(wh) as con:
        con.execute("CREATE TABLE counter (n INTEGER)")
        con.execute("INSERT INTO counter VALUES (1)")
        first = warehouse.publish_snapshot(con, wh)
    reader = warehouse.connect_reader(wh)
    try:
        for n in range(2, 6):
            with warehouse.connect(wh, publish=True) as con:
                con.execute("UPDATE counter SET n = ?", [n])
        # The first snapshot's folder is gone; the reader that opened it still reads it.
        assert not first.exists()
        assert reader.execute("SELECT n FROM counter").fetchone() == (1,)
    finally:
        reader.close()
    snapshots = [p for p in warehouse.snapshot_dir(wh).iterdir()]
    assert len(snapshots) == warehouse.KEEP_SNAPSHOTS
    assert all(p.name.isdigit() for p in snapshots)  # no partial copy left behind
    with warehouse.connect_reader(wh) as con:
        assert con.execute("SELECT n FROM counter").fetchone() == (5,)
        # The snapshot's catalog is named after the warehouse, as the file itself would be.
        assert con.execute("SELECT current_database()").fetchone() == ("wh",)


def test_a_new_warehouse_has_a_snapshot_before_any_merge(tmp_path: Path) -> None:
    wh = tmp_path / "wh.duckdb"
    assert _sql(tmp_path, "SELECT 1").returncode == 1  # nothing there yet: said, not a crash
    assert "nothing has been merged" in _sql(tmp_path, "SELECT 1").stderr
    with warehouse.connect(wh):
        pass
    assert warehouse.read_path(wh).is_symlink()
    assert _count(tmp_path) == 0


def test_sql_formats_refuses_writes_and_survives_head(merged_once: Path) -> None:
    tmp = merged_once
    as_json = _sql(
        tmp,
        "SELECT contact_key, line_number FROM events ORDER BY line_number LIMIT 2",
        "--format",
        "json",
    )
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"contact_key": "c0", "line_number": 1},
        {"contact_key": "c1", "line_number": 2},
    ]
    tsv = _sql(tmp, "SELECT 'a' AS x, NULL AS y", "--format", "tsv")
    assert tsv.stdout == "x\ty\na\t\n"
    refused = _sql(tmp, "DELETE FROM events")
    assert refused.returncode == 1 and "read-only" in refused.stderr
    assert _count(tmp) == 300
    bad = _sql(tmp, "SELECT * FROM no_such_table")
    assert bad.returncode == 1 and "no_such_table" in bad.stderr and "Traceback" not in bad.stderr
    env = {**os.environ, "INGEST_WAREHOUSE_PATH": str(tmp / "wh.duckdb")}
    for fmt in ("csv", "table"):
        piped = subprocess.run(
            f"'{BIN / 'ingest-pipeline'}' sql 'SELECT * FROM range(2000000)' --format {fmt}"
            " --max-rows 1000000 | head -n 2",
            shell=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert piped.returncode == 0
        assert len(piped.stdout.splitlines()) == 2
        assert piped.stderr == "", piped.stderr


def test_threads_of_one_process_create_a_new_warehouse_together(tmp_path: Path) -> None:
    """The daemon's sensors are threads of one process, all connecting to a new warehouse at
    once: without one schema creation at a time, DuckDB refused all but one ("Catalog
    write-write conflict") and their ticks were skipped."""
    import threading

    wh = tmp_path / "wh.duckdb"
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def connect() -> None:
        barrier.wait()
        try:
            with warehouse.connect(wh) as con:
                con.execute("SELECT count(*) FROM ingested_files").fetchall()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert warehouse.read_path(wh).is_symlink()


HOLD_AFTER_PUBLISH = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ingest_pipeline import warehouse

    wh, marker, release = sys.argv[1:4]
    with warehouse.connect(wh) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS n")
        warehouse.publish_snapshot(con, wh)
        Path(marker).write_text("published")
        while not Path(release).exists():
            time.sleep(0.02)
    """
)


def test_publishing_keeps_the_writers_lock(tmp_path: Path) -> None:
    """DuckDB's lock is a POSIX record lock, which a process loses when it closes any descriptor
    of the file: a publish that opened the warehouse to copy it let a second writer in."""
    wh, marker, release = tmp_path / "wh.duckdb", tmp_path / "published", tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_AFTER_PUBLISH, str(wh), str(marker), str(release)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for read_only in (True, False):
            with pytest.raises(duckdb.IOException, match="[Ll]ock"):
                duckdb.connect(str(wh), read_only=read_only)
        with warehouse.connect_reader(wh) as con:
            assert con.execute("SELECT n FROM t").fetchone() == (1,)
    finally:
        release.write_text("go")
        proc.wait(60)
    assert proc.returncode == 0
