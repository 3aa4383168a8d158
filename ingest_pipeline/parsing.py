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
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa

from ingest_pipeline.feeds import FeedSpec
from ingest_pipeline.reading import (
    LINE_SCHEMA,
    FileBytes,
    UnsupportedFile,
    cut_after_last_line,
    ndjson_lines,
    write_plain,
)

__all__ = ["UnsupportedFile", "StageResult", "stage_file", "detect_shape", "extras_sql"]

FileFormat = Literal["ndjson", "csv"]

NDJSON_EXTENSIONS = (".json", ".jsonl", ".ndjson")
CSV_EXTENSIONS = (".csv",)
COMPRESSION_EXTENSIONS = (".gz", ".gzip")

# A delimiter no CSV header holds: a one-column read of a CSV file sees whole records.
WHOLE_RECORD_DELIMITER = "\x1f\x1e\x1d\x1c"
# A single record longer than this is reported as an error instead of exhausting memory.
MAX_LINE_BYTES = 8 * 1024 * 1024
# The quarantine keeps at most this much of one record's raw text.
RAW_TEXT_LIMIT = 65_536
INVALID_JSON = "invalid JSON: the line is not a valid JSON document"
# Invalid JSON lines whose error position is worked out (the rest keep the general reason).
DESCRIBE_JSON_ERRORS = 10_000


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


def _reader_rejects(con: duckdb.DuckDBPyConnection, header_fields: int) -> None:
    """Temp table `read_rejects(line_number, raw, error)`: the CSV records DuckDB's reader refused.

    One row per record, with a reason a person can act on (several errors of one record are
    joined). The raw text of an over-long record is cut to RAW_TEXT_LIMIT characters. DuckDB
    hands back a record with the line ends before it (the LF of a CRLF, blank lines): they are
    not part of the record.
    """
    expected = f" instead of {header_fields}"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE read_rejects AS
        WITH errors AS (
            SELECT line::BIGINT AS line_number, error_type, min(column_idx) AS first_column,
                   first(csv_line ORDER BY column_idx) AS raw,
                   min(TRY_CAST(regexp_extract(error_message, 'Found: (\\d+)', 1) AS BIGINT)) AS found_min,
                   max(TRY_CAST(regexp_extract(error_message, 'Found: (\\d+)', 1) AS BIGINT)) AS found_max,
                   first(error_message) AS message
            FROM reject_errors
            GROUP BY line, error_type
        )
        SELECT line_number,
               left(ltrim(first(raw ORDER BY first_column), chr(13) || chr(10)), {RAW_TEXT_LIMIT})
                   AS raw,
               'CSV record ' || string_agg(
                    CASE error_type
                        WHEN 'TOO MANY COLUMNS' THEN 'has more fields than the header ('
                            || found_max || '{expected})'
                        WHEN 'MISSING COLUMNS' THEN 'has fewer fields than the header ('
                            || found_min || '{expected}): a field is missing, or a line break '
                            || 'outside quotes splits the record'
                        WHEN 'UNQUOTED VALUE' THEN 'has an unescaped or unterminated quote '
                            || '(escape a quote inside a quoted field as "" or \\")'
                        WHEN 'INVALID ENCODING' THEN 'is not valid UTF-8 (invalid bytes are '
                            || 'shown as ?): re-export the file as UTF-8'
                        WHEN 'LINE SIZE OVER MAXIMUM' THEN 'is longer than the parser''s limit of '
                            || '{MAX_LINE_BYTES} bytes ('
                            || coalesce(regexp_extract(message, 'Actual Size:\\s*(\\d+)', 1), '?')
                            || ' bytes)'
                        ELSE lower(error_type) || ': ' || message
                    END, '; ' ORDER BY error_type) AS error
        FROM errors
        GROUP BY line_number
        """
    )


def _numbered(con: duckdb.DuckDBPyConnection, good_rows: str, first_line: int) -> str:
    """SQL numbering the reader's good CSV records by their line number in the file.

    DuckDB gives line numbers for the records it rejects but not for the good ones, which arrive
    in file order. Temp table `not_records(line_number)` holds every number from `first_line` on
    that is not a good record (rejects, blank lines): good record k is the k-th other number.
    """
    if not con.execute("SELECT count(*) FROM not_records").fetchall()[0][0]:
        # Every line is a good record: record k is simply number k (from first_line).
        return f"""
        numbered AS (
            SELECT row_number() OVER () + {first_line - 1} AS line_number, * FROM {good_rows}
        )"""
    return f"""
        good AS (SELECT row_number() OVER () AS good_ordinal, * FROM {good_rows}),
        gaps AS (
            -- good records before skipped number j: line_j - first_line - (j - 1); consecutive
            -- skipped numbers share it: keep the last one's count (ASOF needs unique keys)
            SELECT good_before, max(skipped_so_far) AS skipped_so_far
            FROM (
                SELECT line_number - {first_line} + 1 - row_number() OVER (ORDER BY line_number)
                           AS good_before,
                       row_number() OVER (ORDER BY line_number) AS skipped_so_far
                FROM not_records
            )
            GROUP BY good_before
        ),
        numbered AS (
            SELECT good.*,
                   good_ordinal + {first_line - 1} + coalesce(gaps.skipped_so_far, 0) AS line_number
            FROM good ASOF LEFT JOIN gaps ON good.good_ordinal > gaps.good_before
        )"""


def _fresh_rejects(con: duckdb.DuckDBPyConnection) -> None:
    # The reject tables accumulate over scans and a scan without errors adds no `reject_scans`
    # row (its errors would be the previous scan's): each scan starts with fresh reject tables.
    con.execute("DROP TABLE IF EXISTS reject_errors; DROP TABLE IF EXISTS reject_scans")


def extras_sql(feed: FeedSpec, shape: FileShape) -> str:
    """SQL over `staged` giving the JSON of the keys/columns that are not declared fields."""
    if shape.file_format == "csv":
        return ident(feed.extras_column)
    # json_merge_patch with nulls removes the declared keys: what is left are the extras.
    remove_declared = sql_str("{" + ", ".join(f'"{f}": null' for f in feed.field_names) + "}")
    return f"json_merge_patch(raw, {remove_declared})"


def stage_ndjson(con: duckdb.DuckDBPyConnection, content: FileBytes, feed: FeedSpec) -> None:
    """Temp table `staged` from an NDJSON file: one row per line, checked and its fields taken."""
    fields = feed.field_names
    paths = "[" + ", ".join(sql_str(_json_path(f)) for f in fields) + "]"
    field_cols = ",\n".join(
        f"CASE WHEN error IS NULL THEN extracted[{i + 1}] END AS {ident(f)}"
        for i, f in enumerate(fields)
    )
    line_batches = pa.RecordBatchReader.from_batches(
        LINE_SCHEMA,
        ndjson_lines(content, max_line_bytes=MAX_LINE_BYTES, keep_bytes=RAW_TEXT_LIMIT),
    )
    con.register("line_batches", line_batches)
    try:
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE staged AS
            WITH decoded AS (
                SELECT line_number, overlong_bytes, raw AS bytes, try(decode(raw)) AS text
                FROM line_batches
            ),
            lines AS (
                SELECT line_number, overlong_bytes, text IS NULL AS not_utf8,
                    -- the line end (LF or CRLF) is not part of the record, nor a UTF-8 byte
                    -- order mark of the first line; bytes that are not UTF-8 are shown as \\xNN
                    CASE
                        WHEN text IS NULL THEN rtrim(bytes::VARCHAR, '\\x0A')
                        WHEN suffix(text, chr(13) || chr(10)) THEN left(text, -2)
                        WHEN suffix(text, chr(10)) THEN left(text, -1)
                        ELSE text
                    END AS line_text,
                    CASE WHEN line_number = 1 THEN ltrim(line_text, chr(65279)) ELSE line_text END
                        AS raw
                FROM decoded
            ),
            checked AS (
                SELECT line_number, raw,
                    CASE
                        WHEN overlong_bytes IS NOT NULL THEN
                            'line is longer than the parser''s limit of {MAX_LINE_BYTES} bytes ('
                            || overlong_bytes || ' bytes): split the record or send it through '
                            || 'the API in smaller records'
                        WHEN not_utf8 THEN 'line is not valid UTF-8 (the bytes that are not '
                            || 'UTF-8 are shown as \\xNN): re-export the file as UTF-8'
                        WHEN trim(raw) = '' THEN 'empty line: each line must be one JSON object'
                        WHEN contains(raw, chr(0)) THEN
                            'line contains NUL bytes (\\0), which JSON does not allow'
                        WHEN NOT json_valid(raw) THEN {sql_str(INVALID_JSON)}
                        -- valid JSON starting with a brace is an object; json_type for others
                        WHEN NOT starts_with(ltrim(raw), '{{') THEN
                            'line is JSON but not an object (it is ' || lower(json_type(raw))
                            || '): each line must be one JSON object'
                    END AS error
                FROM lines
            )
            SELECT line_number, raw, error,
                {field_cols},
                -- extras are built only for the rows that reach bronze: see extras_sql()
                NULL::JSON AS {ident(feed.extras_column)}
            FROM (
                SELECT *,
                       CASE WHEN error IS NULL THEN json_extract_string(raw, {paths}) END
                           AS extracted
                FROM checked
            )
            """
        )
    finally:
        con.unregister("line_batches")
    _describe_invalid_json(con)


def _describe_invalid_json(con: duckdb.DuckDBPyConnection) -> None:
    """Say where each invalid JSON line breaks (Python's decoder reports the position).

    Runs over rejected lines only, and at most DESCRIBE_JSON_ERRORS of them.
    """
    rows = con.execute(
        "SELECT line_number, raw FROM staged WHERE error = ? ORDER BY line_number LIMIT ?",
        [INVALID_JSON, DESCRIBE_JSON_ERRORS],
    ).fetchall()
    if not rows:
        return
    described = []
    for line_number, raw in rows:
        try:
            json.loads(raw)
        except ValueError as exc:
            msg = getattr(exc, "msg", str(exc))
            col = getattr(exc, "colno", None)
            near = raw[max(0, (col or 1) - 11) : (col or 1) + 10] if col else ""
            described.append((line_number, f"invalid JSON at column {col}: {msg} (near {near!r})"))
        else:  # DuckDB and Python disagree (e.g. NaN): keep the general reason
            described.append((line_number, INVALID_JSON))
    con.execute("CREATE OR REPLACE TEMP TABLE json_errors (line_number BIGINT, reason VARCHAR)")
    con.executemany("INSERT INTO json_errors VALUES (?, ?)", described)
    con.execute(
        "UPDATE staged SET error = j.reason FROM json_errors j "
        "WHERE staged.line_number = j.line_number"
    )


def read_csv_header(path: Path) -> list[str]:
    """The header record's column names (the BOM stripped) of an uncompressed CSV file."""
    with open(path, "rb") as raw_file:
        first = raw_file.readline(MAX_LINE_BYTES)
    text = first.decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not text.strip():
        return []
    return next(csv.reader(io.StringIO(text)))


def _csv_scan(path: Path, header: list[str], escape: str) -> str:
    columns = "{" + ", ".join(f"{sql_str(c)}: 'VARCHAR'" for c in header) + "}"
    return (
        f"read_csv({sql_str(str(path))}, columns = {columns}, header = true, delim = ',', "
        f"quote = '\"', escape = {sql_str(escape)}, auto_detect = false, strict_mode = true, "
        f"store_rejects = true, max_line_size = {MAX_LINE_BYTES}, compression = 'none')"
    )


def _scan_csv(con: duckdb.DuckDBPyConnection, path: Path, header: list[str], escape: str) -> int:
    """Read the records into temp table `csv_rows`; returns how many records DuckDB rejected."""
    _fresh_rejects(con)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE csv_rows AS SELECT * FROM {_csv_scan(path, header, escape)}"
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


def _has_blank_line(path: Path) -> bool:
    """Whether the file holds an empty line (LF LF or LF CR LF), streaming through it."""
    tail = b""
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            window = tail + chunk
            if b"\n\n" in window or b"\n\r\n" in window:
                return True
            tail = window[-2:]
    return False


def _skipped_line_numbers(con: duckdb.DuckDBPyConnection, path: Path, escape: str) -> None:
    """Temp table `not_records`: the line numbers (as DuckDB counts them) of rejected records
    and of blank lines, which DuckDB skips silently but counts."""
    con.execute("CREATE OR REPLACE TEMP TABLE not_records AS SELECT line_number FROM read_rejects")
    if not _has_blank_line(path):
        return
    # One column that no delimiter splits, the same quoting: one row per record or blank line.
    con.execute(
        f"""
        INSERT INTO not_records
        SELECT line_number FROM (
            SELECT row_number() OVER () + 1 AS line_number, record
            FROM read_csv({sql_str(str(path))}, columns = {{'record': 'VARCHAR'}}, header = true,
                          delim = {sql_str(WHOLE_RECORD_DELIMITER)}, quote = '"',
                          escape = {sql_str(escape)}, auto_detect = false, strict_mode = false,
                          ignore_errors = true, max_line_size = {MAX_LINE_BYTES})
        )
        WHERE record IS NULL
          AND line_number NOT IN (SELECT line_number FROM read_rejects)
        """
    )


def stage_csv(con: duckdb.DuckDBPyConnection, path: Path, feed: FeedSpec) -> None:
    """Temp table `staged` from an uncompressed CSV file: one row per record."""
    header = read_csv_header(path)
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
        rejected = _scan_csv(con, path, header, escape)
        if best is None or rejected < best[0]:
            best = (rejected, escape)
        if rejected == 0:
            break
    assert best is not None
    if best[1] != escape:
        _scan_csv(con, path, header, best[1])

    declared = set(feed.field_names)
    extras = [c for c in header if c not in declared]
    field_cols = ", ".join(
        f"{ident(f)} AS {ident(f)}" if f in header else f"NULL::VARCHAR AS {ident(f)}"
        for f in feed.field_names
    )
    extras_json = (
        "json_object(" + ", ".join(f"{sql_str(c)}, {ident(c)}" for c in extras) + ")"
        if extras
        else "'{}'::JSON"
    )
    _reader_rejects(con, len(header))
    _skipped_line_numbers(con, path, best[1])
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE staged AS
        WITH {_numbered(con, "csv_rows", first_line=2)}
        SELECT line_number, {_csv_record_text(header)} AS raw, NULL::VARCHAR AS error,
               {field_cols}, {extras_json}::JSON AS {ident(feed.extras_column)}
        FROM numbered
        UNION ALL
        SELECT line_number, raw, error,
               {", ".join(f"NULL::VARCHAR AS {ident(f)}" for f in feed.field_names)},
               NULL::JSON AS {ident(feed.extras_column)}
        FROM read_rejects
        """
    )
    con.execute("DROP TABLE csv_rows; DROP TABLE not_records")


@dataclass(frozen=True)
class StageResult:
    shape: FileShape
    # The file as a whole is wrong (one JSON document, only NUL bytes): nothing in it loads.
    file_error: str | None = None
    # The file is damaged part way (truncated gzip): the records before the damage were staged.
    damage: str | None = None


def _ndjson_file_error(con: duckdb.DuckDBPyConnection) -> str | None:
    objects, total = con.execute(
        "SELECT count(*) FILTER (WHERE error IS NULL), count(*) FROM staged"
    ).fetchall()[0]
    if objects * 2 >= total:
        return None  # mostly good lines: per-line reasons say it best
    nul_lines, first_text = con.execute(
        """
        SELECT count(*) FILTER (WHERE regexp_full_match(raw, '\x00+')),
               first(ltrim(raw) ORDER BY line_number) FILTER (WHERE trim(raw) <> '')
        FROM staged
        """
    ).fetchall()[0]
    if total and nul_lines == total:
        return (
            "the file contains only NUL bytes (an upload that failed or was pre-allocated): "
            "send the file again"
        )
    if first_text is not None and first_text.startswith("["):
        return (
            "the file is one JSON array, not one JSON object per line: "
            "each line must be one JSON object"
        )
    if objects == 0 and first_text is not None and first_text.startswith("{") and total > 1:
        return (
            "the file is one multi-line (pretty-printed) JSON document: "
            "each line must be one JSON object"
        )
    return None


def normalize_line_ends(path: Path, dest: Path) -> None:
    """Copy the file to `dest` with CRLF line ends turned into LF, streaming."""
    with open(path, "rb") as src, open(dest, "wb") as out:
        carry = b""
        while chunk := src.read(1 << 20):
            chunk = carry + chunk
            # a CR at the end of a chunk may be the first half of a CRLF
            carry, chunk = (b"\r", chunk[:-1]) if chunk.endswith(b"\r") else (b"", chunk)
            out.write(chunk.replace(b"\r\n", b"\n"))
        out.write(carry)


def _stage_plain_csv(con: duckdb.DuckDBPyConnection, path: Path, feed: FeedSpec) -> None:
    try:
        stage_csv(con, path, feed)
    except duckdb.InvalidInputException as exc:
        # DuckDB's strict CSV mode refuses a file that mixes CRLF and LF line ends.
        if "state machine reached an invalid state" not in str(exc):
            raise
        lf_only = path.with_name(path.name + ".lf")
        try:
            normalize_line_ends(path, lf_only)
            stage_csv(con, lf_only, feed)
        finally:
            lf_only.unlink(missing_ok=True)


def _damage_reason(content: FileBytes) -> str:
    return (
        f"the gzip data is {content.damage} after {content.delivered} decompressed bytes: the "
        "complete records before the damage were read, the rest of the file is lost; send the "
        "file again"
    )


def stage_file(
    con: duckdb.DuckDBPyConnection, path: Path, name: str, feed: FeedSpec
) -> StageResult:
    """Create temp table `staged` from the local file at `path` (`name` gives its format)."""
    shape = detect_shape(name)
    content = FileBytes(path, shape.compression)
    if shape.file_format == "ndjson":
        stage_ndjson(con, content, feed)
    elif shape.compression == "none":
        _stage_plain_csv(con, path, feed)
    else:
        plain = path.with_name(path.name + ".csv")
        try:
            write_plain(content, plain)
            if content.damage:
                cut_after_last_line(plain)
                if not read_csv_header(plain):
                    raise UnsupportedFile(_damage_reason(content) + " (no complete header row)")
            _stage_plain_csv(con, plain, feed)
        finally:
            plain.unlink(missing_ok=True)
    damage = None
    if content.damage:
        damage = _damage_reason(content)
        # The damaged tail is one more record, in the quarantine with the reason.
        con.execute(
            "INSERT INTO staged (line_number, raw, error) "
            "SELECT coalesce(max(line_number), ?) + 1, '', ? FROM staged",
            [1 if shape.file_format == "csv" else 0, damage],
        )
    file_error = _ndjson_file_error(con) if shape.file_format == "ndjson" else None
    return StageResult(shape=shape, file_error=file_error, damage=damage)
