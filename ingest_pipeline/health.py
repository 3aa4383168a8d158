"""What the ledger says is wrong right now: files stuck in a non-final status, failed files.

Read by the per-feed asset check and the bronze asset's metadata (defs/ingestion/assets.py) and
by `ingest-pipeline status`. Plain data; the Dagster metadata is built from it by `metadata()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from ingest_pipeline import ledger, warehouse
from ingest_pipeline.ledger import LedgerFile
from ingest_pipeline.pipeline import now
from ingest_pipeline.recovery import is_stuck
from ingest_pipeline.settings import get_settings

SHOWN = 50  # files listed in metadata and reports


@dataclass
class LedgerHealth:
    stuck_after: timedelta
    active: list[LedgerFile] = field(default_factory=list)
    stuck: list[LedgerFile] = field(default_factory=list)
    failed: list[LedgerFile] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # status -> files

    @property
    def summary(self) -> str:
        minutes = self.stuck_after.total_seconds() / 60
        if self.stuck:
            return (
                f"{len(self.stuck)} file(s) not final for more than {minutes:g} min "
                f"({len(self.active)} not final in all; {len(self.failed)} failed shown)"
            )
        return (
            f"every file reaches a final status ({len(self.active)} in progress, none for more "
            f"than {minutes:g} min; {len(self.failed)} failed shown)"
        )

    def metadata(self) -> dict[str, Any]:
        import dagster as dg

        return {
            "files_not_final": dg.MetadataValue.int(len(self.active)),
            "files_stuck": dg.MetadataValue.int(len(self.stuck)),
            "stuck_files": dg.MetadataValue.md(stuck_markdown(self.stuck)),
            "failed_files_recent": dg.MetadataValue.md(failed_markdown(self.failed)),
            "files_by_status": dg.MetadataValue.json(self.counts),
        }


def _cell(text: str | None, limit: int = 300) -> str:
    return (text or "").replace("|", "/").replace("\n", " ")[:limit]


def stuck_markdown(files: list[LedgerFile]) -> str:
    if not files:
        return "No stuck files."
    lines = [
        "| file | status | since | attempts | run | last error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in files[:SHOWN]:
        since = f"{f.since:%Y-%m-%d %H:%M:%S}" if f.since else ""
        lines.append(
            f"| {f.source_uri} | {f.status} | {since} | {f.attempts} | {f.run_id or ''} | "
            f"{_cell(f.error)} |"
        )
    if len(files) > SHOWN:
        lines.append(f"\n… and {len(files) - SHOWN} more (`ingest-pipeline status`).")
    return "\n".join(lines)


def failed_markdown(files: list[LedgerFile]) -> str:
    if not files:
        return "No failed files."
    lines = ["| file | finished | error |", "| --- | --- | --- |"]
    for f in files[:SHOWN]:
        finished = f"{f.finished_at:%Y-%m-%d %H:%M:%S}" if f.finished_at else ""
        lines.append(f"| {f.source_uri} | {finished} | {_cell(f.error, 500)} |")
    return "\n".join(lines)


def ledger_health(
    warehouse_path: str | Path, feed: str | None = None, *, stuck_after: timedelta | None = None
) -> LedgerHealth:
    stuck_after = stuck_after or timedelta(seconds=get_settings().stuck_after_seconds)
    health = LedgerHealth(stuck_after=stuck_after)
    with warehouse.connect(warehouse_path) as con:
        health.active = ledger.active_files(con, feed)
        health.failed = ledger.failed_files(con, feed, limit=SHOWN)
        for (f, status), n in ledger.status_counts(con).items():
            if feed is None or f == feed:
                health.counts[status] = health.counts.get(status, 0) + n
    at = now()
    health.stuck = [f for f in health.active if is_stuck(f, at, stuck_after)]
    return health


def ledger_health_metadata(warehouse_path: str | Path, feed: str) -> dict[str, Any]:
    return ledger_health(warehouse_path, feed).metadata()
