"""`ingest-pipeline`: what Dagster's own CLI does not cover.

ingest-pipeline samples [--landing URL]     write the sample files into the landing zone
ingest-pipeline ingest [--feed F] [--force] ingest every landed file now, without Dagster
"""

from __future__ import annotations

import argparse
import sys

from ingest_pipeline import pipeline
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import landing_from_url
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
