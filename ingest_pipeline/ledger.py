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
from typing import Literal, get_args

import duckdb
import pyarrow as pa

from ingest_pipeline.bronze import FileReport, SourceFile

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
        return SourceFile(
            uri=self.source_uri,
            etag=self.etag,
            key=self.landing_key,
            landed_at=self.landed_at,
            size=self.size_bytes,
            tenant_id=self.tenant_id,
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
    """The file's quarantined rows: those of `quarantine_path` (a quarantine Parquet file) or none."""
    con.execute(
        "DELETE FROM rejected_rows WHERE source_uri = ? AND etag = ?", [source.uri, source.etag]
    )
    if quarantine_path is not None:
        con.execute(
            """
            INSERT INTO rejected_rows (source_uri, etag, line_number, tenant_id, feed, raw, reason)
            SELECT ?, ?, line_number, ?, ?, raw, reason FROM read_parquet(?)
            """,
            [source.uri, source.etag, source.tenant_id, feed, str(quarantine_path)],
        )


def _upsert_file(
    con: duckdb.DuckDBPyConnection,
    source: SourceFile,
    feed: str,
    values: dict[str, object],
) -> None:
    """Insert the file's ledger row or update it, keeping what earlier steps recorded
    (attempts, request, queue time) unless `values` sets it."""
    base = {
        "source_uri": source.uri,
        "etag": source.etag,
        "tenant_id": source.tenant_id,
        "feed": feed,
        "landing_key": source.key,
        "landed_at": source.landed_at,
        "landing_date": source.landed_at.date(),
        "size_bytes": source.size,
    }
    row = {**base, **values}
    columns = ", ".join(row)
    placeholders = ", ".join("?" for _ in row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in row if c not in ("source_uri", "etag"))
    con.execute(
        f"""
        INSERT INTO ingested_files ({columns}) VALUES ({placeholders})
        ON CONFLICT (source_uri, etag) DO UPDATE SET {updates}
        """,
        list(row.values()),
    )


def record_parsed(
    con: duckdb.DuckDBPyConnection,
    report: FileReport,
    *,
    bronze_uri: str | None,
    run_id: str | None,
    started_at: datetime,
    finished_at: datetime,
) -> None:
    """Record a file the reader went through (parsed, or refused whole: failed / skipped) and
    replace its quarantined rows. Call inside a transaction (warehouse.transaction)."""
    src = report.source
    final = report.status != "parsed"
    replace_rejects(con, src, report.feed, report.quarantine_path)
    _upsert_file(
        con,
        src,
        report.feed,
        {
            "status": report.status,
            "rows_read": report.rows_read,
            "rows_loaded": 0 if final else None,
            "rows_duplicate": report.rows_duplicate if final else None,
            "rows_rejected": report.rows_rejected,
            "bronze_uri": bronze_uri,
            "run_id": run_id,
            "started_at": started_at,
            "finished_at": finished_at if final else None,
            "retry_at": None,
            "error": report.error,
        },
    )


def record_failure(
    con: duckdb.DuckDBPyConnection,
    source: SourceFile,
    feed: str,
    status: Literal["failed", "retrying", "vanished"],
    error: str,
    *,
    run_id: str | None,
    at: datetime,
    retry_at: datetime | None = None,
) -> None:
    """Record a file that could not be read at all: `failed` (for good), `retrying` (from
    `retry_at`) or `vanished`. Its quarantined rows of an earlier attempt are dropped."""
    replace_rejects(con, source, feed, None)
    _upsert_file(
        con,
        source,
        feed,
        {
            "status": status,
            "rows_read": None if status == "retrying" else 0,
            "rows_loaded": None if status == "retrying" else 0,
            "rows_duplicate": None if status == "retrying" else 0,
            "rows_rejected": None if status == "retrying" else 0,
            "bronze_uri": None,
            "run_id": run_id,
            "finished_at": None if status == "retrying" else at,
            "retry_at": retry_at,
            "error": error,
        },
    )


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


def record_merged(
    con: duckdb.DuckDBPyConnection, pending: PendingFile, rows_loaded: int, at: datetime
) -> None:
    con.execute(
        """
        UPDATE ingested_files SET status = 'ingested', rows_loaded = ?,
            rows_duplicate = rows_read - rows_rejected - ?, finished_at = ?
        WHERE source_uri = ? AND etag = ?
        """,
        [rows_loaded, rows_loaded, at, pending.source_uri, pending.etag],
    )


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
        FROM read_parquet(?) b
        """,
        [pending.source_uri, pending.etag, pending.feed, error, str(bronze_path)],
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
