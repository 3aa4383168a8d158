"""The file ledger (`ingested_files`) and the quarantine (`rejected_rows`).

A file version is (source_uri, etag). Its ledger row moves parsed -> ingested (or failed /
vanished / skipped); the merge transaction flips it to ingested together with the rows it merged,
so a file is never counted as ingested without its rows, nor merged twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa

from ingest_pipeline.bronze import FileReport, SourceFile

FINAL_STATUSES = ("ingested", "failed", "skipped")


@dataclass(frozen=True)
class PendingFile:
    source_uri: str
    etag: str
    feed: str
    bronze_uri: str
    landed_at: datetime
    rows_read: int
    rows_rejected: int


def is_ingested(con: duckdb.DuckDBPyConnection, source: SourceFile) -> bool:
    rows = con.execute(
        "SELECT status FROM ingested_files WHERE source_uri = ? AND etag = ?",
        [source.uri, source.etag],
    ).fetchall()
    return bool(rows) and rows[0][0] == "ingested"


def record_parsed(
    con: duckdb.DuckDBPyConnection,
    report: FileReport,
    *,
    bronze_uri: str | None,
    run_id: str | None,
    started_at: datetime,
    finished_at: datetime,
) -> None:
    """Record a parsed (or failed) file and replace its quarantined rows, in one transaction."""
    src = report.source
    final = report.status != "parsed"
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "DELETE FROM rejected_rows WHERE source_uri = ? AND etag = ?", [src.uri, src.etag]
        )
        if report.quarantine_path is not None:
            con.execute(
                """
                INSERT INTO rejected_rows (source_uri, etag, line_number, tenant_id, feed, raw, reason)
                SELECT ?, ?, line_number, ?, ?, raw, reason FROM read_parquet(?)
                """,
                [src.uri, src.etag, src.tenant_id, report.feed, str(report.quarantine_path)],
            )
        con.execute(
            """
            INSERT OR REPLACE INTO ingested_files (
                source_uri, etag, tenant_id, feed, landing_key, landed_at, landing_date, size_bytes,
                status, rows_read, rows_loaded, rows_duplicate, rows_rejected, bronze_uri, run_id,
                started_at, finished_at, error)
            VALUES (?, ?, ?, ?, ?, ?, ?::DATE, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                src.uri,
                src.etag,
                src.tenant_id,
                report.feed,
                src.key,
                src.landed_at,
                src.landing_date,
                src.size,
                report.status,
                report.rows_read,
                0 if final else None,
                report.rows_duplicate if final else None,
                report.rows_rejected,
                bronze_uri,
                run_id,
                started_at,
                finished_at if final else None,
                report.error,
            ],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def record_status(
    con: duckdb.DuckDBPyConnection,
    source: SourceFile,
    feed: str,
    status: str,
    error: str,
    *,
    run_id: str | None,
    at: datetime,
) -> None:
    """Record a file that could not be parsed at all (vanished, changed after listing)."""
    con.execute(
        """
        INSERT OR REPLACE INTO ingested_files (
            source_uri, etag, tenant_id, feed, landing_key, landed_at, landing_date, size_bytes,
            status, rows_read, rows_loaded, rows_duplicate, rows_rejected, run_id, started_at,
            finished_at, error)
        VALUES (?, ?, ?, ?, ?, ?, ?::DATE, ?, ?, 0, 0, 0, 0, ?, ?, ?, ?)
        """,
        [
            source.uri,
            source.etag,
            source.tenant_id,
            feed,
            source.key,
            source.landed_at,
            source.landing_date,
            source.size,
            status,
            run_id,
            at,
            at,
            error,
        ],
    )


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
