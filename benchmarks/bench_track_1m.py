"""Benchmark: one large `track` file, raw DuckDB vs this pipeline, in the same run.

    .venv/bin/python benchmarks/bench_track_1m.py                 # 1,000,000 rows, 3 repeats
    .venv/bin/python benchmarks/bench_track_1m.py --rows 5000000 --repeat 1

Sides, each run in its own child process (this script with `--child`) so that one side's memory
does not pollute the other's peak RSS (read from `os.wait4` of that child):

  raw       DuckDB alone: COPY (SELECT * FROM read_json(<file>)) TO 'x.parquet'
  pipeline  this project: pipeline.ingest_to_bronze (landing copy, parse, validate, quarantine,
            within-file dedupe, bronze Parquet, ledger) then pipeline.merge_pending (one merge
            transaction) into a fresh DuckDB warehouse file, with a LocalLanding landing and lake.

The sides alternate (raw, pipeline, then pipeline, raw, ...) `--repeat` times; the figures quoted
are medians and the ratio is median(pipeline) / median(raw). The pipeline side also reports the
time of each stage (exclusive times, summing to the total), measured by wrapping the core
functions and DuckDB connections from this script; the core modules are not changed.

The input is generated once (seeded, deterministic) and cached in benchmarks/out/ (gitignored),
with the generator's own bookkeeping of how many lines are bad, valid and distinct; the pipeline's
counts are checked against it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "out"
GENERATOR_VERSION = 1
TARGET_RATIO = 1.5
TARGET_RSS_MIB = 1.5 * 1024
MIB = 1024 * 1024

# --------------------------------------------------------------------------------------------
# Input generator
# --------------------------------------------------------------------------------------------

EVENT_TEXTS = [
    "page viewed",
    "logged in",
    "clicked link",
    "opened email",
    "signed up",
    "added to cart",
    "purchased",
    "downloaded whitepaper",
]
EVENT_WEIGHTS = [40, 20, 12, 12, 5, 5, 3, 3]
PLANS = ["free", "starter", "pro", "enterprise"]
PATHS = ["/", "/pricing", "/docs", "/blog/launch", "/signup", "/features", "/customers"]
SOURCES = ["google", "newsletter", "linkedin", "direct", "partner"]
CONTACT_KEYS = 200_000
BASE_SECONDS = 1_700_000_000
SPAN_SECONDS = 90 * 86_400
BAD_FRACTION = 0.001
DUPLICATE_FRACTION = 0.01
BAD_KINDS = ("invalid_json", "missing_field", "milliseconds", "not_a_number", "empty_key")


def data_paths(out_dir: Path, rows: int, seed: int) -> tuple[Path, Path]:
    stem = f"track_{rows}_s{seed}_v{GENERATOR_VERSION}"
    return out_dir / f"{stem}.jsonl.gz", out_dir / f"{stem}.meta.json"


def _timestamp_value(rng: random.Random, ts_ms: int) -> Any:
    """The same instant as a JSON number (int or float) or a numeric string."""
    r = rng.random()
    if ts_ms % 1000:
        text = f"{ts_ms // 1000}.{ts_ms % 1000:03d}"
        return text if r < 0.3 else float(text)
    return str(ts_ms // 1000) if r < 0.3 else ts_ms // 1000


def _properties(rng: random.Random, event: str) -> dict[str, Any]:
    props: dict[str, Any] = {"plan": rng.choice(PLANS)}
    if rng.random() < 0.6:
        props["value"] = round(rng.random() * 500, 2) if rng.random() < 0.5 else rng.randrange(100)
    if event in ("page viewed", "clicked link", "signed up"):
        props["page"] = {
            "path": rng.choice(PATHS),
            "referrer": {"source": rng.choice(SOURCES), "campaign": f"cmp-{rng.randrange(50)}"},
        }
    if event in ("added to cart", "purchased") and rng.random() < 0.7:
        props["items"] = [
            {"sku": f"SKU-{rng.randrange(1000):04d}", "qty": rng.randrange(1, 4)}
            for _ in range(rng.randrange(1, 4))
        ]
    if rng.random() < 0.2:
        props["beta"] = rng.random() < 0.5
    return props


def generate(path: Path, meta_path: Path, rows: int, seed: int) -> dict[str, Any]:
    """Write `rows` track lines (gzip) and return the generator's bookkeeping.

    Keys are (contact_key, event_text, event_timestamp) packed into one int for the bookkeeping:
    contact index, event index and the timestamp in milliseconds since BASE_SECONDS.
    """
    rng = random.Random(seed)
    distinct: set[int] = set()
    recent: list[tuple[int, int, int]] = []  # valid (contact, event, ts_ms) to duplicate from
    counts = {"rows": rows, "valid": 0, "duplicates_emitted": 0, "bad": 0}
    bad_by_kind = dict.fromkeys(BAD_KINDS, 0)
    tmp = path.with_name(f".{path.name}.tmp")
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    started = time.perf_counter()
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6, newline="\n") as out:
        buffer: list[str] = []
        for _ in range(rows):
            r = rng.random()
            if r < DUPLICATE_FRACTION and recent:
                contact, event, ts_ms = recent[rng.randrange(len(recent))]
                counts["duplicates_emitted"] += 1
            else:
                contact = rng.randrange(CONTACT_KEYS)
                event = rng.choices(range(len(EVENT_TEXTS)), EVENT_WEIGHTS)[0]
                ts_ms = rng.randrange(SPAN_SECONDS) * 1000
                if rng.random() < 0.1:
                    ts_ms += rng.randrange(1, 1000)
            record: dict[str, Any] = {
                "event_text": EVENT_TEXTS[event],
                "event_timestamp": _timestamp_value(rng, BASE_SECONDS * 1000 + ts_ms),
                "contact_key": f"c{contact:06d}",
                **_properties(rng, EVENT_TEXTS[event]),
            }
            line: str | None = None
            if r > 1 - BAD_FRACTION:
                kind = BAD_KINDS[rng.randrange(len(BAD_KINDS))]
                bad_by_kind[kind] += 1
                counts["bad"] += 1
                if kind == "invalid_json":
                    line = dumps(record)[:-7]  # truncated: unterminated object
                elif kind == "missing_field":
                    del record[rng.choice(["contact_key", "event_text", "event_timestamp"])]
                elif kind == "milliseconds":
                    record["event_timestamp"] = BASE_SECONDS * 1000 + ts_ms
                elif kind == "not_a_number":
                    record["event_timestamp"] = "yesterday"
                else:
                    record["contact_key"] = "   "
            else:
                counts["valid"] += 1
                distinct.add(((contact << 3 | event) << 34) | ts_ms)
                if len(recent) < 20_000:
                    recent.append((contact, event, ts_ms))
                else:
                    recent[rng.randrange(len(recent))] = (contact, event, ts_ms)
            buffer.append(line if line is not None else dumps(record))
            if len(buffer) >= 10_000:
                out.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            out.write("\n".join(buffer) + "\n")
    os.replace(tmp, path)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        **counts,
        "bad_by_kind": bad_by_kind,
        "expected_rejected": counts["bad"],
        "expected_loaded": len(distinct),
        "expected_duplicate": counts["valid"] - len(distinct),
        "file_bytes": path.stat().st_size,
        "generate_seconds": round(time.perf_counter() - started, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def ensure_data(out_dir: Path, rows: int, seed: int) -> tuple[Path, dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path, meta_path = data_paths(out_dir, rows, seed)
    if path.exists() and meta_path.exists():
        print(f"input: {path} (cached)")
        return path, json.loads(meta_path.read_text())
    print(f"input: generating {rows:,} rows into {path} ...", flush=True)
    meta = generate(path, meta_path, rows, seed)
    print(f"input: generated in {meta['generate_seconds']} s")
    return path, meta


# --------------------------------------------------------------------------------------------
# Child processes: one measured step each
# --------------------------------------------------------------------------------------------


def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_raw(data: Path, workdir: Path) -> dict[str, Any]:
    import duckdb

    out = workdir / "raw.parquet"
    con = duckdb.connect()
    rss_before = _proc_status_mib("VmRSS")
    cpu_started, started = time.process_time(), time.perf_counter()
    con.execute(
        f"COPY (SELECT * FROM read_json('{data}', format = 'newline_delimited', "
        f"ignore_errors = true)) TO '{out}' (FORMAT parquet)"
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchall()[0][0]
    schema = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{out}')").fetchall()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_before_mib": rss_before,
        "rows_written": rows,
        "parquet_bytes": out.stat().st_size,
        "schema": {r[0]: r[1] for r in schema},
    }


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Stages:
    """Exclusive (self) time and peak RSS per label; nested sections are not counted in their
    parent's figures.

    Peak RSS per section uses Linux's `/proc/self/clear_refs` ("5" resets VmHWM, the process's
    peak RSS, to its current RSS): VmHWM is read and reset at every section boundary, so each
    interval's peak is known. As that also resets what `wait4` reports for the process, the
    overall peak is kept here too (`overall_peak_kib`) and the parent takes the larger figure.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_kib: dict[str, int] = {}
        self.overall_peak_kib = 0
        self._stack: list[list[float]] = []  # per open section: [children's seconds, peak KiB]
        try:
            self._reset_hwm()
            self.memory = True
        except OSError:
            self.memory = False

    def _reset_hwm(self) -> int:
        """VmHWM since the last reset (KiB), then reset it."""
        hwm = _vm_kib("VmHWM")
        self.overall_peak_kib = max(self.overall_peak_kib, hwm)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return hwm

    def _interval_peak(self) -> None:
        """Close the current interval: its peak belongs to the innermost open section."""
        if self.memory:
            hwm = self._reset_hwm()
            if self._stack:
                self._stack[-1][1] = max(self._stack[-1][1], hwm)

    @contextmanager
    def time(self, label: str) -> Iterator[None]:
        self._interval_peak()
        started = time.perf_counter()
        self._stack.append([0.0, 0])
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self._interval_peak()
            children, peak = self._stack.pop()
            self.seconds[label] = self.seconds.get(label, 0.0) + elapsed - children
            if self.memory:
                self.peak_kib[label] = max(self.peak_kib.get(label, 0), int(peak))
            if self._stack:
                self._stack[-1][0] += elapsed

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.time(label):
                return fn(*args, **kwargs)

        return timed


# Stage labels of the pipeline side (numbered in execution order). The bronze step is one
# streaming pass: DuckDB's reading and typing run while the pass pulls chunks, so "read, parse and
# type" is the pass minus the validation and Parquet writes nested in it.
S_GLUE = "glue (Python, temp dirs, listing)"
S_DOWNLOAD = "01 landing: copy file to local temp"
S_BRONZE_SETUP = "02 bronze: open in-memory DuckDB"
S_OPEN = "03 bronze: open records (CSV: read into a table; NDJSON: nothing yet)"
S_STREAM = "04 bronze: read gzip lines, parse JSON, type fields, extras (DuckDB, streamed)"
S_HANDOVER = "05 bronze: wait for the worker thread (rules, quarantine, bronze Parquet)"
S_PY_BRONZE = "07 bronze: other Python in process_file"
S_LAKE_PUT = "08 lake: put bronze + quarantine files"
S_WH_OPEN = "09 warehouse: connect + DDL"
S_LEDGER = "10 ledger: record parsed + insert rejected_rows"
S_MERGE_RANK = "11 merge: rank the batch, compare with stored rows"
S_MERGE_WRITE = "12 merge: DELETE replaced + INSERT winners"
S_MERGE_MISC = "13 merge: per-file counts, ledger update, misc SQL + Python"
S_COMMIT = "14 merge: COMMIT"
S_WH_CLOSE = "15 warehouse: close (checkpoint)"


def _warehouse_label(sql: str) -> str:
    s = " ".join(sql.split())
    if "merge_stored AS" in s or "merge_skip AS" in s or "bool_or(replaces)" in s:
        return S_MERGE_RANK
    if s.startswith(("INSERT INTO", "DELETE FROM")) and "ingested_files" not in s:
        return S_MERGE_WRITE
    if s.startswith("COMMIT"):
        return S_COMMIT
    return S_MERGE_MISC


class _Relation:
    def __init__(self, rel: Any, stages: Stages, label: str) -> None:
        self._rel, self._stages, self._label = rel, stages, label

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._rel, name)
        if name in ("to_arrow_table", "fetchall", "fetchone", "df", "arrow", "fetch_arrow_table"):
            return self._stages.wrap(self._label, attr)
        return attr


class _Connection:
    """Delegates to a DuckDB connection, timing each statement under a label chosen by its SQL."""

    def __init__(self, con: Any, stages: Stages, label: Callable[[str], str]) -> None:
        self._con, self._stages, self._label = con, stages, label

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        with self._stages.time(self._label(sql)):
            return self._con.execute(sql, *args, **kwargs)

    def sql(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        label = self._label(sql)
        with self._stages.time(label):
            rel = self._con.sql(sql, *args, **kwargs)
        return _Relation(rel, self._stages, label) if rel is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def instrument(stages: Stages, landing: Any, lake: Any) -> None:
    """Wrap the core functions the pipeline calls (module attributes), for stage timings."""
    from ingest_pipeline import bronze, ledger, pipeline, warehouse

    orig_new_connection = bronze.new_connection

    def new_connection(temp_dir: Path) -> Any:
        with stages.time(S_BRONZE_SETUP):
            return orig_new_connection(temp_dir)

    bronze.new_connection = new_connection
    pipeline.process_file = stages.wrap(S_PY_BRONZE, pipeline.process_file)
    bronze.open_records = stages.wrap(S_OPEN, bronze.open_records)
    bronze._stream = stages.wrap(S_STREAM, bronze._stream)
    # Validation and writes run on a worker thread, overlapping DuckDB: only the main thread's
    # waits for it are timed (the stage timer is not thread-safe).
    bronze.Future.result = stages.wrap(S_HANDOVER, bronze.Future.result)
    ledger.record_outcomes = stages.wrap(S_LEDGER, ledger.record_outcomes)
    landing.download = stages.wrap(S_DOWNLOAD, landing.download)
    lake.put = stages.wrap(S_LAKE_PUT, lake.put)

    orig_connect = warehouse.connect

    @contextmanager
    def connect(*args: Any, **kwargs: Any) -> Iterator[Any]:
        cm = orig_connect(*args, **kwargs)
        with stages.time(S_WH_OPEN):
            con = cm.__enter__()
        ok = False
        try:
            yield _Connection(con, stages, _warehouse_label)
            ok = True
        finally:
            if ok:
                with stages.time(S_WH_CLOSE):
                    cm.__exit__(None, None, None)
            else:
                cm.__exit__(*sys.exc_info())

    warehouse.connect = connect


def child_pipeline(data: Path, workdir: Path) -> dict[str, Any]:
    import duckdb

    from ingest_pipeline import pipeline
    from ingest_pipeline.feeds import FEEDS
    from ingest_pipeline.landing import LocalLanding

    feed = FEEDS["track"]
    landing_dir = workdir / "landing"
    (landing_dir / "track").mkdir(parents=True)
    target = landing_dir / "track" / data.name
    try:
        os.link(data, target)
    except OSError:
        shutil.copyfile(data, target)
    landing, lake = LocalLanding(landing_dir), LocalLanding(workdir / "lake")
    warehouse_path = workdir / "warehouse.duckdb"
    objects = list(landing.list(feed.landing_prefix))
    assert len(objects) == 1, objects

    stages = Stages()
    instrument(stages, landing, lake)
    rss_before = _proc_status_mib("VmRSS")
    started = time.perf_counter()
    with stages.time(S_GLUE):
        bronze_out = pipeline.ingest_to_bronze(
            objects,
            feed,
            landing=landing,
            lake=lake,
            warehouse_path=warehouse_path,
            tenant_id="bench",
            run_id="bench",
        )
        after_bronze = time.perf_counter()
        merge_out = pipeline.merge_pending(feed, lake=lake, warehouse_path=warehouse_path)
    seconds = time.perf_counter() - started

    report = bronze_out.reports[0]
    con = duckdb.connect(str(warehouse_path), read_only=True)
    try:
        events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
        ledger_row = con.execute(
            "SELECT status, rows_read, rows_loaded, rows_duplicate, rows_rejected, error "
            "FROM ingested_files"
        ).fetchall()
        quarantined = con.execute("SELECT count(*) FROM rejected_rows").fetchall()[0][0]
        reasons = con.execute(
            # the quoted offending values removed, so that reasons group
            r"SELECT regexp_replace(regexp_replace(reason, '(got |\()''[^'']*''', '\1...', 'g'), "
            r"' at column \d+: .*', ' at column N: ...') AS reason, "
            "count(*) FROM rejected_rows GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    finally:
        con.close()
    lake_bytes = sum(p.stat().st_size for p in (workdir / "lake").rglob("*") if p.is_file())
    (status, read, loaded, duplicate, rejected, error) = ledger_row[0]
    return {
        "seconds": seconds,
        "seconds_to_bronze": after_bronze - started,
        "seconds_merge": seconds - (after_bronze - started),
        "rss_before_mib": rss_before,
        "stages": stages.seconds,
        "stage_peak_rss_mib": {k: v / 1024 for k, v in stages.peak_kib.items()},
        "self_peak_rss_mib": max(stages.overall_peak_kib, _vm_kib("VmHWM")) / 1024,
        "report": {
            "status": report.status,
            "rows_read": report.rows_read,
            "rows_valid": report.rows_valid,
            "rows_duplicate": report.rows_duplicate,
            "rows_rejected": report.rows_rejected,
            "error": report.error,
        },
        "merge": {"rows_loaded": merge_out.rows_loaded, "rows_duplicate": merge_out.rows_duplicate},
        "ledger": {
            "files": len(ledger_row),
            "status": status,
            "rows_read": read,
            "rows_loaded": loaded,
            "rows_duplicate": duplicate,
            "rows_rejected": rejected,
            "error": error,
        },
        "events": events,
        "rejected_rows": quarantined,
        "reject_reasons": [[r, n] for r, n in reasons],
        "lake_bytes": lake_bytes,
        "warehouse_bytes": warehouse_path.stat().st_size,
    }


def run_child(side: str, data: Path, out_dir: Path, keep: bool) -> dict[str, Any]:
    """Run one measured step in a fresh child process; add its wall time and peak RSS."""
    workdir = Path(tempfile.mkdtemp(prefix=f"run-{side}-", dir=out_dir))
    result_path = workdir / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--data", str(data)]
    cmd += ["--workdir", str(workdir), "--result", str(result_path)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    process_seconds = time.perf_counter() - started
    try:
        if proc.returncode != 0:
            raise SystemExit(f"{side} child failed with exit code {proc.returncode}")
        result = json.loads(result_path.read_text())
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["side"] = side
    result["process_seconds"] = process_seconds
    # Linux: KiB. The pipeline child resets its VmHWM per stage and reports its own overall peak.
    result["peak_rss_mib"] = max(usage.ru_maxrss / 1024, result.get("self_peak_rss_mib", 0.0))
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def check_pipeline(result: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Problems with the pipeline's counts (empty when correct)."""
    problems = []
    led = result["ledger"]
    expect = {
        "ledger files": (led["files"], 1),
        "ledger status": (led["status"], "ingested"),
        "rows_read": (led["rows_read"], meta["rows"]),
        "events in warehouse": (result["events"], meta["expected_loaded"]),
        "rows_loaded": (led["rows_loaded"], meta["expected_loaded"]),
        "rows_duplicate": (led["rows_duplicate"], meta["expected_duplicate"]),
        "rows_rejected": (led["rows_rejected"], meta["expected_rejected"]),
        "rejected_rows in quarantine": (result["rejected_rows"], meta["expected_rejected"]),
    }
    for name, (got, want) in expect.items():
        if got != want:
            problems.append(f"{name}: got {got}, expected {want}")
    if led["rows_read"] != led["rows_loaded"] + led["rows_duplicate"] + led["rows_rejected"]:
        problems.append(
            f"rows_read {led['rows_read']} != loaded {led['rows_loaded']} + duplicate "
            f"{led['rows_duplicate']} + rejected {led['rows_rejected']}"
        )
    return problems


def summarize(runs: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    by_side: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_side.setdefault(r["side"], []).append(r)
    summary: dict[str, Any] = {"sides": {}}
    for side, rs in by_side.items():
        summary["sides"][side] = {
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "median_process_seconds": statistics.median(r["process_seconds"] for r in rs),
            "max_peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
            "seconds": [r["seconds"] for r in rs],
            "peak_rss_mib": [r["peak_rss_mib"] for r in rs],
        }
    sides = summary["sides"]
    if "raw" in sides and "pipeline" in sides:
        summary["ratio"] = sides["pipeline"]["median_seconds"] / sides["raw"]["median_seconds"]
    if "pipeline" in by_side:
        rs = by_side["pipeline"]
        labels = sorted({k for r in rs for k in r["stages"]})
        summary["stages"] = {
            k: statistics.median(r["stages"].get(k, 0.0) for r in rs) for k in labels
        }
        summary["stage_peak_rss_mib"] = {
            k: max(r.get("stage_peak_rss_mib", {}).get(k, 0.0) for r in rs) for k in labels
        }
        summary["problems"] = sorted({p for r in rs for p in check_pipeline(r, meta)})
    if "raw" in by_side:
        rows = sorted({r["rows_written"] for r in by_side["raw"]})
        summary.setdefault("notes", []).append(
            f"raw side wrote {rows} Parquet rows (read_json ignore_errors keeps unparseable "
            f"lines as NULL rows; {meta['bad_by_kind']['invalid_json']} invalid JSON lines in "
            "the input)"
        )
    return summary


def print_report(runs: list[dict[str, Any]], summary: dict[str, Any], meta: dict[str, Any]) -> None:
    print()
    print(f"each run ({meta['rows']:,} rows, {meta['file_bytes'] / MIB:.1f} MiB gzip):")
    print(f"  {'#':>2}  {'side':<9} {'step s':>8} {'process s':>10} {'peak RSS MiB':>13}")
    for i, r in enumerate(runs):
        print(
            f"  {i + 1:>2}  {r['side']:<9} {r['seconds']:>8.2f} {r['process_seconds']:>10.2f} "
            f"{r['peak_rss_mib']:>13.0f}"
        )
    print()
    print(f"  {'side':<9} {'median wall s':>14} {'peak RSS MiB (max)':>19}")
    for side, s in summary["sides"].items():
        print(f"  {side:<9} {s['median_seconds']:>14.2f} {s['max_peak_rss_mib']:>19.0f}")
    if "ratio" in summary:
        ok = "OK" if summary["ratio"] <= TARGET_RATIO else "MISSED"
        print(
            f"\n  ratio pipeline/raw (medians): {summary['ratio']:.2f}  (target <= {TARGET_RATIO}: {ok})"
        )
    if "pipeline" in summary["sides"]:
        rss = summary["sides"]["pipeline"]["max_peak_rss_mib"]
        ok = "OK" if rss <= TARGET_RSS_MIB else "MISSED"
        print(f"  pipeline peak RSS: {rss:.0f} MiB  (target <= {TARGET_RSS_MIB:.0f} MiB: {ok})")
    if "stages" in summary:
        total = summary["sides"]["pipeline"]["median_seconds"]
        print(
            "\n  pipeline stages (median exclusive seconds, share, max peak RSS MiB in the stage):"
        )
        for label, secs in sorted(summary["stages"].items()):
            peak = summary["stage_peak_rss_mib"].get(label, 0.0)
            print(f"    {label:<74} {secs:>7.2f}  {100 * secs / total:>5.1f}%  {peak:>6.0f}")
        print(f"    {'sum':<74} {sum(summary['stages'].values()):>7.2f}")
        last = [r for r in runs if r["side"] == "pipeline"][-1]
        print(f"\n  pipeline counts: {json.dumps(last['ledger'])}")
        print(
            f"  expected: read {meta['rows']}, loaded {meta['expected_loaded']}, duplicate "
            f"{meta['expected_duplicate']}, rejected {meta['expected_rejected']}"
        )
        print(f"  reject reasons: {last['reject_reasons']}")
        if summary["problems"]:
            print("  CORRECTNESS PROBLEMS:")
            for p in summary["problems"]:
                print(f"    - {p}")
        else:
            print(
                "  correctness: OK (events = distinct valid keys; read = loaded + duplicate + rejected)"
            )
    for note in summary.get("notes", []):
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side, alternating")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--sides", choices=["both", "raw", "pipeline"], default="both")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--keep", action="store_true", help="keep each run's work folder")
    parser.add_argument("--child", choices=["raw", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        step = child_raw if args.child == "raw" else child_pipeline
        result = step(args.data, args.workdir)
        args.result.write_text(json.dumps(result))
        return 0

    out_dir = args.out_dir.resolve()
    data, meta = ensure_data(out_dir, args.rows, args.seed)
    sides = ["raw", "pipeline"] if args.sides == "both" else [args.sides]
    runs = []
    for i in range(args.repeat):
        order = sides if i % 2 == 0 else sides[::-1]
        for side in order:
            print(f"run {i + 1}/{args.repeat}: {side} ...", end=" ", flush=True)
            result = run_child(side, data, out_dir, args.keep)
            print(
                f"{result['seconds']:.2f} s, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True
            )
            runs.append(result)
    summary = summarize(runs, meta)
    print_report(runs, summary, meta)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_path = out_dir / f"results_{args.rows}_{stamp}.json"
    results_path.write_text(
        json.dumps(
            {
                "argv": sys.argv,
                "cpus": os.cpu_count(),
                "meta": meta,
                "runs": runs,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nresults: {results_path}")
    return 1 if summary.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
