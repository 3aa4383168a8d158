"""The file ledger (`ingested_files`) and the quarantine (`rejected_rows`).

A file version is (source_uri, etag). The ledger knows it from the moment it is requested and
moves it through these statuses (docs/ARCHITECTURE.md, "File states", shows why none is a dead
end):

  queued    requested (by a sensor tick, or by a run that was handed the file), not started yet
  parsing   a run is reading it (run_id says which; `attempts` counts the reads begun)
  parsed    bronze written, waiting for the next merge of its feed
  retrying  the last attempt met a transient error; taken again from `retry_at` on
  ingested  merged (final)
  failed    cannot be ingested, `error` says why and what to do (final)
  skipped   refused by the feed's error policy (final)
  vanished  deleted or replaced between listing and reading (final; a replacement is a new file)

The merge transaction flips a file to ingested together with the rows it merged, so a file is
never counted as ingested without its rows, nor merged twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, get_args

import duckdb

from ingest_pipeline.arrow import pa
from ingest_pipeline.bronze import FileReport, SourceFile
from ingest_pipeline.landing import LandedObject

FileStatus = Literal[
    "queued", "parsing", "parsed", "retrying", "ingested", "failed", "skipped", "vanished"
]
FINAL_STATUSES: frozenset[FileStatus] = frozenset({"ingested", "failed", "skipped", "vanished"})
ACTIVE_STATUSES: frozenset[FileStatus] = frozenset(get_args(FileStatus)) - FINAL_STATUSES

_FILES_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("etag", pa.string()),
        ("tenant_id", pa.string()),
        ("landing_key", pa.string()),
        ("landed_at", pa.timestamp("us", "UTC")),
        ("landing_date", pa.date32()),
        ("size_bytes", pa.int64()),
    ]
)


def _files_table(sources: Sequence[SourceFile]) -> pa.Table:
    return pa.table(
        [
            [s.uri for s in sources],
            [s.etag for s in sources],
            [s.tenant_id for s in sources],
            [s.key for s in sources],
            [s.landed_at for s in sources],
            [s.landed_at.date() for s in sources],
            [s.size for s in sources],
        ],
        schema=_FILES_SCHEMA,
    )


@dataclass(frozen=True)
class PendingFile:
    source_uri: str
    etag: str
    feed: str
    bronze_uri: str
    landed_at: datetime
    rows_read: int
    rows_rejected: int


@dataclass(frozen=True)
class LedgerFile:
    """A file's ledger row, as the reconciliation and `ingest-pipeline status` see it."""

    source_uri: str
    etag: str
    tenant_id: str
    feed: str
    landing_key: str
    landed_at: datetime
    size_bytes: int
    status: FileStatus
    attempts: int
    requests: int
    run_id: str | None
    request_key: str | None
    queued_at: datetime | None
    started_at: datetime | None
    retry_at: datetime | None
    finished_at: datetime | None
    error: str | None

    @property
    def source(self) -> SourceFile:
        return SourceFile.of(self.landed, self.tenant_id)

    @property
    def landed(self) -> LandedObject:
        """The file as a landing listing gave it."""
        return LandedObject(
            key=self.landing_key,
            etag=self.etag,
            size=self.size_bytes,
            last_modified=self.landed_at,
            uri=self.source_uri,
        )

    @property
    def since(self) -> datetime | None:
        """When the file entered its current status (for "stuck for how long")."""
        if self.status == "parsing":
            return self.started_at
        if self.status == "parsed":
            return self.finished_at or self.started_at
        if self.status == "retrying":
            return self.retry_at
        return self.queued_at or self.started_at


_LEDGER_COLUMNS = (
    "source_uri, etag, tenant_id, feed, landing_key, landed_at, size_bytes, status, "
    "coalesce(attempts, 0), coalesce(requests, 1), run_id, request_key, queued_at, started_at, retry_at, finished_at, error"
)


def is_ingested(con: duckdb.DuckDBPyConnection, source: SourceFile) -> bool:
    rows = con.execute(
        "SELECT status FROM ingested_files WHERE source_uri = ? AND etag = ?",
        [source.uri, source.etag],
    ).fetchall()
    return bool(rows) and rows[0][0] == "ingested"


def queue(
    con: duckdb.DuckDBPyConnection,
    sources: Sequence[SourceFile],
    feed: str,
    *,
    at: datetime,
    request_key: str | None = None,
) -> list[SourceFile]:
    """Record newly requested files as `queued`; returns the ones that were new to the ledger
    (a file the ledger already knows, in whatever status, is left alone)."""
    if not sources:
        return []
    con.register("requested_files", _files_table(sources))
    try:
        new = con.execute(
            """
            SELECT source_uri, etag FROM requested_files
            ANTI JOIN ingested_files USING (source_uri, etag)
            """
        ).fetchall()
        con.execute(
            """
            INSERT INTO ingested_files (source_uri, etag, tenant_id, feed, landing_key, landed_at,
                landing_date, size_bytes, status, attempts, requests, request_key, queued_at)
            SELECT r.source_uri, r.etag, r.tenant_id, ?, r.landing_key, r.landed_at,
                   r.landing_date, r.size_bytes, 'queued', 0, 1, ?, ?
            FROM requested_files r ANTI JOIN ingested_files USING (source_uri, etag)
            """,
            [feed, request_key, at],
        )
    finally:
        con.unregister("requested_files")
    fresh = set(new)
    return [s for s in sources if (s.uri, s.etag) in fresh]


def claim(
    con: duckdb.DuckDBPyConnection,
    sources: Sequence[SourceFile],
    feed: str,
    *,
    run_id: str | None,
    force: bool,
    at: datetime,
) -> tuple[list[SourceFile], list[SourceFile]]:
    """A run takes the files it was handed: (to process, already ingested and not forced).

    Files the ledger does not know yet (a run started by hand, a backfill) are recorded as
    `queued` for this run; the others are marked as this run's (`run_id`), whatever their
    status, except ingested ones unless `force`.
    """
    if not sources:
        return [], []
    queue(con, sources, feed, at=at)
    con.register("claimed_files", _files_table(sources))
    try:
        ingested = set(
            con.execute(
                """
                SELECT source_uri, etag FROM ingested_files SEMI JOIN claimed_files
                    USING (source_uri, etag)
                WHERE status = 'ingested'
                """
            ).fetchall()
        )
        skip_ingested = "" if force else "AND f.status <> 'ingested'"
        con.execute(
            f"""
            UPDATE ingested_files f SET run_id = ?, status = 'queued', queued_at = ?,
                retry_at = NULL
            FROM claimed_files c
            WHERE f.source_uri = c.source_uri AND f.etag = c.etag {skip_ingested}
            """,
            [run_id, at],
        )
    finally:
        con.unregister("claimed_files")
    if force:
        return list(sources), []
    take = [s for s in sources if (s.uri, s.etag) not in ingested]
    done = [s for s in sources if (s.uri, s.etag) in ingested]
    return take, done


def mark_parsing(
    con: duckdb.DuckDBPyConnection,
    sources: Sequence[SourceFile],
    *,
    run_id: str | None,
    at: datetime,
) -> dict[tuple[str, str], int]:
    """The run starts reading these files: one more attempt each. Returns (uri, etag) ->
    attempts so far, this one included."""
    if not sources:
        return {}
    con.register("parsing_files", _files_table(sources))
    try:
        con.execute(
            """
            UPDATE ingested_files f SET status = 'parsing', run_id = ?, started_at = ?,
                attempts = coalesce(f.attempts, 0) + 1, retry_at = NULL, finished_at = NULL
            FROM parsing_files p WHERE f.source_uri = p.source_uri AND f.etag = p.etag
            """,
            [run_id, at],
        )
        rows = con.execute(
            """
            SELECT source_uri, etag, attempts FROM ingested_files
            SEMI JOIN parsing_files USING (source_uri, etag)
            """
        ).fetchall()
    finally:
        con.unregister("parsing_files")
    return {(uri, etag): n for uri, etag, n in rows}


def release(con: duckdb.DuckDBPyConnection, sources: Sequence[SourceFile]) -> None:
    """Files a run was reading when its machinery failed go back to `queued`: they are not
    suspects (the attempt does not count)."""
    if not sources:
        return
    con.register("released_files", _files_table(sources))
    try:
        con.execute(
            """
            UPDATE ingested_files f SET status = 'queued', attempts = greatest(f.attempts - 1, 0)
            FROM released_files r
            WHERE f.source_uri = r.source_uri AND f.etag = r.etag AND f.status = 'parsing'
            """
        )
    finally:
        con.unregister("released_files")


def replace_rejects(
    con: duckdb.DuckDBPyConnection, source: SourceFile, feed: str, quarantine_path: object | None
) -> None:
    """The file's quarantined rows: its rows of `quarantine_path` (a quarantine Parquet file,
    which may hold other files' too) or none."""
    con.execute(
        "DELETE FROM rejected_rows WHERE source_uri = ? AND etag = ?", [source.uri, source.etag]
    )
    if quarantine_path is not None:
        con.execute(
            """
            INSERT INTO rejected_rows (source_uri, etag, line_number, tenant_id, feed, raw, reason)
            SELECT ?, ?, line_number, ?, ?, raw, reason FROM read_parquet(?)
            WHERE source_uri = ? AND etag = ?
            """,
            [
                source.uri,
                source.etag,
                source.tenant_id,
                feed,
                str(quarantine_path),
                source.uri,
                source.etag,
            ],
        )


OutcomeStatus = Literal["parsed", "failed", "skipped", "retrying", "vanished"]


@dataclass(frozen=True)
class FileOutcome:
    """What one attempt at one file came to, as the ledger records it."""

    source: SourceFile
    status: OutcomeStatus
    started_at: datetime
    error: str | None = None
    rows_read: int | None = None
    rows_duplicate: int | None = None
    rows_rejected: int | None = None
    bronze_uri: str | None = None
    quarantine_path: Path | None = None  # local Parquet with the file's rejected rows
    retry_at: datetime | None = None
    notes: str | None = None

    @classmethod
    def of_report(
        cls, report: FileReport, *, bronze_uri: str | None, started_at: datetime
    ) -> FileOutcome:
        return cls(
            source=report.source,
            status=report.status,  # type: ignore[arg-type]
            started_at=started_at,
            error=report.error,
            rows_read=report.rows_read,
            rows_duplicate=report.rows_duplicate,
            rows_rejected=report.rows_rejected,
            bronze_uri=bronze_uri,
            quarantine_path=report.quarantine_path,
            notes=report.notes,
        )


_OUTCOMES_SCHEMA = pa.schema(
    [
        *_FILES_SCHEMA,
        ("status", pa.string()),
        ("error", pa.string()),
        ("rows_read", pa.int64()),
        ("rows_duplicate", pa.int64()),
        ("rows_rejected", pa.int64()),
        ("bronze_uri", pa.string()),
        ("quarantine_path", pa.string()),
        ("started_at", pa.timestamp("us", "UTC")),
        ("retry_at", pa.timestamp("us", "UTC")),
        ("notes", pa.string()),
    ]
)


def record_outcomes(
    con: duckdb.DuckDBPyConnection,
    outcomes: Sequence[FileOutcome],
    feed: str,
    *,
    run_id: str | None,
    finished_at: datetime,
) -> None:
    """Record the files of a pass (parsed, failed, skipped, retrying, vanished) and replace
    their quarantined rows, in a few statements whatever their number. Call inside a
    transaction (warehouse.transaction). A file that did not end (parsed, retrying) keeps NULL
    for what it will know later (rows loaded, finish time)."""
    if not outcomes:
        return
    files = _files_table([o.source for o in outcomes])
    extra = {
        "status": [o.status for o in outcomes],
        "error": [o.error for o in outcomes],
        "rows_read": [o.rows_read for o in outcomes],
        "rows_duplicate": [o.rows_duplicate for o in outcomes],
        "rows_rejected": [o.rows_rejected for o in outcomes],
        "bronze_uri": [o.bronze_uri for o in outcomes],
        "quarantine_path": [
            None if o.quarantine_path is None else str(o.quarantine_path) for o in outcomes
        ],
        "started_at": [o.started_at for o in outcomes],
        "retry_at": [o.retry_at for o in outcomes],
        "notes": [o.notes for o in outcomes],
    }
    for name, values in extra.items():
        files = files.append_column(
            _OUTCOMES_SCHEMA.field(name), pa.array(values, _OUTCOMES_SCHEMA.field(name).type)
        )
    con.register("recorded_files", files)
    try:
        con.execute(
            """
            DELETE FROM rejected_rows r USING recorded_files f
            WHERE r.source_uri = f.source_uri AND r.etag = f.etag
            """
        )
        for path in sorted({p for p in extra["quarantine_path"] if p is not None}):
            con.execute(
                """
                INSERT INTO rejected_rows
                    (source_uri, etag, line_number, tenant_id, feed, raw, reason)
                SELECT q.source_uri, q.etag, q.line_number, f.tenant_id, ?, q.raw, q.reason
                FROM read_parquet(?) q
                JOIN recorded_files f
                  ON f.source_uri = q.source_uri AND f.etag = q.etag AND f.quarantine_path = ?
                """,
                [feed, path, path],
            )
        final = "f.status NOT IN ('parsed', 'retrying')"
        waiting = "f.status = 'retrying'"
        con.execute(
            f"""
            INSERT INTO ingested_files (source_uri, etag, tenant_id, feed, landing_key, landed_at,
                landing_date, size_bytes, status, rows_read, rows_loaded, rows_duplicate,
                rows_rejected, bronze_uri, run_id, started_at, finished_at, retry_at, error, notes)
            SELECT f.source_uri, f.etag, f.tenant_id, ?, f.landing_key, f.landed_at,
                f.landing_date, f.size_bytes, f.status,
                CASE WHEN {waiting} THEN NULL ELSE coalesce(f.rows_read, 0) END,
                CASE WHEN {final} THEN 0 END,
                CASE WHEN {final} THEN coalesce(f.rows_duplicate, 0) END,
                CASE WHEN {waiting} THEN NULL ELSE coalesce(f.rows_rejected, 0) END,
                f.bronze_uri, ?, f.started_at, CASE WHEN {final} THEN ?::TIMESTAMPTZ END,
                f.retry_at, f.error, f.notes
            FROM recorded_files f
            ON CONFLICT (source_uri, etag) DO UPDATE SET
                status = excluded.status, rows_read = excluded.rows_read,
                rows_loaded = excluded.rows_loaded, rows_duplicate = excluded.rows_duplicate,
                rows_rejected = excluded.rows_rejected, bronze_uri = excluded.bronze_uri,
                run_id = excluded.run_id, started_at = excluded.started_at,
                finished_at = excluded.finished_at, retry_at = excluded.retry_at,
                error = excluded.error, notes = excluded.notes
            """,
            [feed, run_id, finished_at],
        )
    finally:
        con.unregister("recorded_files")


def record_parsed(
    con: duckdb.DuckDBPyConnection,
    report: FileReport,
    *,
    bronze_uri: str | None,
    run_id: str | None,
    started_at: datetime,
    finished_at: datetime,
) -> None:
    """Record one file the reader went through (parsed, or refused whole: failed / skipped)
    and replace its quarantined rows (record_outcomes for one file)."""
    outcome = FileOutcome.of_report(report, bronze_uri=bronze_uri, started_at=started_at)
    record_outcomes(con, [outcome], report.feed, run_id=run_id, finished_at=finished_at)


def requeue(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[LedgerFile],
    *,
    request_key: str,
    at: datetime,
) -> None:
    """The files are requested again (reconciliation): back to `queued` under a new request."""
    _update_files(
        con,
        files,
        "status = 'queued', request_key = ?, queued_at = ?, run_id = NULL, retry_at = NULL, "
        "requests = coalesce(requests, 1) + 1",
        [request_key, at],
    )


def postpone(
    con: duckdb.DuckDBPyConnection, files: Sequence[LedgerFile], *, error: str, retry_at: datetime
) -> None:
    """The files wait before they are requested again (their run ended before reaching them)."""
    _update_files(con, files, "status = 'retrying', retry_at = ?, error = ?", [retry_at, error])


def fail(
    con: duckdb.DuckDBPyConnection, files: Sequence[LedgerFile], *, error: str, at: datetime
) -> None:
    """The files are `failed` for good with `error` (their attempts are used up). Nothing of a
    failed file loads: counts are zero and rows an earlier attempt quarantined are dropped."""
    _update_files(
        con,
        files,
        "status = 'failed', error = ?, finished_at = ?, rows_read = 0, rows_loaded = 0, "
        "rows_duplicate = 0, rows_rejected = 0, bronze_uri = NULL, retry_at = NULL",
        [error, at],
    )
    for f in files:
        replace_rejects(con, f.source, f.feed, None)


def _update_files(
    con: duckdb.DuckDBPyConnection, files: Sequence[LedgerFile], assignments: str, params: list
) -> None:
    if not files:
        return
    keys = pa.table({"source_uri": [f.source_uri for f in files], "etag": [f.etag for f in files]})
    con.register("updated_files", keys)
    try:
        con.execute(
            f"""
            UPDATE ingested_files f SET {assignments}
            FROM updated_files u WHERE f.source_uri = u.source_uri AND f.etag = u.etag
            """,
            params,
        )
    finally:
        con.unregister("updated_files")


def active_files(con: duckdb.DuckDBPyConnection, feed: str | None = None) -> list[LedgerFile]:
    """Every file that is not in a final status (of one feed, or of all)."""
    statuses = ", ".join(f"'{s}'" for s in sorted(ACTIVE_STATUSES))
    where = f"status IN ({statuses})" + (" AND feed = ?" if feed else "")
    rows = con.execute(
        f"SELECT {_LEDGER_COLUMNS} FROM ingested_files WHERE {where} ORDER BY landed_at, source_uri",
        [feed] if feed else [],
    ).fetchall()
    return [LedgerFile(*r) for r in rows]


def requested_files(con: duckdb.DuckDBPyConnection, request_key: str) -> list[LedgerFile]:
    """The files a sensor request (its run key) asked for and that are still waiting for it."""
    rows = con.execute(
        f"SELECT {_LEDGER_COLUMNS} FROM ingested_files WHERE request_key = ? "
        "AND status IN ('queued', 'parsing', 'retrying') ORDER BY landed_at, source_uri",
        [request_key],
    ).fetchall()
    return [LedgerFile(*r) for r in rows]


def failed_files(
    con: duckdb.DuckDBPyConnection, feed: str | None = None, *, limit: int = 100
) -> list[LedgerFile]:
    """The most recently finished failed files (of one feed, or of all)."""
    where = "status = 'failed'" + (" AND feed = ?" if feed else "")
    rows = con.execute(
        f"SELECT {_LEDGER_COLUMNS} FROM ingested_files WHERE {where} "
        f"ORDER BY finished_at DESC NULLS LAST, source_uri LIMIT {int(limit)}",
        [feed] if feed else [],
    ).fetchall()
    return [LedgerFile(*r) for r in rows]


def status_counts(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
    """(feed, status) -> number of files."""
    rows = con.execute("SELECT feed, status, count(*) FROM ingested_files GROUP BY ALL").fetchall()
    return {(feed, status): n for feed, status, n in rows}


def pending_files(con: duckdb.DuckDBPyConnection, feed: str) -> list[PendingFile]:
    rows = con.execute(
        """
        SELECT source_uri, etag, feed, bronze_uri, landed_at, rows_read, rows_rejected
        FROM ingested_files WHERE feed = ? AND status = 'parsed'
        ORDER BY landed_at, source_uri
        """,
        [feed],
    ).fetchall()
    return [PendingFile(*r) for r in rows]


def record_merged_many(
    con: duckdb.DuckDBPyConnection, merged: Sequence[tuple[PendingFile, int]], at: datetime
) -> None:
    """Flip merged files to `ingested` with their rows loaded (and so their duplicates), in
    one statement whatever their number."""
    if not merged:
        return
    table = pa.table(
        {
            "source_uri": [p.source_uri for p, _ in merged],
            "etag": [p.etag for p, _ in merged],
            "rows_loaded": pa.array([n for _, n in merged], pa.int64()),
        }
    )
    con.register("merged_files", table)
    try:
        con.execute(
            """
            UPDATE ingested_files f SET status = 'ingested', rows_loaded = m.rows_loaded,
                rows_duplicate = f.rows_read - f.rows_rejected - m.rows_loaded, finished_at = ?
            FROM merged_files m WHERE f.source_uri = m.source_uri AND f.etag = m.etag
            """,
            [at],
        )
    finally:
        con.unregister("merged_files")


def reread(
    con: duckdb.DuckDBPyConnection, pending: PendingFile, *, error: str, at: datetime
) -> None:
    """A parsed file whose bronze is gone: read again (retrying, due now)."""
    con.execute(
        """
        UPDATE ingested_files SET status = 'retrying', retry_at = ?, error = ?, bronze_uri = NULL
        WHERE source_uri = ? AND etag = ?
        """,
        [at, error, pending.source_uri, pending.etag],
    )


def fail_pending(
    con: duckdb.DuckDBPyConnection,
    pending: PendingFile,
    bronze_path: object,
    *,
    error: str,
    at: datetime,
) -> None:
    """A parsed file that cannot be merged: failed for good, nothing of it loaded. Its valid
    rows join its rejected rows in the quarantine (raw = the row as read, in JSON) with
    `error` as the reason, so rows_read = rows_rejected still accounts for every line."""
    con.execute(
        """
        INSERT OR REPLACE INTO rejected_rows
            (source_uri, etag, line_number, tenant_id, feed, raw, reason)
        SELECT ?, ?, b.line_number, b.tenant_id, ?, to_json(b)::VARCHAR, ?
        FROM read_parquet(?) b WHERE b.source_uri = ? AND b.etag = ?
        """,
        [
            pending.source_uri,
            pending.etag,
            pending.feed,
            error,
            str(bronze_path),
            pending.source_uri,
            pending.etag,
        ],
    )
    con.execute(
        """
        UPDATE ingested_files SET status = 'failed', error = ?, finished_at = ?, rows_loaded = 0,
            rows_duplicate = 0, rows_rejected = rows_read
        WHERE source_uri = ? AND etag = ?
        """,
        [error, at, pending.source_uri, pending.etag],
    )


def rejects_sample(rejects: pa.Table, limit: int = 10, total: int | None = None) -> str:
    """A markdown table of the first rejected rows, for Dagster metadata (`total`: how many
    there are in all, when `rejects` holds only the first ones)."""
    total = rejects.num_rows if total is None else total
    if total == 0:
        return "No rejected rows."
    lines = ["| line | reason | raw |", "| --- | --- | --- |"]
    for row in rejects.slice(0, limit).to_pylist():
        raw = (row["raw"] or "")[:120].replace("|", "\\|").replace("\n", "\\n")
        reason = row["reason"].replace("|", "\\|")
        lines.append(f"| {row['line_number']} | {reason} | `{raw}` |")
    if total > limit:
        lines.append(f"\n… and {total - limit} more in `rejected_rows`.")
    return "\n".join(lines)
