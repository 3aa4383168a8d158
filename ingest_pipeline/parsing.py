"""DuckDB SQL that reads one landed file as its records, each with its line number and raw text.

`open_records` gives SQL with one row per physical record of the file:
  line_number  BIGINT   line (NDJSON) or record (CSV, header = 1) number in the file
  raw          VARCHAR  the record's text as a person would see it
  error        VARCHAR  why the record cannot be read at all (bad JSON, wrong field count...)
  <field>      VARCHAR  each declared field, as text (NULL when absent)
  <extras>     JSON     every key/column that is not a declared field (readable records only)

NDJSON streams: the lines come from reading.ndjson_lines as Arrow batches, and nothing of the
file is kept once read. Python's JSON decoder only says where an invalid line breaks
(describe_invalid_json: it never raises, however deep the nesting or long the numbers); NaN and
Infinity, which DuckDB's JSON reader takes, are refused.

A CSV file's header record is read here (read_csv_header: quotes, CR/LF/CRLF, BOMs, at most
MAX_HEADER_BYTES and MAX_CSV_COLUMNS, refused with a reason when it cannot be read), then DuckDB's
CSV reader reads the records into a temp table, its columns named by position (good records get
their line numbers from the rejected ones). Where DuckDB gets a record wrong because of a quote -
an unterminated one swallows the rest of the file - the record is cut where it ends and the rest
of the file read again (stage_csv). A file whose line ends DuckDB's strict mode refuses is read
again with CRLF, then every CR, as LF. Typing and row rules are applied afterwards
(validation.py), so every record of the file is here and can be accounted for.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pyarrow.compute as pc

from ingest_pipeline.arrow import pa
from ingest_pipeline.feeds import FeedSpec, FieldSpec
from ingest_pipeline.reading import (
    LINE_SCHEMA,
    READ_BYTES,
    UTF8_BOM,
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
# DuckDB's JSON reader takes NaN, Infinity, inf and nan as numbers; JSON has none of them (and a
# warehouse JSON value holding one is no longer JSON): such a line is refused. Outside strings.
NOT_FINITE_JSON = (
    "invalid JSON: NaN and Infinity are not JSON values (JSON numbers are finite): write null "
    "or a number"
)
# A NaN or infinity outside strings: after the start of the line, anything but a quote or a
# whole string, then the word where a value starts (the line is valid JSON to DuckDB by then).
_NOT_FINITE = r'^(?:[^"]|"(?:[^"\\]|\\.)*")*?[:,\[]\s*-?(?i:nan|inf)'
# Invalid JSON lines whose error position is worked out (the rest keep the general reason).
DESCRIBE_JSON_ERRORS = 10_000
# The CSV header record is read here (not with Python's csv module, whose fields stop at 128 KiB):
# a header longer than this is refused.
MAX_HEADER_BYTES = 1 << 20
# Columns a CSV file may have: each is a DuckDB column (10,000 exhausted its 1 GB memory limit;
# 2,000 columns x 30,000 rows took a minute).
MAX_CSV_COLUMNS = 2048
# Records cut at a quote per file, at most (each cut reads the rest of the file again: a file of
# 300 lines each opening a quote took 8 s with 100); after that DuckDB's own grouping stands.
MAX_QUOTE_SPLITS = 20
# ... and fewer in a wide file, whose every read costs more (1,047 columns: 2 s for 100 records):
# at most QUOTE_SPLIT_CELLS / columns, and at least one.
QUOTE_SPLIT_CELLS = 2_000
# The two escapes of a quote inside a quoted CSV field (SPEC 3.1), in the order they are tried.
CSV_ESCAPES = ('"', "\\")


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


def json_path(name: str) -> str:
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
                        WHEN 'UNQUOTED VALUE' THEN {sql_str(_TEXT_AFTER_QUOTE.removeprefix("CSV record "))}
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


def _ndjson_sql(feed: FeedSpec, lines: str, file_index: str = "0::INTEGER") -> str:
    """SQL over the Arrow line batches registered as `lines`: each line checked, its fields and
    extras taken (only for the lines that are JSON objects).

    A readable line keeps its line end (LF or CRLF) in `raw`: JSON allows it as whitespace and
    not copying a million strings to drop one byte saves time; the quarantine strips it
    (quarantine_raw). The common case, a valid JSON object, is tested first and alone.
    """
    read = [f for f in feed.fields if f.fixed is None]
    paths = "[" + ", ".join(sql_str(json_path(f.source)) for f in read) + "]"
    position = {f.name: i + 1 for i, f in enumerate(read)}
    field_cols = ",\n".join(
        f"CASE WHEN error IS NULL THEN {sql_str(f.fixed)} END AS {ident(f.name)}"
        if f.fixed is not None
        else f"CASE WHEN error IS NULL THEN extracted[{position[f.name]}] END AS {ident(f.name)}"
        for f in feed.fields
    )
    # json_merge_patch with nulls removes the declared keys: what is left are the extras.
    remove_declared = sql_str("{" + ", ".join(f"{json.dumps(f.source)}: null" for f in read) + "}")
    extras = (
        "'{}'::JSON"
        if feed.undeclared == "ignore"
        else f"json_merge_patch(text, {remove_declared})"
    )
    return f"""
        WITH decoded AS (
            -- (a UTF-8 byte order mark was dropped by the reader)
            SELECT {file_index} AS file_index, line_number, overlong_bytes, raw AS bytes,
                   try(decode(raw)) AS text
            FROM {lines}
        ),
        checked AS (
            SELECT file_index, line_number, bytes, text,
                CASE
                    WHEN overlong_bytes IS NOT NULL THEN
                        'line is longer than the parser''s limit of {MAX_LINE_BYTES} bytes ('
                        || overlong_bytes || ' bytes): split the record or send it through the '
                        || 'API in smaller records'
                    WHEN text IS NULL THEN 'line is not valid UTF-8 (the bytes that are not '
                        || 'UTF-8 are shown as \\xNN): re-export the file as UTF-8'
                    WHEN json_valid(text) AND NOT contains(text, chr(0)) THEN CASE
                        WHEN (contains(lower(text), 'nan') OR contains(lower(text), 'inf'))
                             AND regexp_matches(text, {sql_str(_NOT_FINITE)})
                            THEN {sql_str(NOT_FINITE_JSON)}
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
        SELECT file_index, line_number,
            CASE WHEN text IS NOT NULL THEN text
                -- not UTF-8: every byte readable, the others shown as \\xNN; the cast escapes
                -- " ' \\ too: show them as they are (backslash last)
                ELSE replace(replace(replace(
                    regexp_replace(bytes::VARCHAR, '(\\\\x0D)?\\\\x0A$', ''),
                    '\\x22', '"'), '\\x27', ''''), '\\x5C', '\\') END AS raw,
            error,
            {field_cols},
            CASE WHEN error IS NULL THEN {extras} END AS {ident(feed.extras_column)}
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


class _NotJsonConstant(ValueError):
    """NaN or Infinity: Python's decoder takes them, JSON does not."""


def _not_json_constant(name: str) -> object:
    raise _NotJsonConstant(name)


# Only the position of the error matters: numbers are not converted (Python refuses integers of
# more than 4,300 digits, and converting is wasted work), NaN and Infinity are errors.
_JSON_DECODER = json.JSONDecoder(
    parse_int=lambda _text: 0, parse_float=lambda _text: 0, parse_constant=_not_json_constant
)
_SURROGATE = re.compile("[\ud800-\udfff]")
# A \uXXXX escape of a UTF-16 surrogate (an odd number of backslashes before the u); a high
# one followed by the escape of a low one is a pair.
_SURROGATE_ESCAPE = re.compile(
    r"(?<!\\)(?:\\\\)*\\u([dD][89abAB][0-9a-fA-F]{2})(\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    r"|(?<!\\)(?:\\\\)*\\u([dD][c-fC-F][0-9a-fA-F]{2})"
)


def _near(raw: str, col: int) -> str:
    return raw[max(0, col - 11) : col + 10]


def _has_lone_surrogate(value: object) -> bool:
    """Whether a decoded JSON value holds a lone UTF-16 surrogate in a key or a string (without
    recursion: the value may nest as deep as Python's decoder went)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _lone_surrogate_reason(raw: str) -> str | None:
    for match in _SURROGATE_ESCAPE.finditer(raw):
        high, low, lone_low = match.groups()
        if high is not None and low is not None:
            continue  # a pair: one character
        col = match.end() - 5  # the escape is the match's last 6 characters
        return (
            f"invalid JSON at column {col}: \\u{high or lone_low} is half of a UTF-16 surrogate "
            f"pair without its other half (near {_near(raw, col)!r}): write the character as "
            "UTF-8 or as a complete \\uD8xx\\uDCxx pair"
        )
    return None


def describe_invalid_json(raw: str) -> str:
    """Where an invalid JSON line breaks (Python's decoder reports the position).

    Never raises: a line nested deeper than Python's decoder follows (it recurses per level)
    gets a reason saying so, numbers of any length are skipped unconverted, and what Python
    takes but JSON (and DuckDB) does not - NaN, Infinity, lone UTF-16 surrogate escapes - is
    named.
    """
    try:
        value = _JSON_DECODER.decode(raw)
    except _NotJsonConstant:
        return NOT_FINITE_JSON
    except RecursionError:
        return (
            "invalid JSON: arrays/objects are nested too deeply (over about "
            f"{sys.getrecursionlimit()} levels) to say where the line breaks: check that every [ "
            "and { is closed, and that the line is one JSON object"
        )
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        col = getattr(exc, "colno", None)
        if col is None:
            return f"{INVALID_JSON} ({msg})"
        return f"invalid JSON at column {col}: {msg} (near {_near(raw, col)!r})"
    if _has_lone_surrogate(value):
        reason = _lone_surrogate_reason(raw)
        if reason is not None:
            return reason
    return INVALID_JSON  # DuckDB and Python disagree: keep the general reason


@dataclass(frozen=True)
class CsvHeader:
    """The header record of a CSV file: its column names and where it ends."""

    names: list[str]
    end: int  # bytes from the start of the file to just after the header's line end
    escapes: tuple[str, ...]  # the quote escapes under which the header reads so


_UNQUOTED_FIELD = re.compile(rb"[^,\r\n]*")
# Possessive: no backtracking (a quote that is never closed fails in one pass, not exponentially).
_QUOTED_FIELD = {
    '"': re.compile(rb'"([^"]*+(?:""[^"]*+)*+)"'),
    "\\": re.compile(rb'"([^"\\]*+(?:\\[\s\S][^"\\]*+)*+)"'),
}


def _unescape(value: bytes, escape: str) -> bytes:
    if escape == '"':
        return value.replace(b'""', b'"')
    return re.sub(rb"\\([\s\S])", rb"\1", value)


def _header_fields(data: bytes, start: int, escape: str, complete: bool) -> tuple[list[bytes], int]:
    """The fields of the header record at data[start:] and the offset after its line end, read
    as DuckDB reads a record: `,` separates, a quote opens a quoted field only at the start of a
    field, and the record ends at LF, CRLF or CR outside quotes. `complete`: data holds the whole
    file. Raises UnsupportedFile with what is wrong."""
    fields: list[bytes] = []
    pos, n = start, len(data)
    while True:
        if pos < n and data[pos : pos + 1] == b'"':
            match = _QUOTED_FIELD[escape].match(data, pos)
            if match is None:
                if not complete:
                    raise UnsupportedFile(_header_too_long())
                raise UnsupportedFile(
                    f"the CSV header row has an unterminated quote (column {len(fields) + 1} "
                    "opens a quote that is never closed): close the quote, or escape a quote "
                    'inside a quoted name as ""'
                )
            fields.append(_unescape(match.group(1), escape))
            pos = match.end()
            if pos < n and data[pos : pos + 1] not in (b",", b"\r", b"\n"):
                raise UnsupportedFile(
                    f"the CSV header row has text after the closing quote of column "
                    f'{len(fields)}: quote the whole name, and escape a quote inside it as ""'
                )
        else:
            match = _UNQUOTED_FIELD.match(data, pos)
            assert match is not None  # the pattern matches the empty string
            fields.append(match.group(0))
            pos = match.end()
        if pos >= n:
            if not complete:
                raise UnsupportedFile(_header_too_long())
            return fields, pos
        if data[pos : pos + 1] == b",":
            pos += 1
            continue
        pos += 2 if data[pos : pos + 2] == b"\r\n" else 1
        return fields, pos


def _header_too_long() -> str:
    return (
        f"the CSV header row is longer than {MAX_HEADER_BYTES} bytes (or opens a quote it does "
        "not close): the first line must be the header row, column names separated by ,"
    )


def read_csv_header(path: Path) -> CsvHeader:
    """The header record of an uncompressed CSV file (after any UTF-8 byte order marks).

    Read here rather than with Python's csv module (whose fields stop at 128 KiB), at most
    MAX_HEADER_BYTES. Raises UnsupportedFile, saying what to do, for a file without a header or
    with one that cannot be read: empty, a blank first line, too long, an unterminated quote,
    not UTF-8, unnamed, repeated or too many columns.
    """
    with open(path, "rb") as src:
        data = src.read(MAX_HEADER_BYTES + 1)
    complete = len(data) <= MAX_HEADER_BYTES
    start = 0
    while data.startswith(UTF8_BOM, start):  # a file written twice with a BOM has two
        start += len(UTF8_BOM)
    if start >= len(data):
        raise UnsupportedFile("the CSV file is empty: it has no header row")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnsupportedFile(
            "the file is UTF-16 text (it starts with a UTF-16 byte order mark): re-export it as "
            "UTF-8"
        )
    if not data.strip(b"\x00") and complete:
        raise UnsupportedFile(
            "the file contains only NUL bytes (an upload that failed or was pre-allocated): "
            "send the file again"
        )
    if data[start : start + 1] in (b"\r", b"\n"):
        raise UnsupportedFile(
            "the CSV file starts with a blank line: the first line must be the header row "
            "(column names separated by ,)"
        )
    read: dict[str, tuple[list[bytes], int]] = {}
    refusal: UnsupportedFile | None = None
    for escape in CSV_ESCAPES:
        try:
            read[escape] = _header_fields(data, start, escape, complete)
        except UnsupportedFile as exc:
            refusal = refusal or exc
    if not read:
        assert refusal is not None
        raise refusal
    fields, end = next(iter(read.values()))
    escapes = tuple(e for e, r in read.items() if r == (fields, end))
    if len(fields) > MAX_CSV_COLUMNS:
        raise UnsupportedFile(
            f"the CSV header has {len(fields)} columns, more than the {MAX_CSV_COLUMNS} the reader "
            "takes: split the file into files with fewer columns"
        )
    names = []
    for i, field in enumerate(fields, start=1):
        if b"\x00" in field:
            raise UnsupportedFile(
                f"the CSV header row holds NUL bytes (\\0, column {i}): the file is not UTF-8 "
                "text (UTF-16, binary, or a damaged upload); re-export it as UTF-8 CSV"
            )
        try:
            names.append(field.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise UnsupportedFile(
                f"the CSV header row is not valid UTF-8 (column {i}: {field[:80]!r}, byte "
                f"{exc.start + 1}): re-export the file as UTF-8"
            ) from None
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise UnsupportedFile(f"the CSV header repeats column(s) {', '.join(duplicated)}")
    blank = [i + 1 for i, c in enumerate(names) if not c.strip()]
    if blank:
        raise UnsupportedFile(f"the CSV header has unnamed column(s) at position(s) {blank}")
    return CsvHeader(names, end, escapes)


def _column(i: int) -> str:
    """The DuckDB name of the CSV file's i-th column (0-based): by position, so that any header
    name (case-insensitive duplicates for SQL, quotes, NULs, 100 KB long) reads the same."""
    return f"column{i}"


def _csv_scan(path: Path, columns: int, escape: str) -> str:
    types = "{" + ", ".join(f"'{_column(i)}': 'VARCHAR'" for i in range(columns)) + "}"
    return (
        f"read_csv({sql_str(str(path))}, columns = {types}, header = true, delim = ',', "
        f"quote = '\"', escape = {sql_str(escape)}, auto_detect = false, strict_mode = true, "
        f"store_rejects = true, max_line_size = {MAX_LINE_BYTES}, compression = 'none')"
    )


def _scan_csv(con: duckdb.DuckDBPyConnection, path: Path, columns: int, escape: str) -> int:
    """Read the records into temp table `csv_rows`; returns how many records DuckDB rejected."""
    _fresh_rejects(con)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE csv_rows AS SELECT * FROM {_csv_scan(path, columns, escape)}"
    )
    return con.execute("SELECT count(DISTINCT line) FROM reject_errors").fetchall()[0][0]


# From this many columns on a record's text is built by one lambda over the list of its fields:
# binding a CASE per column took 1.2 s for 1,000 columns (0.14 s as a lambda), but the lambda is
# slower per row (2M rows of 3 columns: 1.4 s -> 1.8 s).
WIDE_RECORD_TEXT = 64


def _csv_record_text(columns: int) -> str:
    """SQL re-serialising a parsed CSV row as a CSV line (its raw text in the quarantine)."""

    def field(c: str) -> str:
        # four `contains` cost two thirds of one regexp_matches (1M records of 7 fields:
        # 0.65 s against 1.0 s)
        special = " OR ".join(
            f"contains({c}, {char})" for char in ("'\"'", "','", "chr(10)", "chr(13)")
        )
        return (
            f"CASE WHEN {c} IS NULL THEN '' WHEN {special} "
            f"THEN '\"' || replace({c}, '\"', '\"\"') || '\"' ELSE {c} END"
        )

    names = [_column(i) for i in range(columns)]
    if columns >= WIDE_RECORD_TEXT:
        fields = "[" + ", ".join(names) + "]"
        return f"array_to_string(list_transform({fields}, lambda f: {field('f')}), ',')"
    return "concat_ws(',', " + ", ".join(map(field, names)) + ")"


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


def _skipped_line_numbers(
    con: duckdb.DuckDBPyConnection, path: Path, escape: str, columns: int
) -> None:
    """Temp table `not_records`: the line numbers (as DuckDB counts them) of rejected records
    and of blank lines, which DuckDB skips silently but counts. In a file of one column a blank
    line is a record (one empty field), which DuckDB reads as one."""
    con.execute("CREATE OR REPLACE TEMP TABLE not_records AS SELECT line_number FROM read_rejects")
    if columns == 1 or not _has_blank_line(path):
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


@dataclass(frozen=True)
class _QuoteSplit:
    """A record DuckDB's reader got wrong because of a quote, cut where it really ends: at the
    end of the physical line where it opens a quote it does not close there (DuckDB would read
    on to the end of the file, or to a later quote), or where a record with text after a closing
    quote ends (DuckDB can lose its place in one, and then splits it in two)."""

    line: int  # the record's number (as DuckDB counts in the file read)
    raw: str
    reason: str
    rest: int  # offset of the first byte after the record


_SPECIAL = {'"': re.compile(rb'"'), "\\": re.compile(rb'["\\]')}
_FIELD_END = re.compile(rb"[,\r\n]")
_LINE_END = re.compile(rb"[\r\n]")
_UNTERMINATED = (
    "CSV record has an unescaped or unterminated quote: field {column} opens a quote that is not "
    "closed on its line (the reader would have run on to {until}); close the quote, or escape a "
    'quote inside a quoted field as "" or \\" (the lines after this one were read as records of '
    "their own)"
)
_TEXT_AFTER_QUOTE = (
    "CSV record has an unescaped or unterminated quote: close the quoted field, or escape a quote "
    'inside it as "" or \\"'
)


def _closing_quote(src, opening: int, escape: str) -> int | None:  # noqa: ANN001 - binary file
    """Offset of the quote closing the quoted field opened at `opening`, or None when the file
    ends first (streaming, READ_BYTES at a time)."""
    src.seek(opening + 1)
    base, buf, i = opening + 1, src.read(READ_BYTES), 0
    while True:
        match = _SPECIAL[escape].search(buf, i)
        j = match.start() if match else -1
        if j < 0 or j + 1 >= len(buf):  # the byte after a quote or escape is needed
            more = src.read(READ_BYTES)
            if not more:
                return base + j if j >= 0 and buf[j : j + 1] == b'"' else None
            keep = j if j >= 0 else len(buf)
            base, buf, i = base + keep, buf[keep:] + more, 0
            continue
        if buf[j : j + 1] == b'"' and not (escape == '"' and buf[j + 1 : j + 2] == b'"'):
            return base + j
        i = j + 2  # an escaped quote or escape character


def _find(src, start: int, pattern: re.Pattern[bytes]) -> tuple[int, bytes] | None:  # noqa: ANN001
    """(offset, byte) of the first byte from `start` on that `pattern` matches, streaming."""
    src.seek(start)
    base = start
    while chunk := src.read(READ_BYTES):
        match = pattern.search(chunk)
        if match is not None:
            return base + match.start(), chunk[match.start() : match.start() + 1]
        base += len(chunk)
    return None


def _after_line_end(src, at: int, byte: bytes) -> int:  # noqa: ANN001 - binary file
    """The offset after the line end at `at` (CR, LF or CRLF)."""
    if byte == b"\r":
        src.seek(at + 1)
        return at + (2 if src.read(1) == b"\n" else 1)
    return at + 1


def _line_end(src, start: int) -> tuple[int, int]:  # noqa: ANN001 - binary file
    """(offset of the line end, offset after it) of the physical line holding `start`: LF, CRLF
    or CR; the end of the file when no line end follows."""
    found = _find(src, start, _LINE_END)
    if found is None:
        size = src.seek(0, 2)
        return size, size
    return found[0], _after_line_end(src, *found)


def _line_start(src, at: int) -> int:  # noqa: ANN001 - binary file
    """Offset of the start of the physical line holding `at` (reading backwards)."""
    end = at
    while end > 0:
        start = max(0, end - READ_BYTES)
        src.seek(start)
        chunk = src.read(end - start)
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _scan_record(src, start: int, escape: str) -> tuple[int, tuple[int, int, str] | None]:  # noqa: ANN001
    """Read the record at `start` as the file has it: `,` separates fields, a quote opens a
    quoted field only at the start of a field (text after its closing quote belongs to the
    field), and the record ends at a line end outside quotes. Returns (offset after the record,
    None), or for a field that opens a quote not closed on its line - never closed, or only by a
    quote where a field could start on a later line (the next unterminated quote, most likely) -
    (offset after that line, (field number, offset of that line's end, what the quote ran to))."""
    pos, field = start, 1
    while True:
        src.seek(pos)
        if src.read(1) == b'"':
            closing = _closing_quote(src, pos, escape)
            end, after = _line_end(src, pos)
            if closing is None:
                return after, (field, end, "the end of the file")
            src.seek(closing - 1)
            if closing > end and src.read(1) in (b",", b"\r", b"\n"):
                return after, (field, end, "a quote on a later line that starts a field")
            pos = closing + 1
        found = _find(src, pos, _FIELD_END)
        if found is None:
            return src.seek(0, 2), None
        at, byte = found
        if byte != b",":
            return _after_line_end(src, at, byte), None
        pos, field = at + 1, field + 1


def _without_line_end(text: bytes) -> bytes:
    if text.endswith(b"\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith((b"\r", b"\n")) else text


def _quote_split(con: duckdb.DuckDBPyConnection, path: Path, escape: str) -> _QuoteSplit | None:
    """The first record of the last scan that DuckDB's reader got wrong because of a quote:

    * it opens a quote not closed on its line - never closed, or only by a quote where a field
      could start (the next unterminated quote, most likely): the record ends with that line;
    * DuckDB's record (its `csv_line`) is not the record of the file: after text that follows a
      closing quote it can lose its place (report another record's text, read the rest of the
      line as a record of its own): the record ends where the file says.

    A quoted field that closes, line breaks and all, is left alone, and so is a record DuckDB
    rejects as the file has it.
    """
    candidates = con.execute(
        """
        SELECT line, line_byte_position, byte_position, csv_line
        FROM reject_errors
        WHERE error_type = 'UNQUOTED VALUE' AND byte_position IS NOT NULL
          AND line_byte_position IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY line ORDER BY byte_position) = 1
        ORDER BY line
        """
    ).fetchall()
    size = path.stat().st_size
    with open(path, "rb") as src:
        for line, line_position, error_position, csv_line in candidates:
            at = error_position - 1  # DuckDB's positions count from 1
            if not 0 <= at < size:
                continue  # not where DuckDB's positions were expected: leave its verdict
            duck = (csv_line or "").lstrip("\r\n").encode()
            start = max(line_position - 1, 0)
            src.seek(start)
            lead = src.read(max(at - start, 0) + 1)
            start += len(lead) - len(lead.lstrip(b"\r\n"))  # line ends before the record
            src.seek(start)
            if not start <= at < start + len(duck) or src.read(min(len(duck), 256)) != duck[:256]:
                start = _line_start(src, at)  # DuckDB lost its place: the error's line
            after, unterminated = _scan_record(src, start, escape)
            if unterminated is not None:
                field, end, until = unterminated
                src.seek(start)
                text = src.read(min(end - start, RAW_TEXT_LIMIT * 4))
                reason = _UNTERMINATED.format(column=field, until=until)
            else:
                src.seek(start)
                text = _without_line_end(src.read(min(after - start, RAW_TEXT_LIMIT * 4)))
                if text == _without_line_end(duck) or (len(duck) >= 1000 and text.startswith(duck)):
                    continue  # DuckDB read the record as the file has it
                reason = _TEXT_AFTER_QUOTE
            raw = text.decode("utf-8", "replace")[:RAW_TEXT_LIMIT]
            return _QuoteSplit(line, raw, reason, after)
    return None


def _without_header(path: Path, header: CsvHeader, rest: int, dest: Path) -> None:
    """Write the header record and the file from offset `rest` on to `dest` (streaming)."""
    with open(path, "rb") as src, open(dest, "wb") as out:
        out.write(src.read(header.end))
        src.seek(rest)
        shutil.copyfileobj(src, out, READ_BYTES)


def _stage_part(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    header: CsvHeader,
    feed: FeedSpec,
    line_offset: int,
    split_quotes: bool,
    escapes: tuple[str, ...],
) -> tuple[_QuoteSplit | None, str]:
    """Add the records of one CSV file (or what follows a quote split) to temp table `staged`,
    their line numbers shifted by `line_offset`. Returns the quote split that ends this part
    (its record is staged as rejected, the records after it are left for the next part) and the
    escape the part was read with."""
    columns = len(header.names)
    # DuckDB takes one escape character; files use either "" or \" . Try both, keep the reading
    # with fewer rejected records.
    best: tuple[int, str] | None = None
    for escape in escapes:
        rejected = _scan_csv(con, path, columns, escape)
        if best is None or rejected < best[0]:
            best = (rejected, escape)
        if rejected == 0:
            break
    assert best is not None
    if best[1] != escape:
        _scan_csv(con, path, columns, best[1])
    split = _quote_split(con, path, best[1]) if split_quotes and best[0] else None

    index = {name: i for i, name in enumerate(header.names)}

    def field_value(f: FieldSpec) -> str:
        if f.fixed is not None:
            return sql_str(f.fixed)
        return _column(index[f.source]) if f.source in index else "NULL::VARCHAR"

    field_cols = ", ".join(f"{field_value(f)} AS {ident(f.name)}" for f in feed.fields)
    extras = [] if feed.undeclared == "ignore" else undeclared_columns(header.names, feed)
    extras_json = (
        "json_object("
        + ", ".join(f"{sql_str(name)}, {_column(index[name])}" for name in extras)
        + ")"
        if extras
        else "'{}'::JSON"
    )
    _reader_rejects(con, columns)
    before = ""
    if split is not None:
        # The records DuckDB read after the split one are read again in the next part.
        con.execute("DELETE FROM read_rejects WHERE line_number >= ?", [split.line])
        con.execute(
            "INSERT INTO read_rejects VALUES (?, ?, ?)", [split.line, split.raw, split.reason]
        )
        before = f"WHERE line_number < {split.line}"
    _skipped_line_numbers(con, path, best[1], columns)
    into = "INSERT INTO staged" if line_offset else "CREATE OR REPLACE TEMP TABLE staged AS"
    con.execute(
        f"""
        {into}
        WITH {_numbered(con, "csv_rows", first_line=2)}
        SELECT line_number + {line_offset} AS line_number, {_csv_record_text(columns)} AS raw,
               NULL::VARCHAR AS error, {field_cols},
               {extras_json}::JSON AS {ident(feed.extras_column)}
        FROM numbered {before}
        UNION ALL
        SELECT line_number + {line_offset}, raw, error,
               {", ".join(f"NULL::VARCHAR AS {ident(f)}" for f in feed.field_names)},
               NULL::JSON AS {ident(feed.extras_column)}
        FROM read_rejects
        """
    )
    con.execute("DROP TABLE csv_rows; DROP TABLE not_records")
    return split, best[1]


def undeclared_columns(names: Sequence[str], feed: FeedSpec) -> list[str]:
    """The columns of a CSV header no field of the feed reads, in file order."""
    declared = {f.source for f in feed.fields if f.fixed is None}
    return [name for name in names if name not in declared]


def stage_csv(con: duckdb.DuckDBPyConnection, path: Path, feed: FeedSpec) -> list[str]:
    """Temp table `staged` from an uncompressed CSV file: one row per record.

    A record that opens a quote it does not close on its line (DuckDB's reader would take the
    rest of the file, or everything up to the next such quote, as that one record) is cut at the
    end of that physical line and rejected with a reason saying so; so is a record where DuckDB
    lost its place after text following a closing quote, at the record's end (_quote_split).
    The lines after the cut are read again as records, with their own line numbers (header, then
    the rest of the file from after the cut, in a temp file copied by streaming). At most
    MAX_QUOTE_SPLITS cuts per file, fewer for a wide one (QUOTE_SPLIT_CELLS).
    """
    header = read_csv_header(path)
    if feed.header_required:
        missing = [
            f
            for f in feed.fields
            if f.required and f.fixed is None and f.source not in set(header.names)
        ]
        if missing:
            names = ", ".join(f"'{f.source}' (mapped to {f.name})" for f in missing)
            raise UnsupportedFile(
                f"the file has no column {names}: the mapping is mandatory; add the column to "
                "the file, or map the column that holds it in the manifest"
            )
    max_splits = max(1, min(MAX_QUOTE_SPLITS, QUOTE_SPLIT_CELLS // len(header.names)))
    part, line_offset, splits, escapes = path, 0, 0, header.escapes
    try:
        while True:
            split, escape = _stage_part(
                con,
                part,
                header,
                feed,
                line_offset,
                split_quotes=splits < max_splits,
                escapes=escapes,
            )
            escapes = (escape,)  # the rest of the file is read with the first part's escape
            if split is None:
                return header.names
            splits += 1
            line_offset += split.line - 1  # the record after the split is line 2 of the next part
            rest = path.with_name(f"{path.name}.after-quote-{splits}")
            _without_header(part, header, split.rest, rest)
            if part != path:
                part.unlink(missing_ok=True)
            part = rest
            if rest.stat().st_size <= header.end:
                return header.names
    finally:
        if part != path:
            part.unlink(missing_ok=True)


class NdjsonFileCheck:
    """Whether an NDJSON file as a whole is wrong (one JSON array or pretty-printed document,
    only NUL bytes), from counts gathered chunk by chunk as the records stream past."""

    def __init__(self) -> None:
        self.total = 0
        self.objects = 0
        self.nul_only = 0
        self.first_text: str | None = None  # the first non-blank line's first character
        self.first_line: int | None = None

    def add(self, chunk: pa.Table) -> None:
        self.total += chunk.num_rows
        bad = chunk.filter(pc.is_valid(chunk["error"]))
        self.objects += chunk.num_rows - bad.num_rows
        if bad.num_rows:
            nul = pc.match_substring_regex(bad["raw"], "^\x00+\r?\n?$")
            self.nul_only += pc.sum(nul.cast(pa.int64())).as_py() or 0
        # The first non-blank line by number, not by position: DuckDB may hand the records
        # of a chunk over in another order.
        stripped = pc.utf8_ltrim_whitespace(chunk["raw"])
        non_blank = pc.greater(pc.utf8_length(stripped), 0)
        numbers = chunk["line_number"].filter(non_blank)
        if len(numbers):
            first = pc.min(numbers).as_py()
            if self.first_line is None or first < self.first_line:
                at = pc.index(chunk["line_number"], first).as_py()
                self.first_line, self.first_text = first, stripped[at].as_py()[:1]

    @staticmethod
    def may_refuse(objects: int, total: int) -> bool:
        """Whether a file of `total` records, `objects` of them JSON objects, can get a verdict
        on the whole file: only when fewer than half are objects."""
        return objects * 2 < total

    def verdict(self) -> str | None:
        """The reason the whole file is refused, or None (then per-line reasons say it best)."""
        if not self.may_refuse(self.objects, self.total):
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


def normalize_line_ends(path: Path, dest: Path, *, lone_cr: bool = False) -> None:
    """Copy the file to `dest` with CRLF line ends turned into LF (and with `lone_cr`, every
    other CR too), streaming."""
    with open(path, "rb") as src, open(dest, "wb") as out:
        carry = b""
        while chunk := src.read(READ_BYTES):
            chunk = carry + chunk
            # a CR at the end of a chunk may be the first half of a CRLF
            carry, chunk = (b"\r", chunk[:-1]) if chunk.endswith(b"\r") else (b"", chunk)
            chunk = chunk.replace(b"\r\n", b"\n")
            out.write(chunk.replace(b"\r", b"\n") if lone_cr else chunk)
        out.write(b"\n" if carry and lone_cr else carry)


def _mixed_line_ends(exc: duckdb.Error) -> bool:
    """DuckDB's strict CSV mode refuses a file that mixes line ends (CRLF and LF, or a CR that
    is not part of a CRLF in a file of LF, outside quotes) with this error."""
    return "state machine reached an invalid state" in str(exc)


def _stage_plain_csv(con: duckdb.DuckDBPyConnection, path: Path, feed: FeedSpec) -> list[str]:
    """stage_csv; a file whose line ends DuckDB cannot follow is read again from a copy with
    CRLF turned into LF, then (if it still fails) with every CR read as a line end, as Python's
    csv module and spreadsheets read them."""
    try:
        return stage_csv(con, path, feed)
    except duckdb.InvalidInputException as exc:
        if not _mixed_line_ends(exc):
            raise
    lf_only = path.with_name(path.name + ".lf")
    try:
        for lone_cr in (False, True):
            normalize_line_ends(path, lf_only, lone_cr=lone_cr)
            try:
                return stage_csv(con, lf_only, feed)
            except duckdb.InvalidInputException as exc:
                if not _mixed_line_ends(exc):
                    raise
    finally:
        lf_only.unlink(missing_ok=True)
    raise UnsupportedFile(  # pragma: no cover - every line end is LF by now
        "the CSV reader cannot follow the file's line ends: re-export it with one kind of line "
        "end (LF or CRLF)"
    )


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
    columns: list[str] | None = None  # a CSV file's header

    def sql(self, con: duckdb.DuckDBPyConnection) -> str:
        if self.shape.file_format == "csv":
            return "SELECT 0::INTEGER AS file_index, * FROM staged"
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
    if feed.strict_json and shape.file_format != "ndjson":
        # its rules read each record's JSON types (validation.json_type_column)
        raise UnsupportedFile(
            f"the {feed.name} stream takes JSON lines (.jsonl, optionally .gz), not CSV"
        )
    records = Records(shape, feed, FileBytes(path, shape.compression))
    if shape.file_format == "ndjson":
        return records
    if shape.compression == "none":
        records.columns = _stage_plain_csv(con, path, feed)
        return records
    plain = path.with_name(path.name + ".csv")
    try:
        write_plain(records.content, plain)
        if records.damage:
            cut_after_last_line(plain)
            try:
                read_csv_header(plain)
            except UnsupportedFile:
                raise UnsupportedFile(f"{records.damage} (no complete header row)") from None
        records.columns = _stage_plain_csv(con, plain, feed)
    finally:
        plain.unlink(missing_ok=True)
    return records


# The line batches of several files, each with the index of its file (NdjsonPass).
INDEXED_LINE_SCHEMA = LINE_SCHEMA.append(pa.field("file_index", pa.int32()))
NDJSON_PASS_VIEW = "ndjson_pass_lines"
PASS_BATCH_LINES = 16_384


@dataclass
class NdjsonPass:
    """The records of several NDJSON files read as one stream (the columns of `Records`, with
    `file_index` saying whose each line is): many small files cost one DuckDB query, not one
    each. `damage(i)` says what is wrong with file i's gzip stream once the records are read."""

    feed: FeedSpec
    contents: list[FileBytes | None]  # None: refused when opened (read it alone for why)

    def sql(self, con: duckdb.DuckDBPyConnection) -> str:
        def batches():
            # Small files give batches of a few lines: DuckDB pays per batch, so they are handed
            # over joined into batches of PASS_BATCH_LINES lines (in order).
            pending: list[pa.RecordBatch] = []
            lines = 0
            for index, content in enumerate(self.contents):
                if content is None:
                    continue
                for batch in ndjson_lines(
                    content, max_line_bytes=MAX_LINE_BYTES, keep_bytes=RAW_TEXT_LIMIT
                ):
                    column = pa.array(np.full(batch.num_rows, index, np.int32))
                    pending.append(
                        pa.record_batch([*batch.columns, column], schema=INDEXED_LINE_SCHEMA)
                    )
                    lines += batch.num_rows
                    if lines >= PASS_BATCH_LINES:
                        yield pa.concat_batches(pending)
                        pending, lines = [], 0
            if pending:
                yield pa.concat_batches(pending)

        con.register(
            NDJSON_PASS_VIEW, pa.RecordBatchReader.from_batches(INDEXED_LINE_SCHEMA, batches())
        )
        return _ndjson_sql(self.feed, NDJSON_PASS_VIEW, file_index="file_index")

    def release(self, con: duckdb.DuckDBPyConnection) -> None:
        con.unregister(NDJSON_PASS_VIEW)

    def damage(self, index: int) -> str | None:
        """What is wrong with file `index` as a whole, once the records are read: its gzip
        stream stopped part way, or it could not be opened at all."""
        content = self.contents[index]
        if content is None:
            return "refused when opened"
        return _damage_reason(content) if content.damage else None


def ndjson_pass(paths: list[Path], names: list[str], feed: FeedSpec) -> NdjsonPass:
    """The NDJSON files at `paths` (`names` give their format and compression) as one stream.
    A file that cannot be opened as what it says (not NDJSON, not gzip) is left out of the
    stream, with a damage."""
    contents: list[FileBytes | None] = []
    for path, name in zip(paths, names, strict=True):
        try:
            shape = detect_shape(name)
            if shape.file_format != "ndjson":
                raise UnsupportedFile(f"{name}: not an NDJSON file")
            contents.append(FileBytes(path, shape.compression))
        except UnsupportedFile:
            contents.append(None)
    return NdjsonPass(feed, contents)
