"""`ingest-pipeline`: what Dagster's own CLI does not cover.

ingest-pipeline samples [--landing URL]     write the sample files into the landing zone
ingest-pipeline ingest [--feed F] [--force] ingest every landed file now, without Dagster
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from ingest_pipeline import pipeline
from ingest_pipeline.bronze import SourceFile, new_connection, process_file
from ingest_pipeline.config import load_config
from ingest_pipeline.feeds import FEEDS, FeedSpec
from ingest_pipeline.landing import is_s3_url, landing_from_url, split_s3_url
from ingest_pipeline.parsing import UnsupportedFile, ident, open_records
from ingest_pipeline.samples import write_samples
from ingest_pipeline.settings import get_settings


def _cmd_samples(args: argparse.Namespace) -> int:
    url = args.landing or get_settings().landing_url
    keys = write_samples(landing_from_url(url))
    print(f"wrote {len(keys)} sample files to {url}")
    for key in keys:
        print(f"  {key}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    settings = get_settings()
    landing = landing_from_url(settings.landing_url)
    lake = landing_from_url(settings.lake_url)
    feeds = [FEEDS[args.feed]] if args.feed else list(FEEDS.values())
    failed = 0
    for feed in feeds:
        objects = list(landing.list(feed.landing_prefix))
        outcome = pipeline.ingest_to_bronze(
            objects,
            feed,
            landing=landing,
            lake=lake,
            warehouse_path=settings.warehouse_path,
            tenant_id=settings.tenant,
            force=args.force,
        )
        merged = pipeline.merge_pending(feed, lake=lake, warehouse_path=settings.warehouse_path)
        for r in outcome.reports:
            status = r.status if r.status == "failed" else "ingested"
            print(
                f"{feed.name:9} {status:8} read={r.rows_read} rejected={r.rows_rejected} "
                f"{r.source.key}" + (f"  error: {r.error}" if r.error else "")
            )
            failed += r.status == "failed"
        print(
            f"{feed.name:9} merged {len(merged.files)} file(s): {merged.rows_loaded} loaded, "
            f"{merged.rows_duplicate} duplicate; {len(outcome.skipped_already_ingested)} already "
            "ingested"
        )
    return 1 if failed else 0


def _feed_for(location: str, name: str | None) -> FeedSpec:
    if name:
        return FEEDS[name]
    parts = location.replace("\\", "/").split("/")
    for part in reversed(parts[:-1]):
        if part in FEEDS:
            return FEEDS[part]
    raise SystemExit(
        f"cannot tell the feed of {location!r} from its path: pass --feed "
        f"({', '.join(sorted(FEEDS))})"
    )


@contextmanager
def _local_copy(location: str) -> Iterator[tuple[Path, SourceFile]]:
    """The file at a local path or s3:// URI as a local path (S3 streamed to a temp file)."""
    tenant = get_settings().tenant
    with tempfile.TemporaryDirectory(prefix="ingest-cli-") as tmp:
        if is_s3_url(location):
            bucket, key = split_s3_url(location)
            zone = landing_from_url(f"s3://{bucket}")
            obj = zone.stat(key)
            if obj is None:
                raise SystemExit(f"no object at {location}")
            path = Path(tmp) / Path(key).name
            zone.download(obj, path)
            landed_at, etag, size = obj.last_modified, obj.etag, obj.size
        else:
            path = Path(location)
            if not path.is_file():
                raise SystemExit(f"no file at {location}")
            stat = path.stat()
            landed_at = datetime.fromtimestamp(stat.st_mtime, UTC)
            etag, size = f"{stat.st_size}-{stat.st_mtime_ns}", stat.st_size
        source = SourceFile(
            uri=location,
            etag=etag,
            key=Path(location).name,
            landed_at=landed_at,
            size=size,
            tenant_id=tenant,
        )
        yield path, source


def _cmd_validate(args: argparse.Namespace) -> int:
    feed = _feed_for(args.location, args.feed)
    policy = load_config(get_settings().config_path).policy(feed.name)
    duplicates = 0
    with _local_copy(args.location) as (path, source), tempfile.TemporaryDirectory() as work:
        report = process_file(path, source, feed, Path(work), policy=policy)
        if report.bronze_path is not None and feed.dedupe_key:
            key = ", ".join(ident(k) for k in feed.dedupe_key)
            duplicates = duckdb.sql(
                f"SELECT count(*) - count(DISTINCT ({key})) "
                f"FROM read_parquet('{report.bronze_path}')"
            ).fetchall()[0][0]
    print(f"file:        {args.location}")
    print(f"feed:        {feed.name} (on_error: {policy.on_error})")
    print(f"status:      {'would be ingested' if report.status == 'parsed' else report.status}")
    if report.error:
        print(f"error:       {report.error}")
    print(f"rows read:   {report.rows_read}")
    print(f"would load:  {report.rows_valid - duplicates}")
    print(f"duplicates:  {duplicates} (inside the file)")
    print(f"rejected:    {report.rows_rejected}")
    shown = report.rejects_head.slice(0, args.show).to_pylist()
    if shown:
        print(f"\nfirst {len(shown)} rejected row(s):")
        for row in shown:
            raw = (row["raw"] or "")[:160]
            print(f"  line {row['line_number']}: {row['reason']}\n      {raw}")
    return 0 if report.status == "parsed" else 1


def _cmd_preview(args: argparse.Namespace) -> int:
    feed = _feed_for(args.location, args.feed)
    with _local_copy(args.location) as (path, source), tempfile.TemporaryDirectory() as work:
        con = new_connection(Path(work))
        try:
            records = open_records(con, path, source.key, feed)
        except UnsupportedFile as exc:
            print(f"cannot read {args.location}: {exc}")
            return 1
        columns = ["line_number", *feed.field_names, feed.extras_column, "error"]
        # No ORDER BY: the records stream in file order and the read stops after the first rows.
        rows = con.execute(
            f"SELECT {', '.join(ident(c) for c in columns)} FROM ({records.sql(con)}) "
            f"LIMIT {int(args.rows)}"
        ).fetchall()
        records.release(con)
        damage = records.damage
        con.close()
    shape = records.shape
    print(
        f"{args.location}: {shape.file_format}, compression {shape.compression}, feed {feed.name}"
    )
    if damage:
        print(f"problem: {damage}")
    print("\t".join(columns))
    for row in rows:
        print("\t".join("" if v is None else str(v) for v in row))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest-pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    samples = sub.add_parser("samples", help="write sample files for every feed")
    samples.add_argument("--landing", help="landing URL (default: INGEST_LANDING_URL)")
    samples.set_defaults(func=_cmd_samples)
    ingest = sub.add_parser("ingest", help="ingest landed files now, without Dagster")
    ingest.add_argument("--feed", choices=sorted(FEEDS))
    ingest.add_argument("--force", action="store_true", help="re-ingest files already ingested")
    ingest.set_defaults(func=_cmd_ingest)
    validate = sub.add_parser("validate", help="check one file without loading it")
    validate.add_argument("location", help="a local path or s3://bucket/key")
    validate.add_argument("--feed", choices=sorted(FEEDS))
    validate.add_argument("--show", type=int, default=10, help="rejected rows to print")
    validate.set_defaults(func=_cmd_validate)
    preview = sub.add_parser("preview", help="header and first rows as the pipeline reads them")
    preview.add_argument("location", help="a local path or s3://bucket/key")
    preview.add_argument("--feed", choices=sorted(FEEDS))
    preview.add_argument("--rows", type=int, default=5)
    preview.set_defaults(func=_cmd_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
