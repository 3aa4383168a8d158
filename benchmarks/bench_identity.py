"""Benchmark: identity resolution at scale, a full rebuild vs one incremental batch.

    .venv/bin/python benchmarks/bench_identity.py                   # 1,000,000 aliases, 3 repeats
    .venv/bin/python benchmarks/bench_identity.py --clusters 20000 --repeat 1   # quick look

The warehouse (a fresh file made by `warehouse.connect`, tenant 'bench') holds `--clusters`
(200,000) clusters of `--size` (5) identities each: per cluster one alias row per identity, each
identity aliased to the next one round the cluster (a cycle: 5 alias rows, 5 identities, one edge
per cluster already joined when it comes), so 1,000,000 alias rows with 1,000,000 distinct alias
keys, `recorded_at` spread over a year. They are made directly in DuckDB SQL from `range()`
(`INSERT INTO aliases SELECT ...`); no `identities` rows exist before the rebuild.

What it measures, each step in its own child process (this script with `--child`; peak RSS from
`os.wait4` of that child), `--repeat` times on fresh copies of the warehouse file:

  (a) rebuild      `rebuild_identities(con, 500)` over the whole tenant, in one
                   `warehouse.transaction` (call time; with COMMIT too).
  (b) incremental  on a fresh copy of (a)'s rebuilt warehouse: `--batch` (10,000) new alias rows
                   (half join an existing cluster: a new alias key for one of its identities;
                   half are two new identities) inserted into `aliases` and kept in a temp table
                   `batch_aliases`, then `update_identities(con, seen_sql, touched_sql, 500)` with
                   seen_sql = touched_sql = the batch's alias keys UNION its contact keys (call
                   time; with the INSERT and COMMIT too).
  verify           on a copy of (b)'s result: a full rebuild, compared with (b)'s `identities`
                   (tenant, contact_key, person_id, graph_id) and the aliases'
                   refusals; also the expected identity, people and cluster-size counts.

Printed: medians of (a) and (b), (b) as a percentage of (a) (target < 5%), peak RSS of each, where
the time goes inside each call (the resolve module's helpers wrapped from this script), and
whether the incremental result equals the rebuild. Work files go to a temp folder under `--out`
(benchmarks/out/, gitignored) and are removed; results are written there as JSON. Exit 1 when
the incremental result and the rebuild differ.
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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "out"
TENANT = "bench"
CAP = 500
TARGET_PERCENT = 5.0
MIB = 1024 * 1024
IDENTITY_COLUMNS = "tenant_id, contact_key, person_id, graph_id"


def _identity_sql(cluster: str, member: str) -> str:
    """SQL: the identity `member` of cluster `cluster` (both integer SQL expressions)."""
    return f"printf('id%07d-%d', {cluster}, {member})"


# --------------------------------------------------------------------------------------------
# The warehouse
# --------------------------------------------------------------------------------------------


def build_base(path: Path, clusters: int, size: int) -> dict[str, Any]:
    """A fresh warehouse with clusters x size alias rows, each cluster a cycle."""
    from ingest_pipeline import warehouse
    from ingest_pipeline.merge import key_hash_sql, split_hash_sql

    hi, lo = split_hash_sql(
        key_hash_sql(
            {"tenant_id": "tenant_id", "alias_key": "alias_key"},
            {"tenant_id": "VARCHAR", "alias_key": "VARCHAR"},
        )
    )
    started = time.perf_counter()
    with warehouse.connect(path) as con:
        con.execute(
            f"""
            INSERT INTO aliases (tenant_id, alias_key, contact_key, source_uri, line_number,
                                 landed_at, recorded_at, etag, key_hash_hi, key_hash_lo,
                                 refused_reason)
            SELECT tenant_id, alias_key, contact_key, source_uri, line_number, landed_at,
                   recorded_at, etag, {hi}, {lo}, NULL
            FROM (
                SELECT '{TENANT}' AS tenant_id,
                       {_identity_sql(f"i // {size}", f"i % {size}")} AS alias_key,
                       {_identity_sql(f"i // {size}", f"(i + 1) % {size}")} AS contact_key,
                       'bench://aliases.jsonl' AS source_uri, i + 1 AS line_number,
                       TIMESTAMPTZ '2025-01-01 00:00:00+00' AS landed_at,
                       TIMESTAMPTZ '2024-01-01 00:00:00+00'
                           + to_seconds((hash(i) % 31536000)::BIGINT) AS recorded_at,
                       'bench' AS etag
                FROM range({clusters * size}) r(i)
            )
            """
        )
        rows = con.execute("SELECT count(*), count(DISTINCT alias_key) FROM aliases").fetchall()
    return {
        "alias_rows": rows[0][0],
        "distinct_alias_keys": rows[0][1],
        "build_seconds": time.perf_counter() - started,
        "file_bytes": path.stat().st_size,
    }


def batch_sql(clusters: int, size: int, batch: int) -> str:
    """The batch's alias rows: the first half each a new alias key for an identity of an
    existing cluster (distinct clusters spread over the graph), the second half two new
    identities each."""
    half = batch // 2
    stride = max(1, clusters // half)
    existing = _identity_sql(f"(j * {stride} + 7) % {clusters}", f"j % {size}")
    return f"""
        SELECT '{TENANT}' AS tenant_id,
               CASE WHEN j < {half} THEN printf('new-alias-%06d', j)
                    ELSE printf('new-pair-%06d-a', j) END AS alias_key,
               CASE WHEN j < {half} THEN {existing}
                    ELSE printf('new-pair-%06d-c', j) END AS contact_key,
               'bench://batch.jsonl' AS source_uri, j + 1 AS line_number,
               TIMESTAMPTZ '2025-06-01 00:00:00+00' AS landed_at,
               TIMESTAMPTZ '2024-01-01 00:00:00+00'
                   + to_seconds((hash(j + 7) % 31536000)::BIGINT) AS recorded_at,
               'batch' AS etag, NULL::UBIGINT AS key_hash_hi, NULL::UBIGINT AS key_hash_lo,
               NULL::VARCHAR AS refused_reason
        FROM range({batch}) r(j)
    """


def copy_warehouse(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    wal = src.with_name(src.name + ".wal")
    if wal.exists():
        shutil.copyfile(wal, dst.with_name(dst.name + ".wal"))


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


class Timers:
    """Inclusive seconds per wrapped function (`_resolve_members` includes `graph.resolve`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, module: Any, name: str, label: str) -> None:
        fn: Callable[..., Any] | None = getattr(module, name, None)
        if fn is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started

        setattr(module, name, timed)


def _instrument() -> Timers:
    from ingest_pipeline.identity import resolve as resolve_mod

    timers = Timers()
    timers.wrap(resolve_mod, "_register_identities", "register new identities (SQL)")
    timers.wrap(resolve_mod, "resolve", "graph.resolve: union-find + ids (Python)")
    timers.wrap(resolve_mod, "_write_resolution", "write changed rows back (UPDATE)")
    return timers


NESTED = {"graph.resolve: union-find + ids (Python)"}  # inside _resolve_members


def _add_rest(timers: Timers, seconds: float) -> None:
    """The call's time outside the wrapped helpers: the other SQL statements and Python."""
    outer = sum(v for k, v in timers.seconds.items() if k not in NESTED)
    timers.seconds["rest: other SQL + Python"] = seconds - outer


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_rebuild(db: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ingest_pipeline import warehouse
    from ingest_pipeline.identity import resolve as resolve_mod

    timers = _instrument()
    # _resolve_members = fetch members + edges, graph.resolve, Arrow tables
    timers.wrap(resolve_mod, "_resolve_members", "_resolve_members (fetch + resolve + Arrow)")
    with warehouse.connect(db) as con:
        rss_before = _rss_mib()
        cpu0, t0 = time.process_time(), time.perf_counter()
        with warehouse.transaction(con):
            update = resolve_mod.rebuild_identities(con, CAP)
            t1 = time.perf_counter()
        t2, cpu2 = time.perf_counter(), time.process_time()
        identities = con.execute("SELECT count(*) FROM identities").fetchall()[0][0]
    _add_rest(timers, t1 - t0)
    return {
        "seconds": t1 - t0,
        "seconds_with_commit": t2 - t0,
        "cpu_seconds_with_commit": cpu2 - cpu0,
        "rss_before_mib": rss_before,
        "timers": timers.seconds,
        "identities": identities,
        "clusters": update.clusters_touched,
    }


def child_incremental(db: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ingest_pipeline import warehouse
    from ingest_pipeline.identity import resolve as resolve_mod

    timers = _instrument()
    timers.wrap(resolve_mod, "_resolve_members", "_resolve_members (fetch + resolve + Arrow)")
    seen = (
        "SELECT tenant_id, alias_key AS contact_key FROM batch_aliases "
        "UNION SELECT tenant_id, contact_key FROM batch_aliases"
    )
    with warehouse.connect(db) as con:
        con.execute(
            "CREATE TEMP TABLE batch_aliases AS " + batch_sql(args.clusters, args.size, args.batch)
        )
        rss_before = _rss_mib()
        cpu0, t0 = time.process_time(), time.perf_counter()
        with warehouse.transaction(con):
            con.execute("INSERT INTO aliases SELECT * FROM batch_aliases")
            t1 = time.perf_counter()
            update = resolve_mod.update_identities(con, seen, seen, CAP)
            t2 = time.perf_counter()
        t3, cpu3 = time.perf_counter(), time.process_time()
    _add_rest(timers, t2 - t1)
    return {
        "seconds": t2 - t1,
        "insert_seconds": t1 - t0,
        "seconds_with_commit": t3 - t0,
        "cpu_seconds_with_commit": cpu3 - cpu0,
        "rss_before_mib": rss_before,
        "timers": timers.seconds,
        "update": update.metadata(),
    }


def child_verify(db: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`db`: a copy of the incremental result (rebuilt here); args.compare: the result itself."""
    import duckdb

    from ingest_pipeline import warehouse
    from ingest_pipeline.identity.resolve import rebuild_identities

    with warehouse.connect(db) as con:
        with warehouse.transaction(con):
            rebuild_identities(con, CAP)
    con = duckdb.connect(str(db), read_only=True)
    try:
        con.execute(f"ATTACH '{args.compare}' AS inc (READ_ONLY)")

        def differ(cols: str, table: str) -> list[int]:
            return [
                con.execute(
                    f"SELECT count(*) FROM (SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b})"
                ).fetchall()[0][0]
                for a, b in ((table, f"inc.{table}"), (f"inc.{table}", table))
            ]

        identities_diff = differ(IDENTITY_COLUMNS, "identities")
        aliases_diff = differ("tenant_id, alias_key, contact_key, refused_reason", "aliases")
        counts = con.execute(
            "SELECT count(*), count(DISTINCT person_id), count(DISTINCT graph_id) FROM inc.identities"
        ).fetchall()[0]
        sizes = con.execute(
            "SELECT size, count(*) FROM (SELECT count(*) OVER (PARTITION BY person_id) AS size "
            "FROM inc.identities) GROUP BY 1 ORDER BY 1"
        ).fetchall()
        refused = con.execute(
            "SELECT count(*) FROM inc.aliases WHERE refused_reason IS NOT NULL"
        ).fetchall()[0][0]
    finally:
        con.close()
    half = args.batch // 2
    n = args.clusters * args.size
    expect_identities = n + half + 2 * (args.batch - half)
    expect_people = args.clusters + (args.batch - half)
    expect_sizes = sorted(
        {
            2: 2 * (args.batch - half),
            args.size: (args.clusters - half) * args.size,
            args.size + 1: half * (args.size + 1),
        }.items()
    )
    return {
        "identities_only_in_rebuild": identities_diff[0],
        "identities_only_in_incremental": identities_diff[1],
        "aliases_only_in_rebuild": aliases_diff[0],
        "aliases_only_in_incremental": aliases_diff[1],
        "match": identities_diff == [0, 0] and aliases_diff == [0, 0],
        "identities": counts[0],
        "people": counts[1],
        "graphs": counts[2],
        "cluster_sizes": sizes,
        "refused": refused,
        "expected_ok": (
            counts[0] == expect_identities
            and counts[1] == expect_people
            and [tuple(s) for s in sizes] == expect_sizes
            and refused == 0
        ),
        "expected": {
            "identities": expect_identities,
            "people": expect_people,
            "cluster_sizes": expect_sizes,
        },
    }


CHILDREN = {"rebuild": child_rebuild, "incremental": child_incremental, "verify": child_verify}


def run_child(step: str, db: Path, args: argparse.Namespace, compare: Path | None = None) -> dict:
    result_path = db.with_name(f"{db.stem}.{step}.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--db", str(db)]
    cmd += ["--result", str(result_path), "--clusters", str(args.clusters)]
    cmd += ["--size", str(args.size), "--batch", str(args.batch)]
    if compare is not None:
        cmd += ["--compare", str(compare)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{step} child failed with status {status}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = time.perf_counter() - started
    result["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=5, help="identities (= alias rows) a cluster")
    parser.add_argument("--batch", type=int, default=10_000, help="new alias rows in (b)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size < 2 or args.batch // 2 > args.clusters:
        parser.error("--size must be >= 2 and --batch / 2 <= --clusters")

    if args.child:
        result = CHILDREN[args.child](args.db, args)
        args.result.write_text(json.dumps(result))
        return 0

    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="identity-", dir=out_dir))
    runs: list[dict[str, Any]] = []
    try:
        base = work / "base.duckdb"
        built = build_base(base, args.clusters, args.size)
        print(
            f"warehouse: {built['alias_rows']:,} alias rows ({built['distinct_alias_keys']:,} "
            f"distinct alias keys), {args.clusters:,} clusters of {args.size}, built in "
            f"{built['build_seconds']:.1f} s, {built['file_bytes'] / MIB:.0f} MiB",
            flush=True,
        )
        for i in range(args.repeat):
            a_db, b_db, v_db = (work / f"{s}{i}.duckdb" for s in ("a", "b", "v"))
            copy_warehouse(base, a_db)
            rebuild = run_child("rebuild", a_db, args)
            print(
                f"run {i + 1}/{args.repeat}: (a) rebuild {rebuild['seconds']:.2f} s "
                f"(+commit {rebuild['seconds_with_commit']:.2f} s), peak RSS "
                f"{rebuild['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
            copy_warehouse(a_db, b_db)
            inc = run_child("incremental", b_db, args)
            print(
                f"run {i + 1}/{args.repeat}: (b) {args.batch:,}-alias batch "
                f"{inc['seconds']:.3f} s (insert+update+commit {inc['seconds_with_commit']:.3f} s), "
                f"peak RSS {inc['peak_rss_mib']:.0f} MiB, {json.dumps(inc['update'])}",
                flush=True,
            )
            copy_warehouse(b_db, v_db)
            verify = run_child("verify", v_db, args, compare=b_db)
            print(
                f"run {i + 1}/{args.repeat}: verify: incremental == rebuild: {verify['match']}; "
                f"expected counts: {verify['expected_ok']}",
                flush=True,
            )
            runs.append({"rebuild": rebuild, "incremental": inc, "verify": verify})
            for p in (a_db, b_db, v_db):
                p.unlink(missing_ok=True)
                p.with_name(p.name + ".wal").unlink(missing_ok=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rebuilds = [r["rebuild"] for r in runs]
    incs = [r["incremental"] for r in runs]
    a, b = _median(rebuilds, "seconds"), _median(incs, "seconds")
    a_tx, b_tx = _median(rebuilds, "seconds_with_commit"), _median(incs, "seconds_with_commit")
    percent, percent_tx = 100 * b / a, 100 * b_tx / a_tx
    match = all(r["verify"]["match"] for r in runs)
    expected_ok = all(r["verify"]["expected_ok"] for r in runs)
    print()
    print(
        f"identity graph: {args.clusters * args.size:,} alias rows, {args.clusters:,} clusters "
        f"of {args.size}; batch {args.batch:,} new aliases; cap {CAP}; {args.repeat} repeats"
    )
    print(f"  {'step':<44} {'median s':>9} {'runs s':<26} {'peak RSS MiB (max)':>18}")
    rows = [
        ("(a) rebuild_identities", rebuilds, "seconds"),
        ("(a) rebuild_identities + COMMIT", rebuilds, "seconds_with_commit"),
        (f"(b) update_identities ({args.batch:,}-alias batch)", incs, "seconds"),
        ("(b) INSERT aliases + update + COMMIT", incs, "seconds_with_commit"),
    ]
    for label, rs, key in rows:
        runs_s = ", ".join(f"{r[key]:.3f}" for r in rs)
        peak = max(r["peak_rss_mib"] for r in rs)
        print(f"  {label:<44} {_median(rs, key):>9.3f} {runs_s:<26} {peak:>18.0f}")
    print(
        f"\n  (b) / (a): {percent:.2f}%  (target < {TARGET_PERCENT:.0f}%: "
        f"{'met' if percent < TARGET_PERCENT else 'UNMET'}); with INSERT + COMMIT on both sides: "
        f"{percent_tx:.2f}%"
    )
    for label, rs in (("(a) rebuild", rebuilds), ("(b) update", incs)):
        timers = sorted({k for r in rs for k in r["timers"]})
        parts = ", ".join(
            f"{k} {statistics.median(r['timers'].get(k, 0.0) for r in rs):.3f}" for k in timers
        )
        print(f"  where {label}'s time goes (median inclusive s): {parts}")
    last = runs[-1]["verify"]
    print(
        f"\n  verify: incremental result == full rebuild of it (identities and alias refusals): "
        f"{'MATCH' if match else 'DIFFER'} in {len(runs)}/{len(runs)} runs"
        if match
        else f"\n  verify: DIFFER: {json.dumps([r['verify'] for r in runs])}"
    )
    print(
        f"  after (b): {last['identities']:,} identities, {last['people']:,} people, cluster "
        f"sizes {last['cluster_sizes']}, {last['refused']} refused aliases; as expected: "
        f"{expected_ok} ({json.dumps(last['expected'])})"
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_path = out_dir / f"identity_{args.clusters * args.size}_{stamp}.json"
    results_path.write_text(
        json.dumps(
            {
                "argv": sys.argv,
                "cpus": os.cpu_count(),
                "built": built,
                "runs": runs,
                "summary": {
                    "rebuild_median_seconds": a,
                    "incremental_median_seconds": b,
                    "percent": percent,
                    "percent_with_insert_commit": percent_tx,
                    "match": match,
                    "expected_ok": expected_ok,
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nresults: {results_path}")
    return 0 if match and expected_ok else 1


if __name__ == "__main__":
    sys.exit(main())
