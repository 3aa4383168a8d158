"""Landing -> bronze -> warehouse for any feed: the one path every feed shares.

Two steps, each safe to repeat:
  1. `ingest_to_bronze`: download each file (streamed to a temp file), parse, validate, dedupe
     inside the file, write its bronze Parquet to the lake, and record it in the ledger as
     `parsed` with its rejected rows.
  2. `merge_pending`: merge every `parsed` file of a feed into the warehouse and mark it
     `ingested`, all in one transaction.
A run killed between or inside the steps leaves `parsed` files behind; the next merge takes them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ingest_pipeline import ledger, warehouse
from ingest_pipeline.bronze import FileReport, SourceFile, process_file
from ingest_pipeline.config import FeedPolicy
from ingest_pipeline.feeds import FeedSpec
from ingest_pipeline.landing import FileVanished, LandedObject, LandingZone, LocalLanding
from ingest_pipeline.merge import BronzeFile, merge_bronze

MERGE_MEMORY_LIMIT = "1GB"


def now() -> datetime:
    return datetime.now(UTC)


def source_of(obj: LandedObject, tenant_id: str) -> SourceFile:
    return SourceFile(
        uri=obj.uri,
        etag=obj.etag,
        key=obj.key,
        landed_at=obj.last_modified,
        size=obj.size,
        tenant_id=tenant_id,
    )


def bronze_key(feed: FeedSpec, source: SourceFile) -> str:
    return f"bronze/{feed.name}/landing_date={source.landing_date}/{source.file_id}.parquet"


def quarantine_key(feed: FeedSpec, source: SourceFile) -> str:
    return f"quarantine/{feed.name}/landing_date={source.landing_date}/{source.file_id}.parquet"


@dataclass
class BronzeOutcome:
    reports: list[FileReport] = field(default_factory=list)
    skipped_already_ingested: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)


def ingest_to_bronze(
    objects: Iterable[LandedObject],
    feed: FeedSpec,
    *,
    landing: LandingZone,
    lake: LandingZone,
    warehouse_path: str | Path,
    tenant_id: str,
    run_id: str | None = None,
    force: bool = False,
    policy: FeedPolicy | None = None,
) -> BronzeOutcome:
    """Step 1 for a batch of landed files of one feed.

    Under `on_error: abort` the first file that cannot load completely is recorded (ledger and
    quarantine) and then `IngestAborted` is raised: the run fails with the reason.
    """
    policy = policy or FeedPolicy()
    outcome = BronzeOutcome()
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        tmp_dir = Path(tmp)
        for obj in objects:
            source = source_of(obj, tenant_id)
            started = now()
            if not force:
                with warehouse.connect(warehouse_path) as con:
                    if ledger.is_ingested(con, source):
                        outcome.skipped_already_ingested.append(source.uri)
                        continue
            local = tmp_dir / "download" / Path(obj.key).name
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                landing.download(obj, local)
            except FileVanished as exc:
                outcome.vanished.append(source.uri)
                with warehouse.connect(warehouse_path) as con:
                    ledger.record_status(
                        con,
                        source,
                        feed.name,
                        "vanished",
                        f"the file was deleted or replaced after it was listed: {exc}",
                        run_id=run_id,
                        at=now(),
                    )
                continue
            work = tmp_dir / source.file_id
            report = process_file(local, source, feed, work, policy=policy)
            local.unlink(missing_ok=True)
            bronze_uri = None
            if report.bronze_path is not None:
                bronze_uri = bronze_key(feed, source)
                lake.put(bronze_uri, report.bronze_path)
            if report.quarantine_path is not None:
                # already in the lake's quarantine layout (line, raw, reason, source, etag, feed)
                lake.put(quarantine_key(feed, source), report.quarantine_path)
            with warehouse.connect(warehouse_path) as con:
                ledger.record_parsed(
                    con,
                    report,
                    bronze_uri=bronze_uri,
                    run_id=run_id,
                    started_at=started,
                    finished_at=now(),
                )
            shutil.rmtree(work, ignore_errors=True)
            outcome.reports.append(report)
            if policy.on_error == "abort" and report.status != "parsed":
                raise IngestAborted(f"{source.uri}: {report.error}", outcome)
    return outcome


class IngestAborted(Exception):
    """A file could not load completely under `on_error: abort`; the run must fail."""

    def __init__(self, message: str, outcome: BronzeOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class MergeOutcome:
    files: list[ledger.PendingFile] = field(default_factory=list)
    rows_loaded: int = 0
    rows_duplicate: int = 0


def _local_bronze(lake: LandingZone, key: str, tmp_dir: Path) -> Path:
    if isinstance(lake, LocalLanding):
        return lake.root / key
    dest = tmp_dir / key.replace("/", "_")
    lake.download(key, dest)
    return dest


def merge_pending(
    feed: FeedSpec, *, lake: LandingZone, warehouse_path: str | Path, limit: int | None = None
) -> MergeOutcome:
    """Step 2: merge every parsed file of `feed` into the warehouse in one transaction."""
    outcome = MergeOutcome()
    with (
        tempfile.TemporaryDirectory(prefix="merge-") as tmp,
        warehouse.connect(warehouse_path) as con,
    ):
        pending: Sequence[ledger.PendingFile] = ledger.pending_files(con, feed.name)
        if limit is not None:
            pending = pending[:limit]
        if not pending:
            return outcome
        # Bounded memory whatever the batch: DuckDB spills to the temp folder beyond the limit.
        con.execute(f"SET temp_directory = '{tmp}'")
        con.execute(f"SET memory_limit = '{MERGE_MEMORY_LIMIT}'")
        bronze_files = [
            BronzeFile(
                p.source_uri,
                p.etag,
                p.landed_at.isoformat(),
                _local_bronze(lake, p.bronze_uri, Path(tmp)),
            )
            for p in pending
        ]
        con.execute("BEGIN TRANSACTION")
        try:
            loaded = merge_bronze(con, feed, bronze_files)
            at = now()
            for p in pending:
                valid = p.rows_read - p.rows_rejected
                # Feeds without row dedupe load every valid row (attributes fold in).
                n = loaded.get((p.source_uri, p.etag), 0) if feed.dedupe_key else valid
                ledger.record_merged(con, p, n, at)
                outcome.rows_loaded += n
                outcome.rows_duplicate += p.rows_read - p.rows_rejected - n
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        outcome.files = list(pending)
    return outcome
