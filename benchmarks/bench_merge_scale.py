"""Does a merge cost follow the batch or the table? (issue #8, goal "merges flat in table size")

Merges 1,000,000-row track batches one after the other into one warehouse file, every batch with
the same event_timestamp range (the worst case: zone maps on the timestamp prune nothing) and keys
that collide with nothing stored, so every batch row must be compared with the stored rows and
none replaces one. Prints each merge's wall time and the ratio of the last merge (into N-1
batches' rows) to the first (into an empty table).

    .venv/bin/python benchmarks/bench_merge_scale.py                     # 11 batches: 11th into 10M
    .venv/bin/python benchmarks/bench_merge_scale.py --stored 50000000   # one batch into 50M rows

`--stored N` builds the N stored rows directly with SQL (not merged batch by batch, which would
take long) and then times one merge of a fresh batch against the first merge into an empty table.
Each timed merge is the real code: `merge.merge_bronze` over a bronze Parquet file, in one
transaction, on a DuckDB file, as `pipeline.merge_pending` runs it (without the ledger).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from ingest_pipeline import pipeline, warehouse
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.merge import BronzeFile, merge_bronze

TRACK = FEEDS["track"]
T0 = 1_767_225_600  # 2026-01-01
SPAN = 30 * 86_400  # every batch: the same 30 days


def write_batch(path: Path, batch: int, rows: int) -> None:
    """A bronze Parquet file of `rows` track events with keys unique to `batch`."""
    duckdb.sql(
        f"""
        COPY (
            SELECT 'bench' AS tenant_id, 's3://bench/track/batch-{batch}.jsonl' AS source_uri,
                   'etag-{batch}' AS etag,
                   to_timestamp({T0} + {batch} * 3600) AS landed_at,
                   i + 1 AS line_number,
                   'contact-' || ({batch}::BIGINT * {rows} + i) AS contact_key,
                   (['opened', 'clicked', 'bought', 'viewed'])[i % 4 + 1] AS event_text,
                   to_timestamp({T0} + (hash(i, {batch}) % {SPAN})::BIGINT) AS event_timestamp,
                   json_object('plan', (['free', 'pro'])[i % 2 + 1], 'n', i)::JSON AS properties
            FROM range({rows}) t(i)
        ) TO '{path}' (FORMAT parquet, COMPRESSION snappy)
        """
    )


def merge(wh: Path, bronze: Path, batch: int) -> float:
    files = [BronzeFile(f"s3://bench/track/batch-{batch}.jsonl", f"etag-{batch}", "", bronze)]
    with warehouse.connect(wh) as con:
        con.execute(f"SET memory_limit = '{pipeline.MERGE_MEMORY_LIMIT}'")
        started = time.perf_counter()
        with warehouse.transaction(con):
            merge_bronze(con, TRACK, files)
        return time.perf_counter() - started


def prefill(wh: Path, rows: int, batch_rows: int, tmp: Path) -> None:
    """`rows` stored events as if merged batch by batch (keys of batches 1000+)."""
    done = 0
    batch = 1000
    while done < rows:
        n = min(batch_rows * 5, rows - done)
        path = tmp / f"prefill-{batch}.parquet"
        write_batch(path, batch, n)
        merge(wh, path, batch)
        path.unlink()
        done += n
        batch += 1
        print(f"  prefilled {done:,} rows", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per batch")
    parser.add_argument("--batches", type=int, default=11)
    parser.add_argument("--stored", type=int, help="build this many stored rows, then merge once")
    parser.add_argument("--repeat", type=int, default=3, help="first/last merges measured")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.out))
    try:
        batches = [tmp / f"batch-{b}.parquet" for b in range(args.batches)]
        for b, path in enumerate(batches):
            write_batch(path, b, args.rows)
        firsts = []
        for r in range(args.repeat):
            wh = tmp / f"first-{r}.duckdb"
            firsts.append(merge(wh, batches[0], 0))
            wh.unlink()
        results: dict[str, object] = {"rows_per_batch": args.rows, "first_merge_s": firsts}
        wh = tmp / "warehouse.duckdb"
        if args.stored:
            prefill(wh, args.stored, args.rows, tmp)
            shutil.copy(wh, tmp / "prefilled.duckdb")
            lasts = []
            for _ in range(args.repeat):
                shutil.copy(tmp / "prefilled.duckdb", wh)
                lasts.append(merge(wh, batches[1], 1))
            results.update(stored_rows=args.stored, last_merge_s=lasts)
            label = f"1 batch into {args.stored:,} stored rows"
        else:
            times = []
            for b, path in enumerate(batches):
                times.append(merge(wh, path, b))
                print(f"  merge {b + 1:2d} into {b * args.rows:>12,} rows: {times[-1]:.2f} s")
            lasts = [times[-1]]
            results.update(merges_s=times, stored_rows=(args.batches - 1) * args.rows)
            label = f"merge {args.batches} into {(args.batches - 1) * args.rows:,} rows"
        with warehouse.connect(wh, read_only=True) as con:
            stored = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
        first, last = statistics.median(firsts), statistics.median(lasts)
        print(f"first merge (empty table), median of {len(firsts)}: {first:.2f} s")
        print(f"{label}, median of {len(lasts)}: {last:.2f} s")
        print(f"ratio last/first: {last / first:.2f}   (events stored at the end: {stored:,})")
        results.update(ratio=last / first, events_at_end=stored)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = args.out / f"merge_scale_{stamp}.json"
        out.write_text(json.dumps(results, indent=2))
        print(f"results: {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
