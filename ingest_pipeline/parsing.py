"""DuckDB SQL that turns one landed file into a `staged` table of raw field strings.

The staged table has one row per physical record of the file:
  line_number  BIGINT   line (NDJSON) or record (CSV, header = 1) number in the file
  raw          VARCHAR  the record's text as a person would see it
  error        VARCHAR  why the record cannot be read at all (bad JSON, wrong field count...)
  <field>      VARCHAR  each declared field, as text (NULL when absent)
  <extras>     JSON     every key/column that is not a declared field

Typing and row rules are applied afterwards (validation.py), so every record of the file is here
and can be accounted for: rows_read = count(*) of `staged`.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb

from ingest_pipeline.feeds import FeedSpec

FileFormat = Literal["ndjson", "csv"]

NDJSON_EXTENSIONS = (".json", ".jsonl", ".ndjson")
CSV_EXTENSIONS = (".csv",)
COMPRESSION_EXTENSIONS = (".gz", ".gzip")

# One NDJSON line is read as one VARCHAR column: a delimiter that cannot occur in valid JSON text
# (raw control characters must be escaped inside JSON strings) and no quoting.
LINE_DELIMITER = "\x1f"
# A single record longer than this is reported as an error instead of exhausting memory.
MAX_LINE_BYTES = 8 * 1024 * 1024  # DuckDB buffers 16x this for gzip input


class UnsupportedFile(Exception):
    """The whole file cannot be ingested; the message says what to do about it."""


@dataclass(frozen=True)
class FileShape:
    file_format: FileFormat
    compression: Literal["gzip", "none"]


def detect_shape(name: str) -> FileShape:
    lower = name.lower()
    compression: Literal["gzip", "none"] = "none"
    for ext in COMPRESSION_EXTENSIONS:
        if lower.endswith(ext):
            compression = "gzip"
            lower = lower[: -len(ext)]
            break
    if lower.endswith(NDJSON_EXTENSIONS):
        return FileShape("ndjson", compression)
    if lower.endswith(CSV_EXTENSIONS):
        return FileShape("csv", compression)
    supported = ", ".join(NDJSON_EXTENSIONS + CSV_EXTENSIONS)
    raise UnsupportedFile(
        f"unsupported file extension in {name!r}: use one of {supported}, optionally followed "
        "by .gz or .gzip"
    )


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_path(name: str) -> str:
    return '$."' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def stage_ndjson(
    con: duckdb.DuckDBPyConnection, path: Path, shape: FileShape, feed: FeedSpec
) -> None:
    fields = feed.field_names
    paths = "[" + ", ".join(sql_str(_json_path(f)) for f in fields) + "]"
    # json_merge_patch with nulls removes the declared keys: what is left are the extras.
    remove_declared = sql_str("{" + ", ".join(f'"{f}": null' for f in fields) + "}")
    field_cols = ",\n".join(
        f"CASE WHEN error IS NULL THEN extracted[{i + 1}] END AS {ident(f)}"
        for i, f in enumerate(fields)
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE staged AS
        WITH lines AS (
            -- row_number() over the single-column scan keeps file order (tested).
            SELECT line_number,
                   -- a UTF-8 byte order mark is not part of the first record
                   coalesce(CASE WHEN line_number = 1 THEN ltrim(raw, chr(65279)) ELSE raw END, '') AS raw
            FROM (SELECT row_number() OVER () AS line_number, line AS raw
            FROM read_csv({sql_str(str(path))}, columns = {{'line': 'VARCHAR'}},
                          delim = {sql_str(LINE_DELIMITER)}, quote = '', escape = '',
                          header = false, auto_detect = false, strict_mode = false,
                          compression = {sql_str("gzip" if shape.compression == "gzip" else "none")},
                          max_line_size = {MAX_LINE_BYTES}))
        ),
        checked AS (
            SELECT line_number, raw,
                CASE
                    WHEN raw IS NULL OR trim(raw) = '' THEN 'empty line: each line must be one JSON object'
                    WHEN NOT json_valid(raw) THEN 'invalid JSON: the line is not a valid JSON document'
                    WHEN json_type(raw) <> 'OBJECT' THEN
                        'line is JSON but not an object (it is ' || lower(json_type(raw))
                        || '): each line must be one JSON object'
                END AS error
            FROM lines
        )
        SELECT line_number, raw, error,
            {field_cols},
            CASE WHEN error IS NULL THEN json_merge_patch(raw, {remove_declared}) END
                AS {ident(feed.extras_column)}
        FROM (
            SELECT *, CASE WHEN error IS NULL THEN json_extract_string(raw, {paths}) END AS extracted
            FROM checked
        )
        """
    )


def read_csv_header(path: Path, shape: FileShape) -> list[str]:
    """The header record's column names (the BOM stripped)."""
    opener = gzip.open if shape.compression == "gzip" else open
    with opener(path, "rb") as raw_file:
        first = raw_file.readline(MAX_LINE_BYTES)
    text = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not text.strip():
        return []
    return next(csv.reader(io.StringIO(text)))


def _csv_scan(path: Path, shape: FileShape, header: list[str], escape: str) -> str:
    columns = "{" + ", ".join(f"{sql_str(c)}: 'VARCHAR'" for c in header) + "}"
    return (
        f"read_csv({sql_str(str(path))}, columns = {columns}, header = true, delim = ',', "
        f"quote = '\"', escape = {sql_str(escape)}, auto_detect = false, strict_mode = true, "
        f"store_rejects = true, max_line_size = {MAX_LINE_BYTES}, "
        f"compression = {sql_str('gzip' if shape.compression == 'gzip' else 'none')})"
    )


def _scan_csv(
    con: duckdb.DuckDBPyConnection, path: Path, shape: FileShape, header: list[str], escape: str
) -> int:
    """Read the records into temp table `csv_rows`; returns how many records DuckDB rejected."""
    # The reject tables accumulate over scans and a scan without errors adds no `reject_scans`
    # row (its errors would be the previous scan's): each scan starts with fresh reject tables.
    con.execute("DROP TABLE IF EXISTS reject_errors; DROP TABLE IF EXISTS reject_scans")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE csv_rows AS SELECT * FROM {_csv_scan(path, shape, header, escape)}"
    )
    return con.execute("SELECT count(DISTINCT line) FROM reject_errors").fetchall()[0][0]


def _csv_record_text(header: list[str]) -> str:
    """SQL re-serialising a parsed CSV row as a CSV line (its raw text in the quarantine)."""
    parts = [
        f"CASE WHEN {ident(c)} IS NULL THEN '' "
        f"WHEN regexp_matches({ident(c)}, '[\",\\r\\n]') "
        f"THEN '\"' || replace({ident(c)}, '\"', '\"\"') || '\"' ELSE {ident(c)} END"
        for c in header
    ]
    return "concat_ws(',', " + ", ".join(parts) + ")"


def stage_csv(con: duckdb.DuckDBPyConnection, path: Path, shape: FileShape, feed: FeedSpec) -> None:
    header = read_csv_header(path, shape)
    if not header:
        raise UnsupportedFile("the CSV file is empty: it has no header row")
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise UnsupportedFile(f"the CSV header repeats column(s) {', '.join(duplicated)}")
    blank = [i + 1 for i, c in enumerate(header) if not c.strip()]
    if blank:
        raise UnsupportedFile(f"the CSV header has unnamed column(s) at position(s) {blank}")

    # DuckDB takes one escape character; files use either "" or \" . Try both, keep the reading
    # with fewer rejected records.
    best: tuple[int, str] | None = None
    for escape in ('"', "\\"):
        rejected = _scan_csv(con, path, shape, header, escape)
        if best is None or rejected < best[0]:
            best = (rejected, escape)
        if rejected == 0:
            break
    assert best is not None
    if best[1] != escape:
        _scan_csv(con, path, shape, header, best[1])

    declared = set(feed.field_names)
    extras = [c for c in header if c not in declared]
    field_cols = ", ".join(
        f"{ident(f)} AS {ident(f)}" if f in header else f"NULL::VARCHAR AS {ident(f)}"
        for f in feed.field_names
    )
    extras_sql = (
        "json_object(" + ", ".join(f"{sql_str(c)}, {ident(c)}" for c in extras) + ")"
        if extras
        else "'{}'::JSON"
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE csv_rejects AS
        WITH errors AS (
            -- reject_errors accumulates over scans: keep the last scan's errors only
            SELECT line::BIGINT AS line_number, error_type, min(column_idx) AS first_column,
                   first(csv_line ORDER BY column_idx) AS raw,
                   min(TRY_CAST(regexp_extract(error_message, 'Found: (\\d+)', 1) AS BIGINT)) AS found_min,
                   max(TRY_CAST(regexp_extract(error_message, 'Found: (\\d+)', 1) AS BIGINT)) AS found_max,
                   first(error_message) AS message
            FROM reject_errors
            WHERE scan_id = (SELECT max(scan_id) FROM reject_scans)
            GROUP BY line, error_type
        )
        SELECT line_number, first(raw ORDER BY first_column) AS raw,
               'CSV record ' || string_agg(
                    CASE error_type
                        WHEN 'TOO MANY COLUMNS' THEN 'has more fields than the header ('
                            || found_max || ' instead of {len(header)})'
                        WHEN 'MISSING COLUMNS' THEN 'has fewer fields than the header ('
                            || found_min || ' instead of {len(header)})'
                        WHEN 'UNQUOTED VALUE' THEN 'has an unescaped or unterminated quote'
                        WHEN 'INVALID ENCODING' THEN 'is not valid UTF-8'
                        WHEN 'LINE SIZE OVER MAXIMUM' THEN 'is longer than {MAX_LINE_BYTES} bytes'
                        ELSE lower(error_type) || ': ' || message
                    END, '; ' ORDER BY error_type) AS error
        FROM errors
        GROUP BY line_number
        """
    )
    # Good records carry no line number from the reader; the rejected ones do. Good record k
    # (in order) is the k-th record number after the header that is not a rejected one.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE staged AS
        WITH good AS (
            SELECT row_number() OVER () AS good_ordinal, * FROM csv_rows
        ),
        gaps AS (
            -- the number of good records before rejected record j is line_j - 2 - (j - 1);
            -- consecutive rejected records share it: keep the last one's count (ASOF needs
            -- unique keys to be deterministic)
            SELECT good_before, max(rejects_so_far) AS rejects_so_far
            FROM (
                SELECT line_number - 1 - row_number() OVER (ORDER BY line_number) AS good_before,
                       row_number() OVER (ORDER BY line_number) AS rejects_so_far
                FROM csv_rejects
            )
            GROUP BY good_before
        ),
        numbered AS (
            SELECT good.*, good_ordinal + 1 + coalesce(gaps.rejects_so_far, 0) AS line_number
            FROM good ASOF LEFT JOIN gaps ON good.good_ordinal > gaps.good_before
        )
        SELECT line_number, {_csv_record_text(header)} AS raw, NULL::VARCHAR AS error,
               {field_cols}, {extras_sql}::JSON AS {ident(feed.extras_column)}
        FROM numbered
        UNION ALL
        SELECT line_number, raw, error,
               {", ".join(f"NULL::VARCHAR AS {ident(f)}" for f in feed.field_names)},
               NULL::JSON AS {ident(feed.extras_column)}
        FROM csv_rejects
        """
    )


def stage_file(con: duckdb.DuckDBPyConnection, path: Path, name: str, feed: FeedSpec) -> FileShape:
    """Create temp table `staged` from the local file at `path` (`name` gives its format)."""
    shape = detect_shape(name)
    if shape.file_format == "ndjson":
        stage_ndjson(con, path, shape, feed)
    else:
        stage_csv(con, path, shape, feed)
    return shape
