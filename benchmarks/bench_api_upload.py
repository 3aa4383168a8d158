"""One large gzipped JSONL upload through the heavyweight mode, ingested in bounded memory (#10).

    .venv/bin/python benchmarks/bench_api_upload.py --rows 1000000
    .venv/bin/python benchmarks/bench_api_upload.py --rows 5000000    # same memory, 5x the rows

A `contact_event` file of `--rows` records (0.1% of them breaking the schema) is generated and
gzipped once (cached in benchmarks/out/). `ingest-pipeline api` runs as its own process on a
local landing folder; the file goes through the documented flow: generate-upload-url, a streamed
PUT to the URL, confirm-upload. Then `ingest-pipeline ingest --feed contact_event` (parse,
validate against the stream's rules, quarantine, bronze, merge into `events`) runs as a fresh
process, and raw DuckDB (a fresh process: `read_json` of the same .jsonl.gz into a table of a new
database) reads the same file: wall time and peak RSS (`os.wait4`) of each whole process, and the
ratio. The counts are checked: loaded + rejected = rows, loaded = the valid rows.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_small_files import BIN, free_port  # noqa: E402

from ingest_pipeline_tests.api_server import wait_until_serving  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
KEY = "bench-upload-key-0123456789"


def generate(rows: int, seed: int = 7) -> tuple[Path, int]:
    """The .jsonl.gz of `rows` records and how many of them are valid."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"contact_event-{rows}-{seed}.jsonl.gz"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())["valid"]
    rng = random.Random(seed)
    valid = 0
    with gzip.open(path, "wt", compresslevel=3) as out:
        for i in range(rows):
            record = {
                "type": "contact_event",
                "contact_id": f"user-{i % (rows // 4 + 1)}",
                "event_name": ("page_viewed", "signed_up", "clicked")[i % 3],
                "event_timestamp": 1_700_000_000 + i,
                "event_properties": {"path": f"/p/{rng.randint(1, 50)}", "n": i},
            }
            if rng.random() < 0.001:
                record["event_timestamp"] = str(record["event_timestamp"])  # a string: refused
            else:
                valid += 1
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
    meta.write_text(json.dumps({"valid": valid}))
    return path, valid


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of a whole child process."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed:\n{out}")
    return seconds, usage.ru_maxrss / 1024, out


RAW = (
    "import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
    "con.execute(\"SET memory_limit='512MB'\"); "
    "con.execute(\"CREATE TABLE events AS SELECT * FROM read_json(?, format='newline_delimited', "
    'ignore_errors=true)", [sys.argv[2]]); '
    "print(con.execute('SELECT count(*) FROM events').fetchone()[0])"
)


def run(rows: int, root: Path) -> dict:
    data, valid = generate(rows)
    config = root / "ingest.yaml"
    config.write_text(json.dumps({"tenants": {"bench": {"api_key_env": "BENCH_API_KEY"}}}))
    env = {
        **os.environ,
        "INGEST_LANDING_URL": str(root / "landing"),
        "INGEST_LAKE_URL": str(root / "lake"),
        "INGEST_WAREHOUSE_PATH": str(root / "warehouse.duckdb"),
        "INGEST_CONFIG": str(config),
        "BENCH_API_KEY": KEY,
    }
    port = free_port()
    api = subprocess.Popen(
        [str(BIN / "ingest-pipeline"), "api", "--port", str(port), "--no-access-log",
         "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    headers = {"x-api-key": KEY}
    try:
        wait_until_serving(url)
        given = httpx.post(
            f"{url}/ingestion/generate-upload-url",
            json={"stream": "contact_event"},
            headers=headers,
        ).json()
        started = time.monotonic()
        with data.open("rb") as body:
            put = httpx.put(
                given["upload_url"], content=body, headers=given["headers"], timeout=600
            )
        upload_seconds = time.monotonic() - started
        assert put.status_code == 200, put.text
        confirmed = httpx.post(
            f"{url}/ingestion/confirm-upload",
            json={"file_key": given["file_key"]},
            headers=headers,
        )
        assert confirmed.status_code == 200, confirmed.text
    finally:
        api.terminate()
        api.wait(30)
    pipeline_s, pipeline_mib, out = measured(
        [str(BIN / "ingest-pipeline"), "ingest", "--feed", "contact_event"], env
    )
    import duckdb

    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    loaded, rejected = con.execute(
        "SELECT rows_loaded, rows_rejected FROM ingested_files WHERE feed = 'contact_event'"
    ).fetchone()
    con.close()
    assert loaded == valid and loaded + rejected == rows, (loaded, rejected, valid, rows)
    raw_s, raw_mib, raw_out = measured(
        [sys.executable, "-c", RAW, str(root / "raw.duckdb"), str(data)], env
    )
    return {
        "rows": rows,
        "gz_mib": round(data.stat().st_size / 2**20, 1),
        "upload_put_s": round(upload_seconds, 1),
        "pipeline_s": round(pipeline_s, 1),
        "pipeline_peak_mib": round(pipeline_mib),
        "raw_duckdb_s": round(raw_s, 1),
        "raw_peak_mib": round(raw_mib),
        "ratio_wall": round(pipeline_s / raw_s, 2),
        "loaded": loaded,
        "rejected": rejected,
        "raw_rows": int(raw_out.strip().splitlines()[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-api-upload-"))
    try:
        result = run(args.rows, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    (OUT / f"api-upload-{args.rows}-{int(time.time())}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
