"""Flow membership in the warehouse: the segment query (scoped to the flow's tenant), the delta
against the previous membership, and the pending-export record that makes exports exactly once.

Tables (created here, beside the SPEC section 6 tables):

- `flow_memberships(flow_id, identifier, contexts, entered_at, export_id)`: who is in each flow
  as of its last *committed* export; `contexts` are the custom contexts the member entered with.
- `flow_exports(export_id, flow_id, status, exported_at, target_url, flow, files, ...)`: one row
  per export that had a change. `pending` from the moment its delta is computed until every file
  it names is written; then `committed`. `flow` is the flow's settings when it was planned, so a
  retry writes the same files to the same place whatever changed in ingest.yaml meanwhile.
- `flow_export_rows(export_id, operation, identifier, contexts)`: the members of a pending export's
  delta (`add` entered, `remove` left). Deleted when the export commits.

The three phases (export.py runs them; docs/ARCHITECTURE.md "Flow exports: exactly once"):

1. `plan_export` — one transaction: if the flow has a pending export, return it (a retry finishes
   it before computing anything new); else run the segment, compute the delta, and store it with
   its file names and timestamp fixed.
2. (export.py) write each operation's data file, then its control file.
3. `commit_export` — one transaction: apply the delta to `flow_memberships`, mark the export
   committed. Idempotent: a second commit of the same export changes nothing.
"""

from __future__ import annotations

import atexit
import json
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import duckdb

from ingest_pipeline.config import FlowConfig
from ingest_pipeline.exports import naming

EXPORT_DDL = """
CREATE TABLE IF NOT EXISTS flow_memberships (
    flow_id BIGINT NOT NULL,
    identifier VARCHAR NOT NULL,
    contexts JSON,
    entered_at TIMESTAMPTZ NOT NULL,
    export_id VARCHAR NOT NULL,
    PRIMARY KEY (flow_id, identifier)
);
CREATE TABLE IF NOT EXISTS flow_exports (
    export_id VARCHAR PRIMARY KEY,
    flow_id BIGINT NOT NULL,
    status VARCHAR NOT NULL,
    exported_at TIMESTAMPTZ NOT NULL,
    target_url VARCHAR NOT NULL,
    flow JSON NOT NULL,
    files JSON NOT NULL,
    members_added BIGINT NOT NULL,
    members_removed BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    committed_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS flow_export_rows (
    export_id VARCHAR NOT NULL,
    operation VARCHAR NOT NULL,
    identifier VARCHAR NOT NULL,
    contexts JSON
);
"""

OPERATIONS = ("add", "remove")

# Table functions a segment may call: they generate values and read nothing.
_SAFE_TABLE_FUNCTIONS = {"range", "generate_series", "unnest"}


class SegmentSqlError(ValueError):
    """A segment query that cannot run, or could read beyond its tenant's warehouse rows."""


# --- the segment query ----------------------------------------------------------------------------


_parser_lock = threading.Lock()


@cache
def _parser() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding the warehouse DDL: parses segment queries without a file."""
    from ingest_pipeline.warehouse import DDL

    con = duckdb.connect()
    con.execute(DDL)
    atexit.register(con.close)  # closed before the interpreter tears DuckDB's bindings down
    return con


def _default_tenant_tables() -> frozenset[str]:
    """Warehouse tables with a tenant_id column, from the warehouse DDL."""
    with _parser_lock:
        return frozenset(tenant_tables(_parser()))


def tenant_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Tables of the connection's database (schema main) that carry tenant_id."""
    rows = con.execute(
        """
        SELECT DISTINCT table_name FROM information_schema.columns
        WHERE table_catalog = current_database() AND table_schema = 'main'
          AND column_name = 'tenant_id'
        ORDER BY 1
        """
    ).fetchall()
    return [r[0] for r in rows]


def _walk(node: Any, tables: list[dict[str, Any]], ctes: set[str]) -> None:
    if isinstance(node, dict):
        if node.get("type") in ("BASE_TABLE", "TABLE_FUNCTION"):
            tables.append(node)
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", ()):
                ctes.add(str(entry.get("key", "")).lower())
        for value in node.values():
            _walk(value, tables, ctes)
    elif isinstance(node, list):
        for value in node:
            _walk(value, tables, ctes)


def check_segment_sql(sql: str, allowed_tables: frozenset[str] | None = None) -> set[str]:
    """Parse (without running) a segment query; return the warehouse tables it reads.

    A segment is one SELECT that reads warehouse tables by their plain names (`events`, not
    `main.events` or `wh.main.events`) and no files: at run time those names resolve to views of
    the flow's tenant only, so a segment cannot see another tenant's rows.
    """
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise SegmentSqlError("must be a SELECT query")
    allowed = _default_tenant_tables() if allowed_tables is None else allowed_tables
    with _parser_lock:
        serialized = _parser().execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0]
    tree = json.loads(serialized)
    if tree.get("error"):
        message = tree.get("error_message", "cannot be parsed")
        if "Only SELECT" in message:
            message = "must be a single SELECT query"
        raise SegmentSqlError(message)
    if len(tree.get("statements", ())) != 1:
        raise SegmentSqlError("must be a single SELECT query")
    refs: list[dict[str, Any]] = []
    ctes: set[str] = set()
    _walk(tree["statements"], refs, ctes)
    read: set[str] = set()
    for ref in refs:
        if ref["type"] == "TABLE_FUNCTION":
            function = ref.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in _SAFE_TABLE_FUNCTIONS or function.get("schema"):
                raise SegmentSqlError(
                    f"may not call table function {name!r}: a segment reads warehouse tables only"
                )
            continue
        name = str(ref.get("table_name", ""))
        if ref.get("catalog_name") or ref.get("schema_name"):
            qualified = ".".join(
                p for p in (ref.get("catalog_name"), ref.get("schema_name"), name) if p
            )
            raise SegmentSqlError(
                f"reads {qualified!r}: name warehouse tables without a schema or database "
                f"(e.g. {name!r}); they are scoped to the flow's tenant"
            )
        if name.lower() in ctes:
            continue
        if name.lower() not in allowed:
            raise SegmentSqlError(
                f"reads unknown table {name!r}; a segment may read {', '.join(sorted(allowed))}"
            )
        read.add(name.lower())
    return read


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _run_segment(con: duckdb.DuckDBPyConnection, flow: FlowConfig) -> int:
    """Evaluate the segment over the tenant's rows into TEMP table flow_segment(identifier,
    contexts); return its size. One row per identifier (NULL and blank identifiers dropped)."""
    tables = tenant_tables(con)
    check_segment_sql(flow.segment.sql, frozenset(tables))
    database = con.execute("SELECT current_database()").fetchone()[0]
    # Temporary views named like the warehouse tables shadow them for this connection only
    # (the temp catalog is searched first, even for `main.<table>`), each showing one tenant.
    for table in tables:
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {_ident(table)} AS "
            f"SELECT * FROM {_ident(database)}.main.{_ident(table)} "
            f"WHERE tenant_id = {_literal(flow.tenant)}"
        )
    try:
        segment = f"(\n{flow.segment.sql}\n) AS seg"
        columns = {
            d[0].lower() for d in con.execute(f"SELECT * FROM {segment} LIMIT 0").description
        }
        missing = [c for c in ("identifier", *flow.custom_contexts) if c.lower() not in columns]
        if missing:
            raise SegmentSqlError(
                f"flow {flow.id} ({flow.name}): the segment query returns no column "
                f"{', '.join(map(repr, missing))} (columns: {', '.join(sorted(columns))})"
            )
        if flow.custom_contexts:
            pairs = ", ".join(f"{_literal(c)}, seg.{_ident(c)}" for c in flow.custom_contexts)
            contexts = f"CAST(json_object({pairs}) AS VARCHAR)"
        else:
            contexts = "CAST(NULL AS VARCHAR)"
        # A member appearing on several rows is one member; its contexts are chosen
        # deterministically (the smallest JSON text), so a re-run computes the same delta.
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE flow_segment AS
            SELECT CAST(seg.identifier AS VARCHAR) AS identifier,
                   CAST(min({contexts}) AS JSON) AS contexts
            FROM {segment}
            WHERE seg.identifier IS NOT NULL AND trim(CAST(seg.identifier AS VARCHAR)) <> ''
            GROUP BY 1
            """
        )
    finally:
        for table in tables:
            con.execute(f"DROP VIEW IF EXISTS temp.main.{_ident(table)}")
    return con.execute("SELECT count(*) FROM flow_segment").fetchone()[0]


# --- pending exports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFile:
    """One operation's data file and its control file, named when the delta is computed."""

    operation: str  # add | remove
    folder: str  # relative to the target root: <path>/<YYYY>/<MM>/<DD>
    data_name: str
    control_name: str
    members: int
    rows: int  # members x (1 data-feed entry + one per action)


@dataclass(frozen=True)
class PendingExport:
    export_id: str
    flow: FlowConfig  # the flow's settings when the delta was computed
    target_url: str
    exported_at: datetime  # UTC, whole seconds: every entry's `timestamp`, the names' YmdHMS
    members_added: int
    members_removed: int
    files: tuple[PlannedFile, ...]


@dataclass(frozen=True)
class Plan:
    export: PendingExport | None  # None: the segment equals the current membership
    resumed: bool  # the export was planned by an earlier run that did not finish it
    segment_members: int | None  # members the segment returned (None when resumed)
    members_before: int | None  # flow_memberships rows before this export (None when resumed)


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(EXPORT_DDL)


def pending_export(con: duckdb.DuckDBPyConnection, flow_id: int) -> PendingExport | None:
    row = con.execute(
        """
        SELECT export_id, flow, target_url, exported_at, members_added, members_removed, files
        FROM flow_exports WHERE flow_id = ? AND status = 'pending'
        ORDER BY created_at LIMIT 1
        """,
        [flow_id],
    ).fetchone()
    if row is None:
        return None
    export_id, flow_json, target_url, exported_at, added, removed, files_json = row
    return PendingExport(
        export_id=export_id,
        flow=FlowConfig.model_validate_json(flow_json),
        target_url=target_url,
        exported_at=exported_at.astimezone(UTC),
        members_added=added,
        members_removed=removed,
        files=tuple(PlannedFile(**f) for f in json.loads(files_json)),
    )


def plan_export(
    con: duckdb.DuckDBPyConnection,
    flow: FlowConfig,
    target_url: str,
    *,
    now: datetime | None = None,
) -> Plan:
    """Phase 1, one transaction: the flow's pending export if it has one, else a new export of
    the delta between the segment and the current membership (None when there is no change)."""
    ensure_tables(con)
    con.begin()
    try:
        pending = pending_export(con, flow.id)
        if pending is not None:
            con.rollback()
            return Plan(pending, resumed=True, segment_members=None, members_before=None)
        segment_members = _run_segment(con, flow)
        members_before = con.execute(
            "SELECT count(*) FROM flow_memberships WHERE flow_id = ?", [flow.id]
        ).fetchone()[0]
        export_id = uuid.uuid4().hex
        # Entered: in the segment, not a member yet. Left: a member no longer in the segment,
        # with the contexts it entered with.
        con.execute(
            """
            INSERT INTO flow_export_rows
            SELECT ?, 'add', s.identifier, s.contexts
            FROM flow_segment AS s
            ANTI JOIN (SELECT identifier FROM flow_memberships WHERE flow_id = ?) AS m
                USING (identifier)
            """,
            [export_id, flow.id],
        )
        con.execute(
            """
            INSERT INTO flow_export_rows
            SELECT ?, 'remove', m.identifier, m.contexts
            FROM (SELECT identifier, contexts FROM flow_memberships WHERE flow_id = ?) AS m
            ANTI JOIN flow_segment AS s USING (identifier)
            """,
            [export_id, flow.id],
        )
        counts = dict(
            con.execute(
                "SELECT operation, count(*) FROM flow_export_rows WHERE export_id = ? GROUP BY 1",
                [export_id],
            ).fetchall()
        )
        con.execute("DROP TABLE IF EXISTS temp.main.flow_segment")
        if not counts:
            con.rollback()
            return Plan(None, False, segment_members, members_before)
        exported_at = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        folder = naming.date_folder(flow.path, exported_at)
        entries_per_member = 1 + len(flow.actions)
        files = []
        for operation in OPERATIONS:
            members = counts.get(operation, 0)
            if not members:
                continue  # one data file per operation that has rows
            data_name = naming.data_file_name(
                flow.client, flow.name, operation, naming.random_token(), exported_at, flow.format
            )
            files.append(
                PlannedFile(
                    operation=operation,
                    folder=folder,
                    data_name=data_name,
                    control_name=naming.control_file_name(data_name),
                    members=members,
                    rows=members * entries_per_member,
                )
            )
        export = PendingExport(
            export_id=export_id,
            flow=flow,
            target_url=target_url,
            exported_at=exported_at,
            members_added=counts.get("add", 0),
            members_removed=counts.get("remove", 0),
            files=tuple(files),
        )
        con.execute(
            """
            INSERT INTO flow_exports (export_id, flow_id, status, exported_at, target_url, flow,
                files, members_added, members_removed, created_at)
            VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, now())
            """,
            [
                export_id,
                flow.id,
                exported_at,
                target_url,
                flow.model_dump_json(),
                json.dumps([asdict(f) for f in files]),
                export.members_added,
                export.members_removed,
            ],
        )
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return Plan(export, False, segment_members, members_before)


def commit_export(con: duckdb.DuckDBPyConnection, export: PendingExport) -> bool:
    """Phase 3, one transaction: apply the export's delta to flow_memberships and mark it
    committed. False (and no change) if it was already committed."""
    ensure_tables(con)
    con.begin()
    try:
        claimed = con.execute(
            """
            UPDATE flow_exports SET status = 'committed', committed_at = now()
            WHERE export_id = ? AND status = 'pending'
            RETURNING export_id
            """,
            [export.export_id],
        ).fetchall()
        if not claimed:
            con.rollback()
            return False
        con.execute(
            """
            DELETE FROM flow_memberships
            WHERE flow_id = ? AND identifier IN (
                SELECT identifier FROM flow_export_rows
                WHERE export_id = ? AND operation = 'remove')
            """,
            [export.flow.id, export.export_id],
        )
        con.execute(
            """
            INSERT INTO flow_memberships (flow_id, identifier, contexts, entered_at, export_id)
            SELECT ?, identifier, contexts, ?, export_id FROM flow_export_rows
            WHERE export_id = ? AND operation = 'add'
            """,
            [export.flow.id, export.exported_at, export.export_id],
        )
        con.execute("DELETE FROM flow_export_rows WHERE export_id = ?", [export.export_id])
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return True


def abandon_export(con: duckdb.DuckDBPyConnection, export_id: str) -> bool:
    """Operator's way out of a pending export that can never finish (its target is gone for
    good): forget it, so the next export recomputes the delta against the unchanged membership.
    Members whose pair was already delivered by the abandoned export will be sent again (with
    new file names). False if there is no such pending export."""
    ensure_tables(con)
    con.begin()
    try:
        gone = con.execute(
            "DELETE FROM flow_exports WHERE export_id = ? AND status = 'pending' "
            "RETURNING export_id",
            [export_id],
        ).fetchall()
        con.execute("DELETE FROM flow_export_rows WHERE export_id = ?", [export_id])
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return bool(gone)
