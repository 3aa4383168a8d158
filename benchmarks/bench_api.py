"""The Ingestion API under load, with the pipeline ingesting behind it (issue #10).

    .venv/bin/python benchmarks/bench_api.py                   # 60 s of 100-record upload-json bodies
    .venv/bin/python benchmarks/bench_api.py --seconds 20 --connections 32 --workers 2

On the embedded defaults (a local landing folder, lake and warehouse under one temporary folder),
`ingest-pipeline api --workers N` is started as its own process beside a real `dagster-daemon run`
(sensor interval 10 s, what `scripts/start.sh` uses; `--daemon-nice 10` runs it and its runs at a
lower CPU priority than the API), both on this machine's 2 cores with the load generator: `wrk` (Debian's package) with a Lua script that posts `upload-json` bodies of 100
`contact_event` records, every record unique (thread, request and record number in its
contact_id), for `--seconds`. wrk prints requests/s, latency percentiles and errors (any non-2xx
answer is an error; there must be none).

With `--pipeline after` the daemon starts only when the load ends (the API has the machine to
itself, then the pipeline catches up). Then the clock runs from the end of the load until every record of every file the API wrote is in
`events` (polled each second): the files under `data/tenants/objects/` are the ground truth (a
request wrk cut at the end may have been written without being counted), 100 events each.

Same run, same input, raw DuckDB: a fresh process that reads all those JSONL files with
`read_json` into a table of a new database file, the floor for ingesting them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_small_files import BIN, Site, free_port  # noqa: E402

from ingest_pipeline_tests.api_server import wait_until_serving  # noqa: E402

RECORDS = 100
KEY = "bench-api-key-0123456789"

WRK_SCRIPT = r"""
local threads = {}
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  counter = 0
  prefix = "w" .. id .. "-"
end
request = function()
  counter = counter + 1
  local parts = {}
  for i = 1, RECORDS do
    parts[i] = '{"type":"contact_event","contact_id":"' .. prefix .. counter .. '-' .. i ..
      '","event_name":"page_viewed","event_timestamp":' .. (1751000000 + i) ..
      ',"event_properties":{"path":"/pricing","plan":"trial","n":' .. i .. '}}'
  end
  local body = '{"stream":"contact_event","data":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/ingestion/upload-json",
    {["x-api-key"] = "KEY", ["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, e.connect, e.read, e.write,
    e.status, e.timeout))
end
""".replace("RECORDS", str(RECORDS)).replace("KEY", KEY)


def events_in(wh: Path) -> int | None:
    try:
        con = duckdb.connect(str(wh), read_only=True)
    except duckdb.Error:
        return None
    try:
        return con.execute("SELECT count(*) FROM events").fetchone()[0]
    except duckdb.Error:
        return None
    finally:
        con.close()


def raw_duckdb(files_glob: str, db: Path) -> float:
    """Seconds for a fresh process to read every JSONL file into a DuckDB table."""
    code = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
        "con.execute(\"CREATE TABLE events AS SELECT * FROM read_json(?, format='newline_delimited')\", "
        "[sys.argv[2]]); print(con.execute('SELECT count(*) FROM events').fetchone()[0])"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code, str(db), files_glob], capture_output=True, text=True
    )
    seconds = time.monotonic() - started
    if done.returncode:
        raise SystemExit(done.stderr)
    return seconds


def run(args: argparse.Namespace, root: Path) -> dict:
    site = Site(root, "local", args.interval)
    config = root / "ingest.yaml"
    config.write_text(json.dumps({"tenants": {"bench": {"api_key_env": "BENCH_API_KEY"}}}))
    site.env.update(INGEST_CONFIG=str(config), BENCH_API_KEY=KEY)
    port = free_port()
    api_log = open(root / "api.log", "w")  # noqa: SIM115 - closed below
    api = subprocess.Popen(
        [str(BIN / "ingest-pipeline"), "api", "--port", str(port), "--workers",
         str(args.workers), "--no-access-log", "--log-level", "warning"],
        env=site.env,
        stdout=api_log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url)
        if args.pipeline == "during":
            site.start_daemon(args.settle)
        if args.daemon_nice and site.daemon is not None:
            # the batch side yields the CPU to the latency-sensitive API (its runs, started by
            # the daemon later, inherit the niceness)
            assert site.daemon is not None
            os.setpriority(os.PRIO_PGRP, site.daemon.pid, args.daemon_nice)
        script = root / "upload.lua"
        script.write_text(WRK_SCRIPT)
        load = subprocess.run(
            ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d",
             f"{args.seconds}s", "--latency", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        )  # fmt: skip
        ended = time.monotonic()
        if args.pipeline == "after":  # the API had the machine to itself; now the pipeline
            site.start_daemon(0)
        line = next(x for x in load.stdout.splitlines() if x.startswith("RESULT "))
        wrk = json.loads(line.removeprefix("RESULT "))
        objects = root / "landing" / "data" / "tenants" / "objects" / "contact_event"

        def written() -> int:  # requests wrk cut at the end may still finish: counted again
            return sum(1 for p in objects.rglob("*.jsonl") if not p.name.startswith("."))

        deadline = ended + args.timeout
        count = None
        while time.monotonic() < deadline:
            count = events_in(site.wh)
            files = written()
            expected = files * RECORDS
            if count is not None and count >= expected:
                break
            time.sleep(1)
        in_warehouse = time.monotonic() - ended
        if count is None or count < expected:
            print(f"not all records in events after {args.timeout} s: {count} of {expected}")
    finally:
        site.stop()
        api.terminate()
        api.wait(30)
        api_log.close()
    raw = raw_duckdb(f"{objects}/**/*.jsonl", root / "raw.duckdb")
    seconds = wrk["duration_us"] / 1e6
    errors = sum(wrk[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "seconds": round(seconds, 1),
        "pipeline": args.pipeline,
        "daemon_nice": args.daemon_nice,
        "workers": args.workers,
        "connections": args.connections,
        "requests": wrk["requests"],
        "requests_per_second": round(wrk["requests"] / seconds, 1),
        "records_per_second": round(wrk["requests"] * RECORDS / seconds),
        "p50_ms": round(wrk["p50_us"] / 1000, 1),
        "p90_ms": round(wrk["p90_us"] / 1000, 1),
        "p99_ms": round(wrk["p99_us"] / 1000, 1),
        "max_ms": round(wrk["max_us"] / 1000, 1),
        "errors": errors,
        "files_written": files,
        "records_written": expected,
        "events": count,
        "all_in_events_s_after_load": round(in_warehouse, 1) if count == expected else None,
        "raw_duckdb_read_all_files_s": round(raw, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2, help="API worker processes")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--interval", type=int, default=10, help="sensor interval, seconds")
    parser.add_argument("--settle", type=float, default=20.0, help="daemon start-up wait, s")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--pipeline",
        choices=["during", "after"],
        default="during",
        help="start the Dagster daemon before the load (default) or when it ends",
    )
    parser.add_argument(
        "--daemon-nice",
        type=int,
        default=0,
        help="run the Dagster daemon and its runs at this nice",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    root = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        result = run(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / f"api-{int(time.time())}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
