"""Data files: one operation of a pending export, written by DuckDB's COPY (no Python row loop).

Each member of the operation gets one entry with action `data_feed` and one per flow action, in
the order identifier, then data_feed, then the actions as configured — the same bytes on a retry.

Declared dialects (README "Flow exports"; the tests read the files back with exactly these):

- csv:   UTF-8, header row, ',' separator, '"' quotes around any value holding ',', '"' or a
         line break, '"' doubled inside quotes, other values as they are (spaces kept), '\\n' line
         ends; NULL is an empty unquoted field, an empty string is "".
- tsv:   the same with a tab separator: a value holding a tab, '"' or a line break is quoted.
- jsonl: UTF-8, one JSON object per line, keys in column order, NULL as null; custom contexts
         keep their JSON type (numbers stay numbers).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from ingest_pipeline.config import DATA_FEED_ACTION
from ingest_pipeline.exports.membership import PendingExport, PlannedFile

# Whitespace removed around an identifier before hashing: exactly what Python's str.strip()
# removes (every character for which str.isspace() is true).
_WHITESPACE = "".join(c for c in map(chr, range(0x110000)) if c.isspace())

_COPY_OPTIONS = {
    "csv": "FORMAT csv, HEADER true, DELIMITER ',', QUOTE '\"', ESCAPE '\"'",
    "tsv": "FORMAT csv, HEADER true, DELIMITER '\t', QUOTE '\"', ESCAPE '\"'",
    "jsonl": "FORMAT json, ARRAY false",
}


def _literal(value: str | None) -> str:
    if value is None:
        return "CAST(NULL AS VARCHAR)"
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def hashed_identifier_sql(column: str) -> str:
    """SHA-256 hex of the trimmed, lower-cased identifier."""
    return f"sha256(lower(trim({column}, {_literal(_WHITESPACE)})))"


def data_query(export: PendingExport, planned: PlannedFile) -> str:
    """The SELECT whose result is the data file of `planned` (columns in SPEC order)."""
    flow = export.flow
    actions = [DATA_FEED_ACTION, *flow.actions]
    action_rows = ", ".join(f"({i}, {_literal(a)})" for i, a in enumerate(actions))
    identifier = hashed_identifier_sql("r.identifier") if flow.hash_identity else "r.identifier"
    stamp = export.exported_at.strftime("%Y-%m-%d %H:%M:%S")
    if flow.format == "jsonl":
        contexts = [f"r.contexts -> {_literal(c)} AS {_ident(c)}" for c in flow.custom_contexts]
    else:
        contexts = [f"r.contexts ->> {_literal(c)} AS {_ident(c)}" for c in flow.custom_contexts]
    columns = [
        f"{identifier} AS identifier",
        f"{_literal(stamp)} AS {_ident('timestamp')}",
        f"{_literal(flow.segment.name)} AS segment_name",
        f"{_literal(flow.name)} AS flow_name",
        "a.action AS action",
        f"{_literal(flow.variant)} AS variant",
        f"{_literal(planned.operation)} AS operation",
        *contexts,
    ]
    return (
        f"SELECT {', '.join(columns)}\n"
        f"FROM flow_export_rows AS r\n"
        f"CROSS JOIN (VALUES {action_rows}) AS a(action_order, action)\n"
        f"WHERE r.export_id = {_literal(export.export_id)} "
        f"AND r.operation = {_literal(planned.operation)}\n"
        f"ORDER BY r.identifier, a.action_order"
    )


def write_data_file(
    con: duckdb.DuckDBPyConnection, export: PendingExport, planned: PlannedFile, dest: Path
) -> int:
    """Write the data file of `planned` to the local path `dest`; return its row count."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    options = _COPY_OPTIONS[export.flow.format]
    result = con.execute(
        f"COPY ({data_query(export, planned)}) TO {_literal(str(dest))} ({options})"
    ).fetchone()
    return int(result[0]) if result else 0
