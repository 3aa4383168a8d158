"""One flow's export, exactly once: plan (warehouse) -> write files (target) -> commit (warehouse).

    result = export_flow(flow, warehouse_path="data/warehouse.duckdb", default_target_url="./data/exports")

1. `membership.plan_export` — one transaction: the flow's pending export if an earlier run left
   one, else the delta between the segment and the membership, stored with its file names and
   timestamp fixed. No change: nothing is stored and no file is written.
2. For each operation with rows: its data file is written locally by DuckDB, delivered to the
   target (complete at its final name when `put_file` returns), then its control file.
3. `membership.commit_export` — one transaction: the delta is applied to flow_memberships.

A run that dies anywhere before 3 leaves the export pending; the next run (step 1) finds it and
writes the same names with the same bytes again, then commits, then computes the next delta.
Warehouse connections are opened per step and closed before any network I/O.
"""

from __future__ import annotations

import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from ingest_pipeline import warehouse
from ingest_pipeline.config import FlowConfig
from ingest_pipeline.exports import membership, writers
from ingest_pipeline.exports.control import control_bytes, control_document
from ingest_pipeline.exports.membership import PendingExport
from ingest_pipeline.exports.targets import open_target, resolve_target_url


class ExportError(RuntimeError):
    """An export that wrote something other than what it planned; nothing was committed."""


@dataclass(frozen=True)
class WrittenFile:
    operation: str
    data_url: str
    control_url: str
    members: int
    rows: int


@dataclass(frozen=True)
class ExportOutcome:
    export_id: str
    resumed: bool  # planned by an earlier run that did not finish it
    exported_at: datetime
    members_added: int
    members_removed: int
    files: tuple[WrittenFile, ...]
    committed_here: bool  # False: another run committed it first (nothing applied twice)


@dataclass
class FlowExportResult:
    flow: FlowConfig
    target_url: str
    exports: list[ExportOutcome] = field(default_factory=list)
    segment_members: int | None = None  # members the segment returned in this run
    members_before: int | None = None  # flow membership before this run's own delta

    @property
    def changed(self) -> bool:
        return bool(self.exports)

    @property
    def files(self) -> list[WrittenFile]:
        return [f for e in self.exports for f in e.files]

    def rows_by_operation(self) -> dict[str, int]:
        out = {op: 0 for op in membership.OPERATIONS}
        for f in self.files:
            out[f.operation] += f.rows
        return out

    def members_by_operation(self) -> dict[str, int]:
        return {
            "add": sum(e.members_added for e in self.exports),
            "remove": sum(e.members_removed for e in self.exports),
        }


def write_local_files(
    con: duckdb.DuckDBPyConnection, export: PendingExport, staging: Path
) -> dict[str, tuple[Path, int]]:
    """Write every planned data file of `export` into the local folder `staging` (DuckDB COPY
    from flow_export_rows); data file name -> (path, rows)."""
    local = {}
    for planned in export.files:
        path = staging / planned.data_name
        rows = writers.write_data_file(con, export, planned, path)
        if rows != planned.rows:
            raise ExportError(
                f"export {export.export_id}: {planned.data_name} has {rows} rows, "
                f"{planned.rows} were planned; nothing was delivered"
            )
        local[planned.data_name] = (path, rows)
    return local


def deliver(
    export: PendingExport,
    local: dict[str, tuple[Path, int]],
    *,
    s3_client: Any = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[WrittenFile, ...]:
    """Phase 2: deliver every data file, each followed by its control file."""
    flow = export.flow
    written = []
    with open_target(export.target_url, flow, s3_client) as target:
        control_path = posixpath.join(target.prefix, flow.path) if flow.path else target.prefix
        for planned in export.files:
            path, rows = local[planned.data_name]
            data_key = f"{planned.folder}/{planned.data_name}"
            control_key = f"{planned.folder}/{planned.control_name}"
            target.put_file(path, data_key)  # complete at its final name when this returns
            document = control_document(
                bucket=target.bucket,
                path=control_path,
                file_type=flow.format,
                file_url=target.file_url(data_key),
                rows=rows,
                flow_id=flow.id,
                flow_name=flow.name,
            )
            target.put_bytes(control_bytes(document), control_key)
            log(f"flow {flow.id}: wrote {target.file_url(data_key)} ({rows} rows) + control")
            written.append(
                WrittenFile(
                    operation=planned.operation,
                    data_url=target.file_url(data_key),
                    control_url=target.file_url(control_key),
                    members=planned.members,
                    rows=rows,
                )
            )
    return tuple(written)


def export_flow(
    flow: FlowConfig,
    *,
    warehouse_path: str | Path,
    default_target_url: str,
    s3_client: Any = None,
    now: datetime | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> FlowExportResult:
    """Finish the flow's pending export if there is one, then export its current delta."""
    target_url = resolve_target_url(flow, default_target_url)
    result = FlowExportResult(flow=flow, target_url=target_url)
    # At most two rounds: a pending export left by an earlier run, then this run's own delta.
    for _ in range(2):
        with tempfile.TemporaryDirectory(prefix="flow-export-") as staging:
            # Phase 1, and the data files written locally, on one short warehouse connection;
            # it is closed before any network I/O.
            with warehouse.connect(warehouse_path) as con:
                plan = membership.plan_export(con, flow, target_url, now=now)
                export = plan.export
                local = write_local_files(con, export, Path(staging)) if export else {}
            if not plan.resumed:
                result.segment_members = plan.segment_members
                result.members_before = plan.members_before
            if export is None:
                log(f"flow {flow.id}: no change ({plan.segment_members} members); no files written")
                break
            if plan.resumed:
                log(f"flow {flow.id}: finishing export {export.export_id} left by an earlier run")
            files = deliver(export, local, s3_client=s3_client, log=log)  # phase 2
        with warehouse.connect(warehouse_path, publish=True) as con:
            committed = membership.commit_export(con, export)  # phase 3
        result.exports.append(
            ExportOutcome(
                export_id=export.export_id,
                resumed=plan.resumed,
                exported_at=export.exported_at,
                members_added=export.members_added,
                members_removed=export.members_removed,
                files=files,
                committed_here=committed,
            )
        )
        if not plan.resumed:
            break
    return result
