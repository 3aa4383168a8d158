"""Landing -> bronze -> warehouse for any feed: the one path every feed shares.

Two steps, each safe to repeat:
  1. `ingest_to_bronze`: the run takes its files in the ledger (`claim`), then, pass by pass,
     marks them `parsing`, downloads each (streamed to a temp file), parses, validates and
     writes its bronze Parquet to the lake, and records every file of the pass in one ledger
     transaction: `parsed` with its rejected rows, or `failed` / `skipped` / `vanished` /
     `retrying` with the reason. An exception while one file is handled ends that file only
     (failures.py says whether trying again helps); only the run's machinery failing (disk
     full, lake or warehouse unreachable) fails the run.
  2. `merge_pending`: merge every `parsed` file of a feed into the warehouse and mark it
     `ingested`, all in one transaction. A batch that cannot merge is merged file by file, so
     one file that cannot merge fails alone.
A run killed between or inside the steps leaves `queued`, `parsing` or `parsed` files behind;
recovery.py (the sensor's reconciliation) takes them again, and the next merge takes `parsed`
files.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ingest_pipeline import ledger, warehouse
from ingest_pipeline.bronze import FileReport, SourceFile, process_file
from ingest_pipeline.config import FeedPolicy
from ingest_pipeline.failures import FileFailure, classify, kind_of
from ingest_pipeline.feeds import FeedSpec
from ingest_pipeline.landing import FileVanished, LandedObject, LandingZone, LocalLanding
from ingest_pipeline.merge import BronzeFile, merge_bronze

MERGE_MEMORY_LIMIT = "1GB"
# Files recorded in the ledger together (one transaction); a run that dies while reading
# a pass makes every file of that pass a suspect, read alone next time (recovery.py).
PASS_FILES = 50

Log = Callable[[str], None]


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a file is read before it fails for good, and how long to wait in between."""

    max_attempts: int = 4
    delay_seconds: float = 30.0
    max_delay_seconds: float = 1800.0

    def delay(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th attempt failed: doubling from `delay_seconds`."""
        seconds = self.delay_seconds * 2 ** max(attempts - 1, 0)
        return timedelta(seconds=min(seconds, self.max_delay_seconds))


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


ResultStatus = Literal["parsed", "failed", "skipped", "retrying", "vanished"]


@dataclass
class FileResult:
    """What one attempt at one file came to."""

    source: SourceFile
    status: ResultStatus
    started_at: datetime
    report: FileReport | None = None  # the reader went through the file
    error: str | None = None
    retry_at: datetime | None = None
    bronze_uri: str | None = None


@dataclass
class BronzeOutcome:
    reports: list[FileReport] = field(default_factory=list)
    skipped_already_ingested: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    # Files whose attempt met a transient error: uri -> (error, when they are taken again).
    retrying: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    # Files that could not be downloaded or read at all (no report): uri -> error.
    unreadable: dict[str, str] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.reports) + (
            len(self.unreadable) if status == "failed" else 0
        )


class IngestAborted(Exception):
    """A file could not load completely under `on_error: abort`; the run must fail."""

    def __init__(self, message: str, outcome: BronzeOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


def _passes(sources: Sequence[SourceFile], isolate: bool) -> Iterator[list[SourceFile]]:
    size = 1 if isolate else PASS_FILES
    for i in range(0, len(sources), size):
        yield list(sources[i : i + size])


def _failure_result(
    source: SourceFile,
    failure: FileFailure,
    attempts: int,
    retry: RetryPolicy,
    started: datetime,
) -> FileResult:
    if failure.kind == "transient" and attempts < retry.max_attempts:
        at = now()
        retry_at = at + retry.delay(attempts)
        return FileResult(
            source,
            "retrying",
            started,
            error=f"{failure.message}; attempt {attempts} of {retry.max_attempts}, next at "
            f"{retry_at:%Y-%m-%d %H:%M:%S} UTC",
            retry_at=retry_at,
        )
    if failure.kind == "transient":
        return FileResult(
            source,
            "failed",
            started,
            error=f"{failure.message}; gave up after {attempts} attempts: once the cause is "
            "fixed, re-ingest the file (run config `keys`, or `ingest-pipeline ingest --force`)",
        )
    return FileResult(source, "failed", started, error=failure.message)


class _Bronze:
    """One run's bronze step: its connections' settings and the files' results."""

    def __init__(
        self,
        feed: FeedSpec,
        landing: LandingZone,
        lake: LandingZone,
        tmp_dir: Path,
        policy: FeedPolicy,
        retry: RetryPolicy,
    ) -> None:
        self.feed, self.landing, self.lake = feed, landing, lake
        self.tmp_dir, self.policy, self.retry = tmp_dir, policy, retry

    def handle(self, obj: LandedObject, source: SourceFile, attempts: int) -> FileResult:
        """Download, read and write bronze for one file. Exceptions of the file's own handling
        become its result; the run's machinery failing (failures.kind_of) is raised."""
        started = now()
        local = self.tmp_dir / "download" / source.file_id / Path(obj.key).name
        local.parent.mkdir(parents=True, exist_ok=True)
        work = self.tmp_dir / source.file_id
        try:
            try:
                self.landing.download(obj, local)
            except FileVanished as exc:
                return FileResult(
                    source,
                    "vanished",
                    started,
                    error=f"the file was deleted or replaced after it was listed: {exc}",
                )
            except Exception as exc:  # noqa: BLE001 - classified: the file fails alone
                failure = classify(exc, "download", source.uri)
                if failure.kind == "machinery":
                    raise
                return _failure_result(source, failure, attempts, self.retry, started)
            try:
                report = process_file(local, source, self.feed, work, policy=self.policy)
            except Exception as exc:  # noqa: BLE001 - the reader should not raise; if it does,
                # the file fails alone with what happened
                failure = classify(exc, "read", source.uri)
                if failure.kind == "machinery":
                    raise
                return _failure_result(source, failure, attempts, self.retry, started)
            finally:
                local.unlink(missing_ok=True)
            result = FileResult(source, report.status, started, report=report, error=report.error)
            # Writing to the lake is the run's machinery: a failure there fails the run.
            if report.bronze_path is not None:
                result.bronze_uri = bronze_key(self.feed, source)
                self.lake.put(result.bronze_uri, report.bronze_path)
            if report.quarantine_path is not None:
                # already in the lake's quarantine layout (line, raw, reason, source, etag, feed)
                self.lake.put(quarantine_key(self.feed, source), report.quarantine_path)
            return result
        finally:
            shutil.rmtree(local.parent, ignore_errors=True)

    def record(
        self,
        con: duckdb.DuckDBPyConnection,
        results: Sequence[FileResult],
        run_id: str | None,
    ) -> None:
        """Every result of a pass, in the caller's transaction (then the work files go)."""
        finished = now()
        for r in results:
            if r.report is not None:
                ledger.record_parsed(
                    con,
                    r.report,
                    bronze_uri=r.bronze_uri,
                    run_id=run_id,
                    started_at=r.started_at,
                    finished_at=finished,
                )
            else:
                assert r.status in ("failed", "retrying", "vanished"), r.status
                ledger.record_failure(
                    con,
                    r.source,
                    self.feed.name,
                    r.status,  # type: ignore[arg-type]
                    r.error or "",
                    run_id=run_id,
                    at=finished,
                    retry_at=r.retry_at,
                )


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
    retry: RetryPolicy | None = None,
    isolate: bool = False,
    log: Log | None = None,
) -> BronzeOutcome:
    """Step 1 for a batch of landed files of one feed.

    `isolate`: each file in a pass of its own (files suspected of killing an earlier run).
    Under `on_error: abort` the first file that cannot load completely is recorded (ledger and
    quarantine) and then `IngestAborted` is raised: the run fails with the reason.
    """
    policy = policy or FeedPolicy()
    retry = retry or RetryPolicy()
    outcome = BronzeOutcome()
    by_source = {}
    for obj in objects:
        by_source[source_of(obj, tenant_id)] = obj
    with warehouse.connect(warehouse_path) as con, warehouse.transaction(con):
        to_do, done = ledger.claim(
            con, list(by_source), feed.name, run_id=run_id, force=force, at=now()
        )
    outcome.skipped_already_ingested = [s.uri for s in done]
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        bronze = _Bronze(feed, landing, lake, Path(tmp), policy, retry)
        for files in _passes(to_do, isolate):
            with warehouse.connect(warehouse_path) as con, warehouse.transaction(con):
                attempts = ledger.mark_parsing(con, files, run_id=run_id, at=now())
            try:
                results = [bronze.handle(by_source[s], s, attempts[s.uri, s.etag]) for s in files]
            except BaseException:
                # The run's machinery failed, not these files: they go back to `queued` (when
                # the warehouse can still be reached) and the run fails.
                _release(warehouse_path, files)
                raise
            with warehouse.connect(warehouse_path) as con, warehouse.transaction(con):
                bronze.record(con, results, run_id)
            for r in results:
                if r.report is not None:
                    shutil.rmtree(Path(tmp) / r.source.file_id, ignore_errors=True)
                    outcome.reports.append(r.report)
                elif r.status == "vanished":
                    outcome.vanished.append(r.source.uri)
                elif r.status == "retrying":
                    outcome.retrying[r.source.uri] = (r.error or "", r.retry_at or now())
                else:
                    outcome.unreadable[r.source.uri] = r.error or ""
                if log and r.status in ("failed", "retrying"):
                    log(f"{r.source.uri}: {r.status}: {r.error}")
            if policy.on_error == "abort":
                refused = next((r for r in results if r.status in ("failed", "skipped")), None)
                if refused is not None:
                    raise IngestAborted(f"{refused.source.uri}: {refused.error}", outcome)
    return outcome


def _release(warehouse_path: str | Path, files: Sequence[SourceFile]) -> None:
    """Best effort: files a failed run was reading go back to `queued` (not suspects)."""
    try:
        with warehouse.connect(warehouse_path, wait_seconds=30) as con:
            ledger.release(con, files)
    except Exception:  # noqa: BLE001 - the original failure is what the run reports
        return


@dataclass
class MergeOutcome:
    files: list[ledger.PendingFile] = field(default_factory=list)
    rows_loaded: int = 0
    rows_duplicate: int = 0
    # Files that could not be merged (uri -> why): failed for good, or read again when their
    # bronze file is missing.
    failed: dict[str, str] = field(default_factory=dict)
    reread: dict[str, str] = field(default_factory=dict)


def _local_bronze(lake: LandingZone, key: str, tmp_dir: Path) -> Path:
    """A local path of the bronze file at `key`; FileVanished if it is missing or unreadable
    (then its source file is read again)."""
    if isinstance(lake, LocalLanding):
        path = lake.root / key
        if not path.is_file():
            raise FileVanished(key, "bronze file missing from the lake")
    else:
        path = tmp_dir / key.replace("/", "_")
        lake.download(key, path)
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        raise FileVanished(key, f"bronze file unreadable ({exc})") from exc
    return path


def _merge_files(
    con: duckdb.DuckDBPyConnection,
    feed: FeedSpec,
    pending: Sequence[ledger.PendingFile],
    paths: dict[tuple[str, str], Path],
    outcome: MergeOutcome,
) -> None:
    """Merge `pending` in one transaction and flip them to ingested (raises on failure, after
    rolling back)."""
    bronze_files = [
        BronzeFile(p.source_uri, p.etag, p.landed_at.isoformat(), paths[p.source_uri, p.etag])
        for p in pending
    ]
    with warehouse.transaction(con):
        loaded = merge_bronze(con, feed, bronze_files)
        at = now()
        for p in pending:
            valid = p.rows_read - p.rows_rejected
            # Feeds without row dedupe load every valid row (attributes fold in).
            n = loaded.get((p.source_uri, p.etag), 0) if feed.dedupe_key else valid
            ledger.record_merged(con, p, n, at)
            outcome.rows_loaded += n
            outcome.rows_duplicate += valid - n
    outcome.files.extend(pending)


def merge_pending(
    feed: FeedSpec, *, lake: LandingZone, warehouse_path: str | Path, limit: int | None = None
) -> MergeOutcome:
    """Step 2: merge every parsed file of `feed` into the warehouse in one transaction.

    A parsed file whose bronze file is gone from the lake goes back to `retrying` (it is read
    again). When the batch cannot merge because of its rows, each file is merged on its own and
    a file that cannot merge is `failed` with the reason. An error of the warehouse itself (I/O,
    memory) is raised: the run fails, the files stay `parsed` for the next merge.
    """
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
        paths: dict[tuple[str, str], Path] = {}
        present, missing = [], []
        for p in pending:
            try:
                paths[p.source_uri, p.etag] = _local_bronze(lake, p.bronze_uri, Path(tmp))
                present.append(p)
            except FileVanished as exc:
                error = (
                    f"its bronze file {p.bronze_uri} is missing from the lake ({exc.reason}): "
                    "the file is read again"
                )
                missing.append((p, error))
                outcome.reread[p.source_uri] = error
        if missing:
            with warehouse.transaction(con):
                for p, error in missing:
                    ledger.reread(con, p, error=error, at=now())
        if not present:
            return outcome
        # DuckDB refusing the rows (a conversion, a constraint) is the files' doing; anything
        # else (a bug, the machine) fails the run and leaves the files `parsed`.
        try:
            _merge_files(con, feed, present, paths, outcome)
            return outcome
        except duckdb.Error as exc:
            if _warehouse_trouble(exc):
                raise
        # One file that cannot merge must not hold back the others: merge them one by one.
        for p in present:
            try:
                _merge_files(con, feed, [p], paths, outcome)
            except duckdb.Error as exc:
                if _warehouse_trouble(exc):
                    raise
                _fail_merge(con, p, paths[p.source_uri, p.etag], exc, outcome)
    return outcome


def _warehouse_trouble(exc: duckdb.Error) -> bool:
    """Errors of the warehouse or the machine (I/O, memory, a lock, disk full), not of the rows
    being merged."""
    return kind_of(exc) == "machinery" or isinstance(
        exc,
        duckdb.IOException
        | duckdb.OutOfMemoryException
        | duckdb.FatalException
        | duckdb.InternalException
        | duckdb.ConnectionException
        | duckdb.TransactionException,
    )


def _fail_merge(
    con: duckdb.DuckDBPyConnection,
    pending: ledger.PendingFile,
    bronze_path: Path,
    exc: duckdb.Error,
    outcome: MergeOutcome,
) -> None:
    error = (
        f"merging into the warehouse failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
        " (the file's rows do not fit the warehouse tables; check them, then re-ingest the file)"
    )
    with warehouse.transaction(con):
        ledger.fail_pending(con, pending, bronze_path, error=error, at=now())
    outcome.failed[pending.source_uri] = error
