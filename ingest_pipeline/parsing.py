"""DuckDB SQL that reads one landed file as its records, each with its line number and raw text.

`open_records` gives SQL with one row per physical record of the file:
  line_number  BIGINT   line (NDJSON) or record (CSV, header = 1) number in the file
  raw          VARCHAR  the record's text as a person would see it
  error        VARCHAR  why the record cannot be read at all (bad JSON, wrong field count...)
  <field>      VARCHAR  each declared field, as text (NULL when absent)
  <extras>     JSON     every key/column that is not a declared field (readable records only)

NDJSON streams: the lines come from reading.ndjson_lines as Arrow batches, and nothing of the
file is kept once read. A CSV file is read by DuckDB's CSV reader into a temp table first (its
good records get their line numbers from the rejected ones). Typing and row rules are applied
afterwards (validation.py), so every record of the file is here and can be accounted for.
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
import pyarrow.compute as pc

from ingest_pipeline.feeds import FeedSpec
from ingest_pipeline.reading import (
    LINE_SCHEMA,
    FileBytes,
    UnsupportedFile,
    cut_after_last_line,
    ndjson_lines,
    write_plain,
)

__all__ = ["UnsupportedFile", "Records", "open_records", "detect_shape", "NdjsonFileCheck"]

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


def _ndjson_sql(feed: FeedSpec, lines: str) -> str:
    """SQL over the Arrow line batches registered as `lines`: each line checked, its fields and
    extras taken (only for the lines that are JSON objects).

    A readable line keeps its line end (LF or CRLF) in `raw`: JSON allows it as whitespace and
    not copying a million strings to drop one byte saves time; the quarantine strips it
    (quarantine_raw). The common case, a valid JSON object, is tested first and alone.
    """
    fields = feed.field_names
    paths = "[" + ", ".join(sql_str(_json_path(f)) for f in fields) + "]"
    field_cols = ",\n".join(
        f"CASE WHEN error IS NULL THEN extracted[{i + 1}] END AS {ident(f)}"
        for i, f in enumerate(fields)
    )
    # json_merge_patch with nulls removes the declared keys: what is left are the extras.
    remove_declared = sql_str("{" + ", ".join(f'"{f}": null' for f in fields) + "}")
    return f"""
        WITH decoded AS (
            -- (a UTF-8 byte order mark was dropped by the reader)
            SELECT line_number, overlong_bytes, raw AS bytes, try(decode(raw)) AS text
            FROM {lines}
        ),
        checked AS (
            SELECT line_number, bytes, text,
                CASE
                    WHEN overlong_bytes IS NOT NULL THEN
                        'line is longer than the parser''s limit of {MAX_LINE_BYTES} bytes ('
                        || overlong_bytes || ' bytes): split the record or send it through the '
                        || 'API in smaller records'
                    WHEN text IS NULL THEN 'line is not valid UTF-8 (the bytes that are not '
                        || 'UTF-8 are shown as \\xNN): re-export the file as UTF-8'
                    WHEN json_valid(text) AND NOT contains(text, chr(0)) THEN CASE
                        WHEN starts_with(text, '{{') OR json_type(text) = 'OBJECT' THEN NULL
                        ELSE 'line is JSON but not an object (it is ' || lower(json_type(text))
                            || '): each line must be one JSON object' END
                    WHEN contains(text, chr(0)) THEN
                        'line contains NUL bytes (\\0), which JSON does not allow'
                    WHEN regexp_full_match(text, '\\s*') THEN
                        'empty line: each line must be one JSON object'
                    ELSE {sql_str(INVALID_JSON)}
                END AS error
            FROM decoded
        )
        SELECT line_number,
            CASE WHEN text IS NOT NULL THEN text
                -- not UTF-8: every byte readable, the others shown as \\xNN; the cast escapes
                -- " ' \\ too: show them as they are (backslash last)
                ELSE replace(replace(replace(
                    regexp_replace(bytes::VARCHAR, '(\\\\x0D)?\\\\x0A$', ''),
                    '\\x22', '"'), '\\x27', ''''), '\\x5C', '\\') END AS raw,
            error,
            {field_cols},
            CASE WHEN error IS NULL THEN json_merge_patch(text, {remove_declared}) END
                AS {ident(feed.extras_column)}
        FROM (
            SELECT *,
                   CASE WHEN error IS NULL THEN json_extract_string(text, {paths}) END AS extracted
            FROM checked
        )
        """


def quarantine_raw(raw: pa.Array) -> pa.Array:
    """A record's text as the quarantine keeps it: without its line end (LF or CRLF, which is
    not part of the record) and at most RAW_TEXT_LIMIT characters."""
    without_end = pc.replace_substring_regex(raw, pattern="\\r?\\n$", replacement="")
    return pc.utf8_slice_codeunits(without_end, 0, RAW_TEXT_LIMIT)


def quarantine_raw_sql(column: str) -> str:
    """quarantine_raw in SQL, for a second read done by DuckDB."""
    return f"left(regexp_replace({column}, '\\r?\\n$', ''), {RAW_TEXT_LIMIT})"


def describe_invalid_json(raw: str) -> str:
    """Where an invalid JSON line breaks (Python's decoder reports the position)."""
    try:
        json.loads(raw)
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        col = getattr(exc, "colno", None)
        near = raw[max(0, (col or 1) - 11) : (col or 1) + 10] if col else ""
        return f"invalid JSON at column {col}: {msg} (near {near!r})"
    return INVALID_JSON  # DuckDB and Python disagree (e.g. NaN): keep the general reason


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


class NdjsonFileCheck:
    """Whether an NDJSON file as a whole is wrong (one JSON array or pretty-printed document,
    only NUL bytes), from counts gathered chunk by chunk as the records stream past."""

    def __init__(self) -> None:
        self.total = 0
        self.objects = 0
        self.nul_only = 0
        self.first_text: str | None = None  # the first non-blank line, left-trimmed

    def add(self, chunk: pa.Table) -> None:
        self.total += chunk.num_rows
        bad = chunk.filter(pc.is_valid(chunk["error"]))
        self.objects += chunk.num_rows - bad.num_rows
        if bad.num_rows:
            nul = pc.match_substring_regex(bad["raw"], "^\x00+\r?\n?$")
            self.nul_only += pc.sum(nul.cast(pa.int64())).as_py() or 0
        if self.first_text is None:
            stripped = pc.utf8_ltrim_whitespace(chunk["raw"])
            non_blank = stripped.filter(pc.greater(pc.utf8_length(stripped), 0))
            if len(non_blank):
                self.first_text = non_blank[0].as_py()[:1]

    def verdict(self) -> str | None:
        """The reason the whole file is refused, or None (then per-line reasons say it best)."""
        if self.objects * 2 >= self.total:
            return None
        if self.total and self.nul_only == self.total:
            return (
                "the file contains only NUL bytes (an upload that failed or was pre-allocated): "
                "send the file again"
            )
        if self.first_text == "[":
            return (
                "the file is one JSON array, not one JSON object per line: "
                "each line must be one JSON object"
            )
        if self.objects == 0 and self.first_text == "{" and self.total > 1:
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


# The view the NDJSON records SQL reads its Arrow line batches from.
NDJSON_LINES_VIEW = "ndjson_lines"


@dataclass
class Records:
    """The records of one landed file as SQL (see the module docstring for the columns).

    `sql()` may be called again for a second read (NDJSON streams are read afresh); `release()`
    after each read. `damage` says what is wrong with a gzip stream that stopped part way; for
    NDJSON it is known once the records have been read.
    """

    shape: FileShape
    feed: FeedSpec
    content: FileBytes

    def sql(self, con: duckdb.DuckDBPyConnection) -> str:
        if self.shape.file_format == "csv":
            return "SELECT * FROM staged"
        lines = ndjson_lines(self.content, max_line_bytes=MAX_LINE_BYTES, keep_bytes=RAW_TEXT_LIMIT)
        con.register(NDJSON_LINES_VIEW, pa.RecordBatchReader.from_batches(LINE_SCHEMA, lines))
        return _ndjson_sql(self.feed, NDJSON_LINES_VIEW)

    def release(self, con: duckdb.DuckDBPyConnection) -> None:
        """Forget the stream a read registered (a CSV file's table stays for a second read)."""
        if self.shape.file_format == "ndjson":
            con.unregister(NDJSON_LINES_VIEW)

    @property
    def damage(self) -> str | None:
        return _damage_reason(self.content) if self.content.damage else None


def open_records(con: duckdb.DuckDBPyConnection, path: Path, name: str, feed: FeedSpec) -> Records:
    """The records of the local file at `path` (`name` gives its format).

    Raises UnsupportedFile for a file that cannot be read at all (extension, not gzip, CSV
    without a header). A CSV file is read here into temp table `staged`; NDJSON when the SQL runs.
    """
    shape = detect_shape(name)
    records = Records(shape, feed, FileBytes(path, shape.compression))
    if shape.file_format == "ndjson":
        return records
    if shape.compression == "none":
        _stage_plain_csv(con, path, feed)
        return records
    plain = path.with_name(path.name + ".csv")
    try:
        write_plain(records.content, plain)
        if records.damage:
            cut_after_last_line(plain)
            if not read_csv_header(plain):
                raise UnsupportedFile(f"{records.damage} (no complete header row)")
        _stage_plain_csv(con, plain, feed)
    finally:
        plain.unlink(missing_ok=True)
    return records
