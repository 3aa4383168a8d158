"""What happened to an uploaded file: the ledger's answer, or where it waits before that."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import duckdb

from ingest_pipeline import warehouse
from ingest_pipeline.api.uploads import FileKey, UploadStore

REJECTED_SAMPLE = 10
# A file before the ledger knows it: uploaded but not confirmed, or confirmed (or sent as JSON)
# and waiting for the sensor. Then the ledger's statuses (ledger.FileStatus).
WaitingStatus = Literal["awaiting confirmation", "queued"]


class WarehouseBusy(Exception):
    """The warehouse file is held by a writer longer than a status request waits."""


def _ledger_row(
    path: str, uri: str, tenant: str, wait_seconds: float
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    if not Path(path).exists():
        return None, []
    try:
        with warehouse.connect(path, read_only=True, wait_seconds=wait_seconds) as con:
            row = con.execute(
                """
                SELECT etag, status, rows_read, rows_loaded, rows_duplicate, rows_rejected, error
                FROM ingested_files WHERE source_uri = ? AND tenant_id = ?
                ORDER BY landed_at DESC NULLS LAST LIMIT 1
                """,
                [uri, tenant],
            ).fetchone()
            if row is None:
                return None, []
            keys = ("etag", "status", "rows_read", "rows_loaded", "rows_duplicate")
            found = dict(zip((*keys, "rows_rejected", "error"), row, strict=True))
            sample = con.execute(
                """
                SELECT line_number, reason, raw FROM rejected_rows
                WHERE source_uri = ? AND etag = ? ORDER BY line_number LIMIT ?
                """,
                [uri, found["etag"], REJECTED_SAMPLE],
            ).fetchall()
    except duckdb.CatalogException:  # a warehouse older than the ledger: nothing known yet
        return None, []
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise WarehouseBusy(str(exc)) from None
        raise
    rejected = [{"line": line, "reason": reason, "raw": raw} for line, reason, raw in sample]
    return found, rejected


def file_status(
    store: UploadStore, key: FileKey, warehouse_path: str, *, wait_seconds: float = 5.0
) -> dict[str, Any] | None:
    """The answer of GET /ingestion/files/{file_key}, or None when there is no such file."""
    answer: dict[str, Any] = {
        "file_key": key.key,
        "status": None,
        "rows_read": None,
        "rows_loaded": None,
        "rows_duplicate": None,
        "rows_rejected": None,
        "error": None,
        "rejected_sample": [],
    }
    landed = store.stat(key.key)
    if landed is None:
        if store.stat(key.staging_key) is None:
            return None
        waiting: WaitingStatus = "awaiting confirmation"
        answer["status"] = waiting
        return answer
    found, rejected = _ledger_row(warehouse_path, landed.uri, key.tenant, wait_seconds)
    if found is None:
        queued: WaitingStatus = "queued"
        answer["status"] = queued
        return answer
    found.pop("etag")
    answer.update(found)
    answer["rejected_sample"] = rejected
    return answer
