"""One landed file -> typed bronze rows (Parquet) + rejected rows, with its counts.

Parsing, typing and validation all run in a private in-memory DuckDB
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

from ingest_pipeline.config import FeedPolicy
from ingest_pipeline.feeds import FeedSpec
from ingest_pipeline.parsing import UnsupportedFile, extras_sql, ident, sql_str, stage_file
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
    rows_duplicate: int = 0  # only for refused files; otherwise the merge counts duplicates
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


def _bronze_select(feed: FeedSpec, source: SourceFile, extras: str) -> str:
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
    cols.append(f"({extras})::JSON AS {ident(feed.extras_column)}")
    return ", ".join(cols)


def _policy_verdict(report: FileReport, policy: FeedPolicy) -> str | None:
    """Why the error policy refuses the whole file, or None when its good rows may load."""
    if report.rows_rejected == 0:
        return None
    share = report.rows_rejected / report.rows_read
    first = report.rejects.slice(0, 1).to_pylist()[0]
    summary = (
        f"{report.rows_rejected} of {report.rows_read} rows rejected ({share:.1%}); first: "
        f"line {first['line_number']}: {first['reason']}"
    )
    if policy.on_error == "abort":
        return f"import aborted (on_error: abort): {summary}"
    if policy.on_error == "skip_file" and share > policy.max_rejected_fraction:
        return (
            f"file skipped (on_error: skip_file, max_rejected_fraction "
            f"{policy.max_rejected_fraction:g}): {summary}"
        )
    return None


def process_file(
    local_path: Path,
    source: SourceFile,
    feed: FeedSpec,
    workdir: Path,
    policy: FeedPolicy | None = None,
) -> FileReport:
    """Parse, type and validate one local copy of a landed file.

    Writes `<workdir>/<file_id>.parquet` with the rows to merge and returns the counts and the
    rejected rows. Whole-file problems give status `failed` (or `skipped` by the error policy)
    with the reason, never an exception; the file's rows are then all in the quarantine, so
    rows_read = rows_loaded + rows_duplicate + rows_rejected still holds.
    """
    from ingest_pipeline.validation import validate_staged

    policy = policy or FeedPolicy()
    workdir.mkdir(parents=True, exist_ok=True)
    report = FileReport(source=source, feed=feed.name, status="parsed")
    con = new_connection(workdir)
    try:
        try:
            staged = stage_file(con, local_path, source.key, feed)
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

        if staged.file_error:
            # The file as a whole is wrong: every record goes to the quarantine with that reason.
            report.status, report.error = "failed", staged.file_error
            report.rejects = con.sql(
                "SELECT line_number, raw, $reason AS reason FROM staged ORDER BY line_number",
                params={"reason": staged.file_error},
            ).to_arrow_table()
            report.rows_rejected = report.rejects.num_rows
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
        report.error = staged.damage

        refusal = _policy_verdict(report, policy)
        if refusal is not None:
            # Nothing from the file merges; its good rows wait in the quarantine with the reason.
            report.status = "failed" if policy.on_error == "abort" else "skipped"
            report.error = refusal if not staged.damage else f"{refusal}; {staged.damage}"
            report.rejects = con.sql(
                """
                SELECT line_number, raw, reason FROM rejects
                UNION ALL
                SELECT line_number, raw, 'not loaded: ' || $refusal AS reason FROM staged
                WHERE line_number NOT IN (SELECT line_number FROM rejects)
                ORDER BY line_number
                """,
                params={"refusal": refusal},
            ).to_arrow_table()
            report.rows_rejected = report.rejects.num_rows
            return report

        # Duplicates are left to the merge: its ranking keeps the first line of a key within a
        # file and the newest file across files, and counts each file's rows_duplicate.
        bronze_path = workdir / f"{source.file_id}.parquet"
        # COPY answers with the number of rows it wrote.
        report.rows_valid = con.execute(
            f"""
            COPY (
                SELECT {_bronze_select(feed, source, extras_sql(feed, staged.shape))}
                FROM staged
                WHERE error IS NULL
                  AND line_number NOT IN (SELECT line_number FROM rejects)
            ) TO {sql_str(str(bronze_path))} (FORMAT parquet, COMPRESSION snappy)
            """
        ).fetchall()[0][0]
        report.bronze_path = bronze_path
        return report
    finally:
        con.close()
