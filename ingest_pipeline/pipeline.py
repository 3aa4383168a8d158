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
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow.parquet as pq

from ingest_pipeline import ledger, warehouse
from ingest_pipeline.arrow import pa
from ingest_pipeline.bronze import (
    FileReport,
    SourceFile,
    bulk_readable,
    new_connection,
    process_file,
    process_pass,
)
from ingest_pipeline.config import FeedPolicy
from ingest_pipeline.discovery import partition_key_for
from ingest_pipeline.failures import FileFailure, classify, kind_of
from ingest_pipeline.feeds import FeedSpec, key_problem
from ingest_pipeline.identity.resolve import DEFAULT_MAX_CLUSTER_SIZE, IdentityUpdate
from ingest_pipeline.landing import FileVanished, LandedObject, LandingZone, LocalLanding
from ingest_pipeline.merge import BronzeFile, merge_bronze

MERGE_MEMORY_LIMIT = "512MB"
# Small files read and recorded together (one DuckDB query, one ledger transaction); a run
# that dies while reading a pass makes every file of it a suspect, read alone next time
# (recovery.py).
PASS_FILES = 1000
PASS_BYTES = 64 * 1024 * 1024
DOWNLOADS = 16  # files of a pass downloaded at once

Log = Callable[[str], None]


class DecodeError(Exception):
    """A channel cannot decode a file it delivered (a configured import's PGP decryption): the
    file fails with this reason, a person's to act on."""


# A channel's decoding of a downloaded file: (local copy, landing key) -> (the file to read,
# the name that says its format), e.g. `x.csv.gz.pgp` decrypted to `x.csv.gz`.
Decode = Callable[[Path, str], tuple[Path, str]]


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
    """The files in passes: large files (or every file, when `isolate`) alone, small NDJSON
    files together, up to PASS_FILES of them or PASS_BYTES in all."""
    group: list[SourceFile] = []
    size = 0
    for source in sources:
        if isolate or not bulk_readable(source):
            yield [source]
            continue
        if group and (len(group) >= PASS_FILES or size + source.size > PASS_BYTES):
            yield group
            group, size = [], 0
        group.append(source)
        size += source.size
    if group:
        yield group


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
    """One run's bronze step: one DuckDB connection for all its passes, and the files' results.

    A pass: its files downloaded concurrently (bounded pool), small NDJSON files read together
    in one stream (bronze.process_pass), any other file alone (bronze.process_file), the
    outputs put in the lake. Exceptions of a file's own handling become its result (failures.py);
    a pass read together that raises is read again file by file, so a file fails alone; the
    run's machinery failing is raised.
    """

    def __init__(
        self,
        feed: FeedSpec,
        landing: LandingZone,
        lake: LandingZone,
        tmp_dir: Path,
        policy: FeedPolicy,
        retry: RetryPolicy,
        decode: Decode | None = None,
    ) -> None:
        self.feed, self.landing, self.lake = feed, landing, lake
        self.policy, self.retry, self.decode = policy, retry, decode
        self.names: dict[SourceFile, str] = {}  # decoded files: the name saying their format
        self.downloads, self.work = tmp_dir / "download", tmp_dir / "work"
        spill = tmp_dir / "duckdb"
        spill.mkdir()
        self.con = new_connection(spill)

    def close(self) -> None:
        self.con.close()

    def forget_work(self) -> None:
        """The pass is recorded: its local outputs (in the lake now) can go."""
        shutil.rmtree(self.work, ignore_errors=True)

    def _download(
        self, obj: LandedObject, source: SourceFile, attempts: int
    ) -> tuple[Path | None, FileResult | None]:
        started = now()
        problem = key_problem(self.feed, obj.key)
        if problem is not None:  # whose file it is is unknown: it is not read at all
            return None, FileResult(source, "failed", started, error=problem)
        # One folder for the run's downloads (a folder per file cost a mkdir and an rmdir each);
        # the name keeps the key's extensions, which say the format.
        local = self.downloads / f"{source.file_id}-{Path(obj.key).name}"
        try:
            self.landing.download(obj, local)
        except FileVanished as exc:
            error = f"the file was deleted or replaced after it was listed: {exc}"
            return None, FileResult(source, "vanished", started, error=error)
        except Exception as exc:  # noqa: BLE001 - classified: the file fails alone
            failure = classify(exc, "download", source.uri)
            if failure.kind == "machinery":
                raise
            return None, _failure_result(source, failure, attempts, self.retry, started)
        if self.decode is not None:
            try:
                decoded, self.names[source] = self.decode(local, obj.key)
            except Exception as exc:  # noqa: BLE001 - the file fails alone
                local.unlink(missing_ok=True)
                if isinstance(exc, DecodeError):
                    return None, FileResult(source, "failed", started, error=str(exc))
                failure = classify(exc, "read", source.uri)
                if failure.kind == "machinery":
                    raise
                return None, _failure_result(source, failure, attempts, self.retry, started)
            if decoded != local:
                local.unlink(missing_ok=True)  # the encoded copy is not needed any more
            return decoded, None
        return local, None

    def _read_alone(self, local: Path, source: SourceFile, attempts: int) -> FileResult:
        started = now()
        try:
            report = process_file(
                local,
                source,
                self.feed,
                self.work / source.file_id,
                self.policy,
                self.con,
                name=self.names.get(source),
            )
        except Exception as exc:  # noqa: BLE001 - the reader should not raise; if it does,
            # the file fails alone with what happened
            failure = classify(exc, "read", source.uri)
            if failure.kind == "machinery":
                raise
            return _failure_result(source, failure, attempts, self.retry, started)
        return FileResult(source, report.status, started, report=report, error=report.error)

    def _read_together(
        self, items: list[tuple[Path, SourceFile]], attempts: dict[tuple[str, str], int]
    ) -> list[FileResult]:
        started = now()
        try:
            reports = process_pass(items, self.feed, self.work / "pass", self.policy, self.con)
        except Exception as exc:  # noqa: BLE001 - read them one by one: a file fails alone
            if kind_of(exc) == "machinery":
                raise
            return [self._read_alone(p, s, attempts[s.uri, s.etag]) for p, s in items]
        return [FileResult(r.source, r.status, started, report=r, error=r.error) for r in reports]

    def handle_pass(
        self,
        files: Sequence[tuple[LandedObject, SourceFile]],
        attempts: dict[tuple[str, str], int],
    ) -> list[FileResult]:
        """Download, read and write bronze for the files of one pass (results in input order)."""
        self.downloads.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=DOWNLOADS, thread_name_prefix="download") as pool:
            fetched = list(
                pool.map(lambda f: self._download(f[0], f[1], attempts[f[1].uri, f[1].etag]), files)
            )
        results: dict[SourceFile, FileResult] = {}
        readable: list[tuple[Path, SourceFile]] = []
        for (_, source), (local, failed) in zip(files, fetched, strict=True):
            if failed is not None:
                results[source] = failed
            else:
                assert local is not None
                readable.append((local, source))
        if len(readable) > 1 and self.decode is None:
            read = self._read_together(readable, attempts)
        else:
            read = [self._read_alone(p, s, attempts[s.uri, s.etag]) for p, s in readable]
        for r in read:
            results[r.source] = r
        shutil.rmtree(self.downloads, ignore_errors=True)
        self._publish([r for r in read if r.report is not None])
        return [results[s] for _, s in files]

    def _publish(self, results: list[FileResult]) -> None:
        """Put the bronze and quarantine files in the lake (once per file, shared by the files
        of a pass). Writing to the lake is the run's machinery: a failure there fails the run."""
        uris: dict[Path, str] = {}
        for r in results:
            assert r.report is not None
            report = r.report
            if report.bronze_path is not None:
                if report.bronze_path not in uris:
                    uris[report.bronze_path] = self._lake_key("bronze", report, r.source)
                    self.lake.put(uris[report.bronze_path], report.bronze_path)
                r.bronze_uri = uris[report.bronze_path]
            if report.quarantine_path is not None and report.quarantine_path not in uris:
                # already in the lake's quarantine layout (line, raw, reason, source, etag, feed)
                uris[report.quarantine_path] = self._lake_key("quarantine", report, r.source)
                self.lake.put(uris[report.quarantine_path], report.quarantine_path)

    def _lake_key(self, layer: str, report: FileReport, source: SourceFile) -> str:
        path = report.bronze_path if layer == "bronze" else report.quarantine_path
        assert path is not None
        if path.name.startswith("pass-"):  # a pass's file: named after the pass
            return f"{layer}/{self.feed.name}/landing_date={source.landing_date}/{path.name}"
        if layer == "bronze":
            return bronze_key(self.feed, source)
        return quarantine_key(self.feed, source)

    def record(
        self,
        con: duckdb.DuckDBPyConnection,
        results: Sequence[FileResult],
        run_id: str | None,
    ) -> None:
        """Every result of a pass, in the caller's transaction."""
        outcomes = []
        for r in results:
            if r.report is not None:
                outcome = ledger.FileOutcome.of_report(
                    r.report, bronze_uri=r.bronze_uri, started_at=r.started_at
                )
            else:
                outcome = ledger.FileOutcome(
                    source=r.source,
                    status=r.status,
                    started_at=r.started_at,
                    error=r.error,
                    retry_at=r.retry_at,
                )
            outcomes.append(outcome)
        ledger.record_outcomes(con, outcomes, self.feed.name, run_id=run_id, finished_at=now())


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
    decode: Decode | None = None,
    own_landing: bool = False,
) -> BronzeOutcome:
    """Step 1 for a batch of landed files of one feed.

    `isolate`: each file in a pass of its own (files suspected of killing an earlier run).
    `own_landing`: `landing` is tenant `tenant_id`'s own, so every file is that tenant's
    (SourceFile.of_feed).
    Under `on_error: abort` the first file that cannot load completely is recorded (ledger and
    quarantine) and then `IngestAborted` is raised: the run fails with the reason.
    """
    policy = policy or FeedPolicy()
    retry = retry or RetryPolicy()
    outcome = BronzeOutcome()
    by_source = {}
    for obj in objects:
        by_source[SourceFile.of_feed(obj, feed, tenant_id, own_landing=own_landing)] = obj
    with warehouse.connect(warehouse_path) as con, warehouse.transaction(con):
        to_do, done = ledger.claim(
            con, list(by_source), feed.name, run_id=run_id, force=force, at=now()
        )
    outcome.skipped_already_ingested = [s.uri for s in done]
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        bronze = _Bronze(feed, landing, lake, Path(tmp), policy, retry, decode)
        try:
            _bronze_passes(bronze, to_do, by_source, outcome, warehouse_path, run_id, isolate, log)
        finally:
            bronze.close()
    return outcome


def _bronze_passes(
    bronze: _Bronze,
    to_do: Sequence[SourceFile],
    by_source: dict[SourceFile, LandedObject],
    outcome: BronzeOutcome,
    warehouse_path: str | Path,
    run_id: str | None,
    isolate: bool,
    log: Log | None,
) -> None:
    for files in _passes(to_do, isolate):
        with warehouse.connect(warehouse_path) as con, warehouse.transaction(con):
            attempts = ledger.mark_parsing(con, files, run_id=run_id, at=now())
        try:
            results = bronze.handle_pass([(by_source[s], s) for s in files], attempts)
        except BaseException:
            # The run's machinery failed, not these files: they go back to `queued` (when the
            # warehouse can still be reached) and the run fails.
            _release(warehouse_path, files)
            raise
        with warehouse.connect(warehouse_path) as con, warehouse.transaction(con):
            bronze.record(con, results, run_id)
        bronze.forget_work()
        for r in results:
            if r.report is not None:
                outcome.reports.append(r.report)
            elif r.status == "vanished":
                outcome.vanished.append(r.source.uri)
            elif r.status == "retrying":
                outcome.retrying[r.source.uri] = (r.error or "", r.retry_at or now())
            else:
                outcome.unreadable[r.source.uri] = r.error or ""
            if log and r.status in ("failed", "retrying"):
                log(f"{r.source.uri}: {r.status}: {r.error}")
        if bronze.policy.on_error == "abort":
            refused = next((r for r in results if r.status in ("failed", "skipped")), None)
            if refused is not None:
                raise IngestAborted(f"{refused.source.uri}: {refused.error}", outcome)


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
    # What the merged batches did to the identity graph (feeds naming identities).
    identity: IdentityUpdate | None = None

    def add_identity(self, update: IdentityUpdate | None) -> None:
        if update is None:
            return
        if self.identity is None:
            self.identity = IdentityUpdate()
        self.identity.add(update)


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
    max_cluster_size: int,
) -> None:
    """Merge `pending` in one transaction and flip them to ingested (raises on failure, after
    rolling back)."""
    bronze_files = [
        BronzeFile(p.source_uri, p.etag, p.landed_at.isoformat(), paths[p.source_uri, p.etag])
        for p in pending
    ]
    with warehouse.transaction(con):
        result = merge_bronze(con, feed, bronze_files, max_cluster_size)
        merged = [(p, result.loaded.get((p.source_uri, p.etag), 0)) for p in pending]
        ledger.record_merged_many(con, merged, now())
    outcome.add_identity(result.identity)
    for p, n in merged:
        outcome.rows_loaded += n
        outcome.rows_duplicate += p.rows_read - p.rows_rejected - n
    outcome.files.extend(pending)


def merge_pending(
    feed: FeedSpec,
    *,
    lake: LandingZone,
    warehouse_path: str | Path,
    limit: int | None = None,
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE,
    partitions: Collection[str] | None = None,
) -> MergeOutcome:
    """Step 2: merge every parsed file of `feed` into the warehouse in one transaction.

    partitions: only the files of these landing-date partitions (discovery.partition_key_for),
    so that a partition's materialization reports its own files; None: every parsed file.
    When anything was merged (or failed), the read snapshot is published (warehouse.py).

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
        if partitions is not None:
            wanted = set(partitions)
            pending = [p for p in pending if partition_key_for(p.landed_at) in wanted]
        if limit is not None:
            pending = pending[:limit]
        if not pending:
            return outcome
        try:
            _merge_pending_files(con, feed, pending, lake, Path(tmp), outcome, max_cluster_size)
        finally:
            if outcome.files or outcome.failed or outcome.reread:
                warehouse.publish_after_commit(con, warehouse_path)
    return outcome


def _merge_pending_files(
    con: duckdb.DuckDBPyConnection,
    feed: FeedSpec,
    pending: Sequence[ledger.PendingFile],
    lake: LandingZone,
    tmp: Path,
    outcome: MergeOutcome,
    max_cluster_size: int,
) -> None:
    # Bounded memory whatever the batch: DuckDB spills to the temp folder beyond the limit.
    con.execute(f"SET temp_directory = '{tmp}'")
    con.execute(f"SET memory_limit = '{MERGE_MEMORY_LIMIT}'")
    paths: dict[tuple[str, str], Path] = {}
    present, missing = [], []
    local: dict[str, Path | FileVanished] = {}  # bronze uri -> path (a pass's is shared)
    for p in pending:
        if p.bronze_uri not in local:
            try:
                local[p.bronze_uri] = _local_bronze(lake, p.bronze_uri, tmp)
            except FileVanished as exc:
                local[p.bronze_uri] = exc
        found = local[p.bronze_uri]
        if isinstance(found, Path):
            paths[p.source_uri, p.etag] = found
            present.append(p)
        else:
            error = (
                f"its bronze file {p.bronze_uri} is missing from the lake ({found.reason}): "
                "the file is read again"
            )
            missing.append((p, error))
            outcome.reread[p.source_uri] = error
    if missing:
        with warehouse.transaction(con):
            for p, error in missing:
                ledger.reread(con, p, error=error, at=now())
    if not present:
        return
    # DuckDB refusing the rows (a conversion, a constraint) is the files' doing; anything
    # else (a bug, the machine) fails the run and leaves the files `parsed`.
    try:
        _merge_files(con, feed, present, paths, outcome, max_cluster_size)
        return
    except duckdb.Error as exc:
        if _warehouse_trouble(exc):
            raise
    # One file that cannot merge must not hold back the others: merge them one by one.
    for p in present:
        try:
            _merge_files(con, feed, [p], paths, outcome, max_cluster_size)
        except duckdb.Error as exc:
            if _warehouse_trouble(exc):
                raise
            _fail_merge(con, p, paths[p.source_uri, p.etag], exc, outcome)


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
