"""One landed file's report, as a person asks for it: its ledger row (status, counts, error),
its first rejected lines with their reasons, and the aliases it sent that the identity graph
refused (with why) - everything that happened to the file, from the warehouse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb


@dataclass
class FileReportView:
    ledger: list[dict[str, Any]]  # one row per version (etag) of the file
    rejected: list[dict[str, Any]] = field(default_factory=list)
    refused_aliases: list[dict[str, Any]] = field(default_factory=list)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def file_report(
    con: duckdb.DuckDBPyConnection, source_uri: str, limit: int = 20
) -> FileReportView | None:
    """The report of the file at `source_uri`, or None when the ledger does not know it."""
    ledger = _rows(
        con,
        "SELECT source_uri, etag, feed, tenant_id, status, rows_read, rows_loaded, "
        "rows_duplicate, rows_rejected, error, notes, landed_at, finished_at FROM ingested_files "
        "WHERE source_uri = ? ORDER BY landed_at DESC NULLS LAST",
        [source_uri],
    )
    if not ledger:
        return None
    rejected = _rows(
        con,
        "SELECT etag, line_number, reason, raw FROM rejected_rows WHERE source_uri = ? "
        "ORDER BY etag, line_number LIMIT ?",
        [source_uri, limit],
    )
    refused = _rows(
        con,
        "SELECT line_number, alias_key, contact_key, refused_reason FROM aliases "
        "WHERE source_uri = ? AND refused_reason IS NOT NULL ORDER BY line_number LIMIT ?",
        [source_uri, limit],
    )
    return FileReportView(ledger, rejected, refused)


def render(view: FileReportView) -> str:
    lines = []
    for row in view.ledger:
        lines.append(
            f"{row['source_uri']} (version {row['etag']}, feed {row['feed']}, tenant "
            f"{row['tenant_id']}): {row['status']}"
        )
        lines.append(
            f"  rows read {row['rows_read']}, loaded {row['rows_loaded']}, duplicate "
            f"{row['rows_duplicate']}, rejected {row['rows_rejected']}"
        )
        if row["error"]:
            lines.append(f"  error: {row['error']}")
        if row["notes"]:
            lines.append(f"  note: {row['notes']}")
    if view.rejected:
        lines.append("rejected lines:")
        for r in view.rejected:
            lines.append(f"  line {r['line_number']}: {r['reason']}")
            lines.append(f"      {(r['raw'] or '')[:160]}")
    if view.refused_aliases:
        lines.append("aliases not applied to the identity graph:")
        for r in view.refused_aliases:
            lines.append(
                f"  line {r['line_number']}: {r['alias_key']} -> {r['contact_key']}: "
                f"{r['refused_reason']}"
            )
    return "\n".join(lines)
