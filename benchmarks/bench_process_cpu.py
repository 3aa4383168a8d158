"""Whole processes, CPU seconds: `ingest-pipeline ingest` against raw DuckDB (issue #8).

    .venv/bin/python benchmarks/bench_process_cpu.py                  # 1M-row track .jsonl.gz, 5 rounds
    .venv/bin/python benchmarks/bench_process_cpu.py --rows 20000000 --repeat 1   # memory, 20M rows

Both sides are whole processes started from nothing, as a user runs them, on the same file in the
same run, alternating (raw, pipeline, pipeline, raw, ...):

* raw: `python -c "import duckdb; duckdb.execute('COPY (SELECT * FROM read_json(<file>,
  format = newline_delimited, ignore_errors = true)) TO ''x.parquet''')"`.
* pipeline: `ingest-pipeline ingest --feed track` with the file alone in a fresh local landing
  folder, a fresh lake and a fresh warehouse file: landing copy, parse, validate, quarantine,
  bronze, ledger, merge (one transaction), everything a user waits for, start-up included.

CPU seconds are user + system of the process and its children (`os.wait4`), which on a shared
machine are steadier than wall time; the wall time and peak RSS (ru_maxrss) are reported too.
The input is `bench_track_1m.py`'s generated file (cached in benchmarks/out/). Medians are
quoted; ratio = median pipeline CPU / median raw CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_track_1m import DEFAULT_OUT, ensure_data  # noqa: E402

BIN = Path(sys.executable).parent
RAW = (
    'import duckdb, sys; duckdb.execute("COPY (SELECT * FROM read_json(\'" + sys.argv[1] + '
    "\"', format = 'newline_delimited', ignore_errors = true)) TO '\" + sys.argv[2] + "
    '"\' (FORMAT parquet)")'
)


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "user_s": usage.ru_utime,
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }


def raw_side(data: Path, work: Path) -> dict[str, float]:
    return measure(
        [sys.executable, "-c", RAW, str(data), str(work / "raw.parquet")], dict(os.environ)
    )


def pipeline_side(data: Path, work: Path) -> dict[str, float]:
    landing = work / "landing" / "track"
    landing.mkdir(parents=True)
    try:
        os.link(data, landing / data.name)
    except OSError:
        shutil.copyfile(data, landing / data.name)
    env = {
        **os.environ,
        "INGEST_LANDING_URL": str(work / "landing"),
        "INGEST_LAKE_URL": str(work / "lake"),
        "INGEST_WAREHOUSE_PATH": str(work / "warehouse.duckdb"),
        "INGEST_CONFIG": "",
    }
    result = measure([str(BIN / "ingest-pipeline"), "ingest", "--feed", "track"], env)
    import duckdb

    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        result["events"] = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
        (result["status"],) = con.execute("SELECT status FROM ingested_files").fetchall()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    data, meta = ensure_data(args.out, args.rows, args.seed)
    runs: dict[str, list[dict]] = {"raw": [], "pipeline": []}
    order = []
    for i in range(args.repeat):
        order += ["raw", "pipeline"] if i % 2 == 0 else ["pipeline", "raw"]
    for side in order:
        work = Path(tempfile.mkdtemp(prefix=f"cpu-{side}-", dir=args.out))
        try:
            result = (raw_side if side == "raw" else pipeline_side)(data, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        runs[side].append(result)
        print(
            f"  {side:8} cpu {result['cpu_s']:6.2f} s  wall {result['wall_s']:6.2f} s  "
            f"peak {result['peak_rss_mib']:6.0f} MiB",
            flush=True,
        )
    summary = {}
    for side, results in runs.items():
        summary[side] = {
            k: round(statistics.median(r[k] for r in results), 2)
            for k in ("cpu_s", "wall_s", "peak_rss_mib")
        }
        summary[side]["peak_rss_mib_max"] = round(max(r["peak_rss_mib"] for r in results))
    summary["ratio_cpu"] = round(summary["pipeline"]["cpu_s"] / summary["raw"]["cpu_s"], 2)
    summary["ratio_wall"] = round(summary["pipeline"]["wall_s"] / summary["raw"]["wall_s"], 2)
    expected = meta.get("expected_loaded")
    events = {r["events"] for r in runs["pipeline"]}
    summary["events"] = sorted(events)
    summary["expected_events"] = expected
    print(json.dumps(summary, indent=2))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (args.out / f"process_cpu_{args.rows}_{stamp}.json").write_text(
        json.dumps({"summary": summary, "runs": runs}, indent=2)
    )
    if expected is not None and events != {expected}:
        raise SystemExit(f"the pipeline loaded {events} events, the generator wrote {expected}")


if __name__ == "__main__":
    main()
