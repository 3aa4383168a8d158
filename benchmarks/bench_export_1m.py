"""Benchmark: the first export of a flow whose segment has 1,000,000 members, to a folder.

    .venv/bin/python benchmarks/bench_export_1m.py                    # csv, 1,000,000 members, 3 runs
    .venv/bin/python benchmarks/bench_export_1m.py --formats csv,tsv,jsonl --members 200000 --repeat 1

Setup (not measured): a fresh DuckDB warehouse with `--members` contacts of one tenant, each with
a `plan` attribute, built with SQL. The flow's segment selects every contact with its plan as a
custom context; it has one action, so the `add` data file holds 2 entries per member.

Measured, each export in its own child process (this script with `--child`) so that the peak
RSS read from `os.wait4` is that export's alone:

  first      the first export: everyone is added (plan, data file, control file, commit)
  no change  the same flow again: the segment is evaluated and compared, no file is written

Each format is measured `--repeat` times, each on a fresh warehouse; medians and the largest
peak RSS are printed. The child reports the time of each phase (plan = segment + delta + pending
record; write = the local data file by DuckDB COPY; deliver = copy into the target folder +
control file; commit = membership applied). The parent checks that the data file's row count
(counted by reading the file, not from the control file) equals the control file's `rows` and
members x 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest_pipeline import warehouse  # noqa: E402
from ingest_pipeline.config import FlowConfig, parse_config  # noqa: E402

SEGMENT_SQL = "select contact_key as identifier, attributes->>'plan' as plan from contacts"


def flow_for(file_format: str, target: Path) -> FlowConfig:
    return parse_config(
        {
            "tenants": {"bench": {}},
            "flows": [
                {
                    "id": 1,
                    "name": "all_contacts",
                    "client": "bench",
                    "tenant": "bench",
                    "segment": {"name": "everyone", "sql": SEGMENT_SQL},
                    "actions": ["email_welcome"],
                    "format": file_format,
                    "hash_identity": False,
                    "target": str(target),
                    "path": "feeds/bench",
                    "custom_contexts": ["plan"],
                }
            ],
        }
    ).flows[0]


def build_warehouse(path: Path, members: int) -> float:
    start = time.perf_counter()
    with warehouse.connect(path) as con:
        con.execute(
            """
            INSERT INTO contacts (tenant_id, contact_key, email, attributes, first_seen_at,
                                  updated_at)
            SELECT 'bench', 'user' || i || '@example.com', 'user' || i || '@example.com',
                   json_object('plan', ['basic', 'pro', 'team'][1 + i % 3]), now(), now()
            FROM range(?) AS t(i)
            """,
            [members],
        )
        # Another tenant's rows, which the flow must not see.
        con.execute(
            """
            INSERT INTO contacts (tenant_id, contact_key, attributes)
            SELECT 'other', 'other' || i, '{}' FROM range(1000) AS t(i)
            """
        )
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> None:
    """One export, phases timed by wrapping the export functions; prints a JSON line."""
    from ingest_pipeline.exports import export as export_module
    from ingest_pipeline.exports import membership

    phases: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    membership.plan_export = timed("plan", membership.plan_export)
    membership.commit_export = timed("commit", membership.commit_export)
    export_module.write_local_files = timed("write", export_module.write_local_files)
    export_module.deliver = timed("deliver", export_module.deliver)
    flow = flow_for(args.format, Path(args.target))
    start = time.perf_counter()
    result = export_module.export_flow(
        flow, warehouse_path=args.warehouse, default_target_url=args.target
    )
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "phases": phases,
                "changed": result.changed,
                "files": [f.__dict__ for f in result.files],
                "segment_members": result.segment_members,
            }
        )
    )


def run_child(file_format: str, wh: Path, target: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--format",
        file_format,
        "--warehouse",
        str(wh),
        "--target",
        str(target),
    ]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            raise SystemExit(f"child failed ({proc.returncode}):\n{stderr}")
        out.seek(0)
        report = json.loads(out.read().strip().splitlines()[-1])
    report["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return report


def count_rows(path: Path, file_format: str) -> int:
    """Rows of a data file, counted by reading it (DuckDB with the declared dialect)."""
    import duckdb

    con = duckdb.connect()
    try:
        if file_format == "jsonl":
            sql = "SELECT count(*) FROM read_json(?, format='newline_delimited')"
        else:
            delim = "," if file_format == "csv" else "\t"
            sql = (
                "SELECT count(*) FROM read_csv(?, header=true, quote='\"', escape='\"', "
                f"delim='{delim}', all_varchar=true)"
            )
        return con.execute(sql, [str(path)]).fetchone()[0]
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(
        f"members: {args.members:,}; repeats: {args.repeat}; machine: {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}"
    )
    for file_format in args.formats.split(","):
        firsts, agains = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
                wh = Path(tmp) / "warehouse.duckdb"
                target = Path(tmp) / "exports"
                build_warehouse(wh, args.members)
                first = run_child(file_format, wh, target)
                again = run_child(file_format, wh, target)
                (written,) = first["files"]
                data = Path(written["data_url"].removeprefix("file://"))
                control_path = Path(written["control_url"].removeprefix("file://"))
                control_rows = json.loads(control_path.read_text())["files"][0]["rows"]
                counted = count_rows(data, file_format)
                expected = 2 * args.members
                if not counted == control_rows == written["rows"] == expected:
                    raise SystemExit(
                        f"row counts differ: file {counted}, control {control_rows}, "
                        f"expected {expected}"
                    )
                assert not again["changed"] and again["segment_members"] == args.members
                first["size_mib"] = data.stat().st_size / 2**20
                firsts.append(first)
                agains.append(again)
        med = statistics.median(f["seconds"] for f in firsts)
        spread = f"{min(f['seconds'] for f in firsts):.2f}-{max(f['seconds'] for f in firsts):.2f}"
        phases = ", ".join(
            f"{k} {statistics.median(f['phases'][k] for f in firsts):.2f}s"
            for k in firsts[0]["phases"]
        )
        print(
            f"{file_format}: first export median {med:.2f}s (range {spread}; {phases}), "
            f"peak RSS max {max(f['peak_rss_mib'] for f in firsts):.0f} MiB | "
            f"no-change export median {statistics.median(a['seconds'] for a in agains):.2f}s, "
            f"peak RSS max {max(a['peak_rss_mib'] for a in agains):.0f} MiB | data file "
            f"{2 * args.members:,} rows, {firsts[0]['size_mib']:.0f} MiB = control rows: OK"
        )


if __name__ == "__main__":
    main()
