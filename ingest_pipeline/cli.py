"""`ingest-pipeline`: what Dagster's own CLI does not cover.

ingest-pipeline samples [--landing URL]     write the sample files into the landing zone
ingest-pipeline ingest [--feed F] [--force] ingest every landed file now, without Dagster
ingest-pipeline validate FILE               counts and first rejects, nothing written
ingest-pipeline preview FILE                the first records as the pipeline reads them
ingest-pipeline status [--feed F]           files not final (stuck ones first), failed files
ingest-pipeline report SOURCE_URI           one file: counts, rejected lines, refused aliases
ingest-pipeline identities rebuild          the identity graph recomputed from the aliases
ingest-pipeline sql "QUERY" [--format F]    one read-only query, as of the last committed merge
ingest-pipeline imports check NAME          an import's set-up tried with its credentials
ingest-pipeline imports preview NAME        its most recent file, as read and as mapped
ingest-pipeline imports run NAME [--file F]  the folder's new files now, without Dagster
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from ingest_pipeline import pipeline, warehouse
from ingest_pipeline.bronze import SourceFile, new_connection, process_file
from ingest_pipeline.config import load_config
from ingest_pipeline.feeds import FEEDS, FeedSpec
from ingest_pipeline.file_report import file_report, render
from ingest_pipeline.health import ledger_health
from ingest_pipeline.identity.resolve import rebuild_identities
from ingest_pipeline.landing import is_s3_url, landing_from_url, split_s3_url
from ingest_pipeline.parsing import UnsupportedFile, ident, open_records
from ingest_pipeline.pipeline import now
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
    config = load_config(settings.config_path)
    feeds = [config.feed(args.feed)] if args.feed else [config.feed(n) for n in FEEDS]
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
            run_id=f"cli-{uuid.uuid4().hex[:12]}",
            force=args.force,
            policy=config.policy(feed.name),
            retry=pipeline.RetryPolicy(
                max_attempts=settings.max_attempts, delay_seconds=settings.retry_delay_seconds
            ),
        )
        merged = pipeline.merge_pending(
            feed,
            lake=lake,
            warehouse_path=settings.warehouse_path,
            max_cluster_size=config.identity.max_cluster_size,
        )
        for r in outcome.reports:
            status = r.status if r.status in ("failed", "skipped") else "ingested"
            print(
                f"{feed.name:9} {status:8} read={r.rows_read} rejected={r.rows_rejected} "
                f"{r.source.key}" + (f"  error: {r.error}" if r.error else "")
            )
            failed += r.status == "failed"
        for uri, error in outcome.unreadable.items():
            print(f"{feed.name:9} failed   {uri}  error: {error}")
            failed += 1
        for uri, (error, _) in outcome.retrying.items():
            print(f"{feed.name:9} retrying {uri}  error: {error}")
            failed += 1
        for uri in outcome.vanished:
            print(f"{feed.name:9} vanished {uri}")
        print(
            f"{feed.name:9} merged {len(merged.files)} file(s): {merged.rows_loaded} loaded, "
            f"{merged.rows_duplicate} duplicate; {len(outcome.skipped_already_ingested)} already "
            "ingested"
        )
    return 1 if failed else 0


def _feed_for(location: str, name: str | None) -> FeedSpec:
    config = load_config(get_settings().config_path)
    if name:
        return config.feed(name)
    parts = location.replace("\\", "/").split("/")
    for part in reversed(parts[:-1]):
        if part in FEEDS:
            return config.feed(part)
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


def _cmd_status(args: argparse.Namespace) -> int:
    settings = get_settings()
    stuck_after = timedelta(seconds=args.stuck_after or settings.stuck_after_seconds)
    health = ledger_health(settings.warehouse_path, args.feed, stuck_after=stuck_after)
    scope = f"feed {args.feed}" if args.feed else "all feeds"
    print(f"warehouse: {settings.warehouse_path} ({scope})")
    counts = ", ".join(f"{status} {n}" for status, n in sorted(health.counts.items()))
    print(f"files by status: {counts or 'none yet'}")
    print(health.summary)
    at = now()
    stuck = {(f.source_uri, f.etag) for f in health.stuck}
    if health.active:
        print(
            f"\nnot final ({len(health.active)}; stuck = not final for more than "
            f"{stuck_after.total_seconds():g} s):"
        )
        ordered = sorted(
            health.active, key=lambda f: ((f.source_uri, f.etag) not in stuck, f.since or at)
        )
        for f in ordered[: args.limit]:
            age = f"{(at - f.since).total_seconds():.0f} s" if f.since else "?"
            mark = "STUCK " if (f.source_uri, f.etag) in stuck else ""
            print(
                f"  {mark}{f.status:8} {f.feed:9} for {age:>8}  attempts {f.attempts}  "
                f"run {f.run_id or '-'}  {f.source_uri}"
            )
            if f.error:
                print(f"      {f.error}")
    if health.failed:
        print(f"\nfailed (most recent first, {len(health.failed)} shown):")
        for f in health.failed[: args.limit]:
            finished = f"{f.finished_at:%Y-%m-%d %H:%M:%S}" if f.finished_at else "?"
            print(f"  {finished}  {f.feed:9} {f.source_uri}\n      {f.error}")
    return 1 if health.stuck else 0


def _cmd_report(args: argparse.Namespace) -> int:
    settings = get_settings()
    with warehouse.connect(settings.warehouse_path, read_only=True) as con:
        view = file_report(con, args.source_uri, limit=args.limit)
    if view is None:
        print(f"no file {args.source_uri} in the ledger of {settings.warehouse_path}")
        return 1
    print(render(view))
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    """One read-only query against the read snapshot (warehouse.connect_reader): it answers
    during merges, and a statement that would write is refused by DuckDB."""
    path = get_settings().warehouse_path
    try:
        con = warehouse.connect_reader(path)
    except (warehouse.NoSnapshot, duckdb.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if args.format == "table":
            rel = con.sql(args.query)
            if rel is not None:
                rel.show(max_rows=args.max_rows, max_width=200)
            return 0
        result = con.execute(args.query)
        if result.description is not None:
            _write_rows(result, [d[0] for d in result.description], args.format)
        return 0
    except duckdb.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        con.close()


def _write_rows(result: duckdb.DuckDBPyConnection, columns: list[str], fmt: str) -> None:
    """Every row, streamed in batches (bounded memory whatever the result's size)."""
    import csv
    import json

    writer = csv.writer(sys.stdout, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
    if fmt in ("csv", "tsv"):
        writer.writerow(columns)
    while batch := result.fetchmany(10_000):
        for row in batch:
            if fmt == "json":
                sys.stdout.write(json.dumps(dict(zip(columns, row, strict=True)), default=str))
                sys.stdout.write("\n")
            else:
                writer.writerow(["" if v is None else v for v in row])


def _cmd_identities(args: argparse.Namespace) -> int:
    settings = get_settings()
    cap = load_config(settings.config_path).identity.max_cluster_size
    with (
        warehouse.connect(settings.warehouse_path, publish=True) as con,
        warehouse.transaction(con),
    ):
        update = rebuild_identities(con, cap)
    print(
        f"identities rebuilt: {update.identities_added} identities in "
        f"{update.clusters_touched} people; aliases applied {update.aliases_applied}, "
        f"refused {update.aliases_refused} (cluster-size cap {cap})"
    )
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    import secrets

    import uvicorn

    config = load_config(get_settings().config_path)  # an invalid ingest.yaml stops here
    # Local upload URLs are signed; every worker must know the key. Not configured: one key
    # for this start, passed to the workers through the environment (never a file).
    os.environ.setdefault(config.api.signing_key_env, secrets.token_urlsafe(32))
    host = args.host or os.environ.get("INGEST_API_HOST", "127.0.0.1")
    port = args.port or int(os.environ.get("INGEST_API_PORT", "8000"))
    uvicorn.run(
        "ingest_pipeline.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        log_level=args.log_level,
        # a request's header and query are logged, never its x-api-key header
        access_log=not args.no_access_log,
    )
    return 0


def _cmd_imports(args: argparse.Namespace) -> int:
    from ingest_pipeline.imports.preview import check_import, preview_import

    config = load_config(get_settings().config_path)
    try:
        imp = config.import_config(args.name)
    except KeyError as exc:
        print(exc.args[0])
        return 1
    if args.action == "run":
        return _run_import(config, imp, args.file or [])
    if args.action == "check":
        check = check_import(config, imp)
        for line in check.ok:
            print(f"ok: {line}")
        for line in check.notes:
            print(f"note: {line}")
        for line in check.problems:
            print(f"problem: {line}")
        print(f"import {imp.name}: " + ("ready" if not check.problems else "NOT ready"))
        return 1 if check.problems else 0
    preview = preview_import(config, imp, rows=args.rows)
    if preview.problems:
        for line in preview.problems:
            print(f"problem: {line}")
        return 1
    print(f"import {imp.name}: most recent file {preview.file}")
    print("\nheader:\n  " + ",".join(preview.header))
    print(f"\ntop {len(preview.raw)} rows as read:")
    for line, raw in preview.raw:
        print(f"  line {line}: {raw.rstrip()}")
    print("\nmapping (column -> attribute: type):")
    for column, attribute, kind in preview.mapping:
        print(f"  {column} -> {attribute}: {kind}")
    if preview.skipped:
        print("  skipped (skip in the manifest): " + ", ".join(preview.skipped))
    if preview.not_imported:
        print("  not imported (not in the manifest): " + ", ".join(preview.not_imported))
    print("\nthe same rows after the mapping:")
    for line, values, problem in preview.mapped:
        shown = ", ".join(f"{k}={'' if v is None else v}" for k, v in values.items())
        print(f"  line {line}: {shown}")
        if problem:
            print(f"      would be rejected: {problem}")
    return 0


def _run_import(config: Any, imp: Any, names: list[str]) -> int:
    from ingest_pipeline.imports.notify import SmtpSettings, send_summary
    from ingest_pipeline.imports.run import run_import

    settings = get_settings()
    result = run_import(
        config,
        imp,
        lake=landing_from_url(settings.lake_url),
        warehouse_path=settings.warehouse_path,
        names=names,
        log=lambda message: print(f"warning: {message}", file=sys.stderr),
    )
    summary = result.summary
    send_summary(summary, imp.notify, SmtpSettings.from_env(), log=print)
    for name, why in summary.ignored:
        print(f"ignored {name}: {why}")
    for f in summary.files:
        print(
            f"{f.name}: {f.status}, {f.rows_read} read, {f.rows_loaded} loaded, "
            f"{f.rows_duplicate} duplicates, {f.rows_rejected} rejected"
            + (f" ({f.error})" if f.error else "")
        )
    print(summary.subject())
    return 0 if summary.succeeded else 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


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
    status = sub.add_parser(
        "status", help="files not final (stuck ones first) and failed files; exit 1 if stuck"
    )
    status.add_argument("--feed", choices=sorted(FEEDS))
    status.add_argument(
        "--stuck-after", type=int, help="seconds (default: INGEST_STUCK_AFTER_SECONDS)"
    )
    status.add_argument("--limit", type=int, default=50, help="files listed per section")
    status.set_defaults(func=_cmd_status)
    report = sub.add_parser(
        "report", help="one file's report: status, counts, rejected lines, refused aliases"
    )
    report.add_argument("source_uri", help="the file's URI as the ledger has it")
    report.add_argument("--limit", type=int, default=20, help="lines listed per section")
    report.set_defaults(func=_cmd_report)
    sql = sub.add_parser(
        "sql",
        help="one read-only SQL query against the warehouse, as of the last committed merge",
    )
    sql.add_argument("query", help='e.g. "SELECT event_text, count(*) FROM events GROUP BY 1"')
    sql.add_argument(
        "--format",
        choices=["table", "csv", "tsv", "json"],
        default="table",
        help="table (default, for people), csv/tsv (with a header), json (one object per line)",
    )
    sql.add_argument(
        "--max-rows", type=int, default=40, help="rows a table shows (csv/tsv/json: all)"
    )
    sql.set_defaults(func=_cmd_sql)
    identities = sub.add_parser("identities", help="the identity graph")
    identities_sub = identities.add_subparsers(dest="action", required=True)
    rebuild = identities_sub.add_parser(
        "rebuild", help="recompute identities from scratch from the aliases table"
    )
    rebuild.set_defaults(func=_cmd_identities)
    imports = sub.add_parser("imports", help="configured CSV imports: check, preview")
    imports_sub = imports.add_subparsers(dest="action", required=True)
    check = imports_sub.add_parser(
        "check",
        help="connect with the import's credentials, read its newest file; exit 1 on a problem",
    )
    check.add_argument("name", help="the import's name in ingest.yaml")
    check.set_defaults(func=_cmd_imports)
    import_preview = imports_sub.add_parser(
        "preview", help="the newest file's header, top rows as read and after the mapping"
    )
    import_preview.add_argument("name", help="the import's name in ingest.yaml")
    import_preview.add_argument("--rows", type=_positive, default=5, help="rows shown (>= 1)")
    import_preview.set_defaults(func=_cmd_imports)
    run = imports_sub.add_parser(
        "run", help="take the folder's new files now (no Dagster); exit 1 if any failed"
    )
    run.add_argument("name", help="the import's name in ingest.yaml")
    run.add_argument(
        "--file", action="append", help="re-run this file name whatever its earlier outcome"
    )
    run.set_defaults(func=_cmd_imports)
    api = sub.add_parser("api", help="start the Ingestion API (FastAPI under uvicorn)")
    api.add_argument("--host", help="default: INGEST_API_HOST or 127.0.0.1")
    api.add_argument("--port", type=int, help="default: INGEST_API_PORT or 8000")
    api.add_argument("--workers", type=int, default=1, help="worker processes")
    api.add_argument("--log-level", default="info")
    api.add_argument("--no-access-log", action="store_true", help="no line per request")
    api.set_defaults(func=_cmd_api)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # Output piped into `head` and the like: the reader left; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
