"""One landed file -> typed bronze rows (Parquet) + rejected rows, with its counts.

Parsing, typing, validation and the within-file dedupe all run in a private in-memory DuckDB
(spilling to a temp folder), so a file of any size uses bounded memory and never touches the
warehouse; the warehouse sees the result later, in one merge transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from ingest_pipeline.feeds import FeedSpec
from ingest_pipeline.parsing import UnsupportedFile, ident, sql_str, stage_file
from ingest_pipeline.validation import typed_sql

MEMORY_LIMIT = "1GB"


@dataclass(frozen=True)
class SourceFile:
    """A file as found in the landing zone: identity (uri, etag) and landing time."""

    uri: str
    etag: str
    key: str
    landed_at: datetime
    size: int
    tenant_id: str

    @property
    def file_id(self) -> str:
        return hashlib.sha1(f"{self.uri}\0{self.etag}".encode()).hexdigest()[:20]

    @property
    def landing_date(self) -> str:
        return self.landed_at.date().isoformat()


@dataclass
class FileReport:
    source: SourceFile
    feed: str
    status: str  # parsed | failed
    rows_read: int = 0
    rows_valid: int = 0
    rows_duplicate: int = 0
    rows_rejected: int = 0
    error: str | None = None
    bronze_path: Path | None = None
    rejects: pa.Table = field(
        default_factory=lambda: pa.table(
            {
                "line_number": pa.array([], pa.int64()),
                "raw": pa.array([], pa.string()),
                "reason": pa.array([], pa.string()),
            }
        )
    )


def new_connection(temp_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET temp_directory = {sql_str(str(temp_dir))}")
    con.execute(f"SET memory_limit = {sql_str(MEMORY_LIMIT)}")
    # Timestamps without an offset are UTC, whatever the machine's time zone (SPEC section 6).
    con.execute("SET TimeZone = 'UTC'")
    return con


def _bronze_select(feed: FeedSpec, source: SourceFile) -> str:
    cols = [
        f"{sql_str(source.tenant_id)} AS tenant_id",
        f"{sql_str(source.uri)} AS source_uri",
        f"{sql_str(source.etag)} AS etag",
        f"{sql_str(source.landed_at.isoformat())}::TIMESTAMPTZ AS landed_at",
        "line_number",
    ]
    for f in feed.fields:
        typed = typed_sql(f)
        if f.kind == "unix_seconds":
            typed = f"to_timestamp({typed})"
        elif f.kind in ("string", "email"):
            typed = f"nullif(trim({ident(f.name)}), '')"
        cols.append(f"{typed} AS {ident(f.name)}")
    cols.append(f"{ident(feed.extras_column)}::JSON AS {ident(feed.extras_column)}")
    return ", ".join(cols)


def process_file(local_path: Path, source: SourceFile, feed: FeedSpec, workdir: Path) -> FileReport:
    """Parse, type, validate and dedupe one local copy of a landed file.

    Writes `<workdir>/<file_id>.parquet` with the rows to merge and returns the counts and the
    rejected rows. Whole-file problems give status `failed` with the reason, never an exception.
    """
    from ingest_pipeline.validation import validate_staged

    workdir.mkdir(parents=True, exist_ok=True)
    report = FileReport(source=source, feed=feed.name, status="parsed")
    con = new_connection(workdir)
    try:
        try:
            stage_file(con, local_path, source.key, feed)
        except UnsupportedFile as exc:
            report.status, report.error = "failed", str(exc)
            return report
        except duckdb.Error as exc:
            report.status, report.error = "failed", f"the file could not be read: {exc}"
            return report

        report.rows_read = con.execute("SELECT count(*) FROM staged").fetchall()[0][0]
        if report.rows_read == 0:
            report.status = "failed"
            report.error = "found zero data rows in the file"
            return report

        row_rejects = validate_staged(con, feed)
        con.register("row_rejects_arrow", row_rejects)
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE rejects AS
            SELECT line_number, raw, error AS reason FROM staged WHERE error IS NOT NULL
            UNION ALL
            SELECT s.line_number, s.raw, r.reason
            FROM staged s JOIN row_rejects_arrow r USING (line_number)
            """
        )
        con.unregister("row_rejects_arrow")
        report.rejects = con.sql("SELECT * FROM rejects ORDER BY line_number").to_arrow_table()
        report.rows_rejected = report.rejects.num_rows

        dedupe = ""
        if feed.dedupe_key:
            # Within one file the first occurrence of a key wins.
            key = ", ".join(ident(k) for k in feed.dedupe_key)
            dedupe = f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY line_number) = 1"
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE bronze AS
            SELECT * FROM (
                SELECT {_bronze_select(feed, source)}
                FROM staged
                WHERE error IS NULL
                  AND line_number NOT IN (SELECT line_number FROM rejects)
            ) {dedupe}
            """
        )
        report.rows_valid = con.execute("SELECT count(*) FROM bronze").fetchall()[0][0]
        report.rows_duplicate = report.rows_read - report.rows_rejected - report.rows_valid
        bronze_path = workdir / f"{source.file_id}.parquet"
        con.execute(
            f"COPY (SELECT * FROM bronze ORDER BY line_number) TO {sql_str(str(bronze_path))} "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
        report.bronze_path = bronze_path
        return report
    finally:
        con.close()
