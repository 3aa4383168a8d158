"""The warehouse's `identities` table kept up to date with the identity graph (graph.py).

Every merge registers the identities its batch names (a cluster of one each, in SQL). A batch
with aliases then recomputes only the components of the graph its aliases touch: their
identities and alias rows are read (by `graph_id`), resolved in `graph.resolve`, and the rows
that changed are written back. The cost follows the components the batch touches, not the
tenant's graph. `rebuild_identities` recomputes every tenant from the alias rows and the
identities the tables hold, and gives the same table (tested).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import duckdb

from ingest_pipeline.arrow import pa
from ingest_pipeline.identity.graph import DEFAULT_MAX_CLUSTER_SIZE, resolve

__all__ = [
    "DEFAULT_MAX_CLUSTER_SIZE",
    "IdentityUpdate",
    "identity_sources",
    "rebuild_identities",
    "update_identities",
]

# The canonical order of alias rows (graph.py): an alias key has one row per tenant.
EDGE_ORDER = "tenant_id, recorded_at, alias_key, contact_key"


def _id_sql(prefix: str, tenant: str, key: str) -> str:
    """SQL twin of graph.person_id / graph.graph_id for a cluster of one."""
    return f"'{prefix}_' || left(md5({tenant} || chr(0) || {key}), 20)"


@dataclass
class IdentityUpdate:
    """What a batch did to the identity graph."""

    identities_added: int = 0
    clusters_touched: int = 0  # persons (after the batch) whose component the batch touched
    identities_changed: int = 0  # identities whose person changed
    aliases_applied: int = 0  # of the batch's aliases
    aliases_refused: int = 0
    # the batch's first refused aliases (source file:line, keys, reason), for metadata
    refused: list[dict[str, str]] = field(default_factory=list)

    def metadata(self) -> dict[str, int]:
        return {
            "identities_added": self.identities_added,
            "clusters_touched": self.clusters_touched,
            "identities_changed": self.identities_changed,
            "aliases_applied": self.aliases_applied,
            "aliases_refused": self.aliases_refused,
        }


def identity_sources() -> list[tuple[str, str]]:
    """(table, column) pairs holding identities, from the feed declarations: every warehouse
    column a target fills from one of its feed's identity columns."""
    from ingest_pipeline.feeds import FEEDS

    sources: list[tuple[str, str]] = []
    for feed in FEEDS.values():
        for target in feed.targets:
            for column, expr in target.columns.items():
                if expr in feed.identity_columns and (target.table, column) not in sources:
                    sources.append((target.table, column))
    return sources


def _register_identities(con: duckdb.DuckDBPyConnection, seen_sql: str) -> int:
    """Insert a cluster of one for every identity of `seen_sql` (tenant_id, contact_key) that
    has no row yet; returns how many."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE identities_new AS
        SELECT tenant_id, contact_key FROM (SELECT DISTINCT tenant_id, contact_key FROM ({seen_sql}))
        ANTI JOIN identities USING (tenant_id, contact_key)
        """
    )
    added = con.execute("SELECT count(*) FROM identities_new").fetchall()[0][0]
    if added:
        con.execute(
            f"""
            INSERT INTO identities (tenant_id, contact_key, person_id, graph_id, cluster_size,
                                    updated_at)
            SELECT tenant_id, contact_key, {_id_sql("p", "tenant_id", "contact_key")},
                   {_id_sql("g", "tenant_id", "contact_key")}, 1, now()
            FROM identities_new
            """
        )
    con.execute("DROP TABLE identities_new")
    return added


def _resolve_members(
    con: duckdb.DuckDBPyConnection, members_sql: str, cap: int
) -> tuple[pa.Table, pa.Table]:
    """Resolve the identities of `members_sql` (tenant_id, contact_key: whole components) with
    the alias rows among them: (identities table, edges table with refused_reason)."""
    members = con.execute(f"SELECT tenant_id, contact_key FROM ({members_sql})").fetchall()
    edges = con.execute(
        f"""
        SELECT a.tenant_id, a.alias_key, a.contact_key FROM aliases a
        SEMI JOIN ({members_sql}) m ON a.tenant_id = m.tenant_id AND a.alias_key = m.contact_key
        ORDER BY {EDGE_ORDER}
        """
    ).fetchall()
    nodes_by_tenant: dict[str, list[str]] = defaultdict(list)
    for tenant, key in members:
        nodes_by_tenant[tenant].append(key)
    edges_by_tenant: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for tenant, alias, contact in edges:
        edges_by_tenant[tenant].append((alias, contact))
    ids: dict[str, list] = defaultdict(list)
    out_edges: dict[str, list] = defaultdict(list)
    for tenant in sorted(set(nodes_by_tenant) | set(edges_by_tenant)):
        tenant_edges = edges_by_tenant.get(tenant, [])
        result = resolve(tenant, nodes_by_tenant.get(tenant, []), tenant_edges, cap)
        n = len(result.identities)
        ids["tenant_id"] += [tenant] * n
        ids["contact_key"] += result.identities
        ids["person_id"] += result.person_ids
        ids["graph_id"] += result.graph_ids
        ids["cluster_size"] += result.cluster_sizes
        out_edges["tenant_id"] += [tenant] * len(tenant_edges)
        out_edges["alias_key"] += [a for a, _ in tenant_edges]
        out_edges["contact_key"] += [c for _, c in tenant_edges]
        out_edges["refused_reason"] += result.refused
    identities = pa.table(
        {
            "tenant_id": pa.array(ids["tenant_id"], pa.string()),
            "contact_key": pa.array(ids["contact_key"], pa.string()),
            "person_id": pa.array(ids["person_id"], pa.string()),
            "graph_id": pa.array(ids["graph_id"], pa.string()),
            "cluster_size": pa.array(ids["cluster_size"], pa.int32()),
        }
    )
    edge_table = pa.table(
        {
            "tenant_id": pa.array(out_edges["tenant_id"], pa.string()),
            "alias_key": pa.array(out_edges["alias_key"], pa.string()),
            "contact_key": pa.array(out_edges["contact_key"], pa.string()),
            "refused_reason": pa.array(out_edges["refused_reason"], pa.string()),
        }
    )
    return identities, edge_table


def update_identities(
    con: duckdb.DuckDBPyConnection,
    seen_sql: str,
    touched_sql: str | None,
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE,
) -> IdentityUpdate:
    """Bring `identities` up to date with a merged batch (inside the caller's transaction).

    `seen_sql`: the batch's identities (tenant_id, contact_key); `touched_sql`: the endpoints of
    its alias rows, or None when it has none."""
    update = IdentityUpdate(identities_added=_register_identities(con, seen_sql))
    if touched_sql is None:
        return update
    # Whole components of the graph (all alias rows): those of the batch's endpoints, found by
    # their graph_id before the batch (an alias replaced by the batch is in its alias key's).
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE identity_members AS
        SELECT i.tenant_id, i.contact_key, i.person_id FROM identities i
        SEMI JOIN (
            SELECT DISTINCT i.tenant_id, i.graph_id
            FROM (SELECT DISTINCT tenant_id, contact_key FROM ({touched_sql})) t
            JOIN identities i USING (tenant_id, contact_key)
        ) g USING (tenant_id, graph_id)
        """
    )
    resolved, edges = _resolve_members(con, "SELECT * FROM identity_members", max_cluster_size)
    con.register("identity_resolved", resolved)
    con.register("alias_resolved", edges)
    update.clusters_touched = con.execute(
        "SELECT count(DISTINCT (tenant_id, person_id)) FROM identity_resolved"
    ).fetchall()[0][0]
    update.identities_changed = con.execute(
        """
        SELECT count(*) FROM identity_resolved r JOIN identity_members m
            USING (tenant_id, contact_key) WHERE r.person_id <> m.person_id
        """
    ).fetchall()[0][0]
    _write_resolution(con)
    batch_aliases = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE r.refused_reason IS NULL),
               count(*) FILTER (WHERE r.refused_reason IS NOT NULL)
        FROM alias_resolved r SEMI JOIN ({touched_sql}) t
            ON r.tenant_id = t.tenant_id AND r.alias_key = t.contact_key
        """
    ).fetchall()[0]
    update.aliases_applied, update.aliases_refused = batch_aliases
    update.refused = [
        {"source": f"{uri}:{line}", "alias_key": a, "contact_key": c, "reason": r}
        for uri, line, a, c, r in con.execute(
            f"""
            SELECT a.source_uri, a.line_number, a.alias_key, a.contact_key, a.refused_reason
            FROM aliases a SEMI JOIN ({touched_sql}) t
                ON a.tenant_id = t.tenant_id AND a.alias_key = t.contact_key
            WHERE a.refused_reason IS NOT NULL ORDER BY ALL LIMIT 10
            """
        ).fetchall()
    ]
    con.unregister("identity_resolved")
    con.unregister("alias_resolved")
    con.execute("DROP TABLE identity_members")
    return update


def _write_resolution(con: duckdb.DuckDBPyConnection) -> None:
    """Write `identity_resolved` and `alias_resolved` back: only the rows that changed."""
    con.execute(
        """
        UPDATE identities SET person_id = r.person_id, graph_id = r.graph_id,
                              cluster_size = r.cluster_size, updated_at = now()
        FROM identity_resolved r
        WHERE identities.tenant_id = r.tenant_id AND identities.contact_key = r.contact_key
          AND (identities.person_id <> r.person_id OR identities.graph_id <> r.graph_id
               OR identities.cluster_size <> r.cluster_size)
        """
    )
    con.execute(
        """
        UPDATE aliases SET refused_reason = r.refused_reason
        FROM alias_resolved r
        WHERE aliases.tenant_id = r.tenant_id AND aliases.alias_key = r.alias_key
          AND aliases.refused_reason IS DISTINCT FROM r.refused_reason
        """
    )


def rebuild_identities(
    con: duckdb.DuckDBPyConnection, max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE
) -> IdentityUpdate:
    """Recompute `identities` of every tenant from scratch: clusters, person ids and refusals
    from every alias row, over the identities the warehouse tables hold (identity_sources) and
    those registered before (an identity seen only on an alias line since superseded stays
    known). Inside the caller's transaction."""
    every = " UNION ".join(
        [
            "SELECT tenant_id, contact_key FROM identities",
            *(
                f"SELECT tenant_id, {column} AS contact_key FROM {table}"
                for table, column in identity_sources()
            ),
        ]
    )
    resolved, edges = _resolve_members(con, every, max_cluster_size)
    con.register("identity_resolved", resolved)
    con.register("alias_resolved", edges)
    con.execute("DELETE FROM identities")
    con.execute(
        "INSERT INTO identities (tenant_id, contact_key, person_id, graph_id, cluster_size, "
        "updated_at) SELECT *, now() FROM identity_resolved"
    )
    con.execute(
        """
        UPDATE aliases SET refused_reason = r.refused_reason
        FROM alias_resolved r
        WHERE aliases.tenant_id = r.tenant_id AND aliases.alias_key = r.alias_key
          AND aliases.refused_reason IS DISTINCT FROM r.refused_reason
        """
    )
    update = IdentityUpdate(
        identities_added=resolved.num_rows,
        clusters_touched=len(
            set(
                zip(
                    resolved["tenant_id"].to_pylist(),
                    resolved["person_id"].to_pylist(),
                    strict=True,
                )
            )
        ),
        aliases_applied=sum(r is None for r in edges["refused_reason"].to_pylist()),
        aliases_refused=sum(r is not None for r in edges["refused_reason"].to_pylist()),
    )
    con.unregister("identity_resolved")
    con.unregister("alias_resolved")
    return update
