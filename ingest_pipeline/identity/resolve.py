"""The warehouse's `identities` table kept up to date with the identity graph (graph.py).

Every merge registers the identities its batch names. A batch with aliases recomputes only the
components of the graph its aliases touch: their identities and alias rows are read, resolved
in `graph.resolve`, and only what changed is written (new identities inserted with their
person, existing ones updated when their person or component changed). The cost follows the
components the batch touches, not the tenant's graph. `rebuild_identities` recomputes every
tenant from the alias rows and gives the same table (tested).

`identities` has no PRIMARY KEY: like the row tables (merge.py), its rows are unique by
construction (an identity is inserted only when absent, merges are serialised), and an ART
index maintained row by row made registering and updating identities the slowest part of a
merge. A component is `coalesce(graph_id, person_id)`: graph_id is set only when the component
is larger than the person (it holds a refused alias).
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
COMPONENT = "coalesce(graph_id, person_id)"


def _person_id_sql(tenant: str, key: str) -> str:
    """SQL twin of graph.person_id for a cluster of one."""
    return f"'p_' || left(md5({tenant} || chr(0) || {key}), 20)"


@dataclass
class IdentityUpdate:
    """What a batch did to the identity graph."""

    identities_added: int = 0
    clusters_touched: int = 0  # persons (after the batch) whose component the batch touched
    identities_changed: int = 0  # identities known before whose person changed
    aliases_applied: int = 0  # of the batch's aliases
    aliases_refused: int = 0
    # the batch's first refused aliases (source file:line, keys, reason), for metadata
    refused: list[dict[str, str]] = field(default_factory=list)

    def add(self, other: IdentityUpdate) -> None:
        """Fold another batch's update into this one (a run merges several batches)."""
        for name in (
            "identities_added",
            "clusters_touched",
            "identities_changed",
            "aliases_applied",
            "aliases_refused",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.refused = (self.refused + other.refused)[:10]

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


def _resolve_members(
    con: duckdb.DuckDBPyConnection, members_sql: str, cap: int
) -> tuple[pa.Table, pa.Table]:
    """Resolve the identities of `members_sql` (tenant_id, contact_key: whole components) with
    the alias rows among them: (identities table, edges table with the new refused_reason and
    whether it differs from the stored one)."""
    members = con.execute(f"SELECT tenant_id, contact_key FROM ({members_sql})").fetchall()
    edges = con.execute(
        f"""
        SELECT a.tenant_id, a.alias_key, a.contact_key, a.refused_reason FROM aliases a
        SEMI JOIN ({members_sql}) m ON a.tenant_id = m.tenant_id AND a.alias_key = m.contact_key
        ORDER BY {EDGE_ORDER}
        """
    ).fetchall()
    stored = {(tenant, alias): reason for tenant, alias, _, reason in edges}
    nodes_by_tenant: dict[str, list[str]] = defaultdict(list)
    for tenant, key in members:
        nodes_by_tenant[tenant].append(key)
    edges_by_tenant: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for tenant, alias, contact, _ in edges:
        edges_by_tenant[tenant].append((alias, contact))
    ids: dict[str, list] = defaultdict(list)
    out_edges: dict[str, list] = defaultdict(list)
    for tenant in sorted(set(nodes_by_tenant) | set(edges_by_tenant)):
        tenant_edges = edges_by_tenant.get(tenant, [])
        result = resolve(tenant, nodes_by_tenant.get(tenant, []), tenant_edges, cap)
        ids["tenant_id"] += [tenant] * len(result.identities)
        ids["contact_key"] += result.identities
        ids["person_id"] += result.person_ids
        ids["graph_id"] += result.graph_ids
        out_edges["tenant_id"] += [tenant] * len(tenant_edges)
        out_edges["alias_key"] += [a for a, _ in tenant_edges]
        out_edges["refused_reason"] += result.refused
        out_edges["changed"] += [
            stored[tenant, a] != r for (a, _), r in zip(tenant_edges, result.refused, strict=True)
        ]
    string = pa.string()
    identities = pa.table({k: pa.array(ids[k], string) for k in _IDENTITY_COLUMNS})
    edge_table = pa.table(
        {
            **{k: pa.array(out_edges[k], string) for k in ("tenant_id", "alias_key")},
            "refused_reason": pa.array(out_edges["refused_reason"], string),
            "changed": pa.array(out_edges["changed"], pa.bool_()),
        }
    )
    return identities, edge_table


_IDENTITY_COLUMNS = ("tenant_id", "contact_key", "person_id", "graph_id")


def _write_refusals(con: duckdb.DuckDBPyConnection, edges: pa.Table) -> None:
    """Alias rows whose verdict changed get it (usually none: then nothing is written)."""
    changed = edges.filter(edges["changed"])
    if not changed.num_rows:
        return
    con.register("alias_verdicts", changed)
    con.execute(
        """
        UPDATE aliases SET refused_reason = r.refused_reason
        FROM alias_verdicts r
        WHERE aliases.tenant_id = r.tenant_id AND aliases.alias_key = r.alias_key
        """
    )
    con.unregister("alias_verdicts")


def update_identities(
    con: duckdb.DuckDBPyConnection,
    seen_sql: str,
    touched_sql: str | None,
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE,
) -> IdentityUpdate:
    """Bring `identities` up to date with a merged batch (inside the caller's transaction).

    `seen_sql`: the batch's identities (tenant_id, contact_key); `touched_sql`: the endpoints of
    its alias rows, or None when it has none."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE identities_new AS
        SELECT tenant_id, contact_key FROM (SELECT DISTINCT tenant_id, contact_key FROM ({seen_sql}))
        ANTI JOIN identities USING (tenant_id, contact_key)
        """
    )
    update = IdentityUpdate(
        identities_added=con.execute("SELECT count(*) FROM identities_new").fetchall()[0][0]
    )
    if touched_sql is None:
        con.execute(
            f"""
            INSERT INTO identities (tenant_id, contact_key, person_id, graph_id, updated_at)
            SELECT tenant_id, contact_key, {_person_id_sql("tenant_id", "contact_key")}, NULL,
                   now()
            FROM identities_new
            """
        )
        con.execute("DROP TABLE identities_new")
        return update
    # Whole components: those of the batch's endpoints known before (an alias the batch
    # replaced is in its alias key's component), and its new endpoints (components of one).
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE identity_touched AS
        SELECT DISTINCT tenant_id, contact_key FROM ({touched_sql});
        CREATE OR REPLACE TEMP TABLE identity_members AS
        SELECT i.tenant_id, i.contact_key, i.person_id, i.graph_id FROM identities i
        SEMI JOIN (
            SELECT DISTINCT i.tenant_id, {COMPONENT} AS component
            FROM identity_touched t JOIN identities i USING (tenant_id, contact_key)
        ) g ON i.tenant_id = g.tenant_id AND {COMPONENT} = g.component
        UNION ALL
        SELECT tenant_id, contact_key, NULL, NULL FROM identities_new
        SEMI JOIN identity_touched USING (tenant_id, contact_key);
        """
    )
    resolved, edges = _resolve_members(con, "SELECT * FROM identity_members", max_cluster_size)
    con.register("identity_resolved", resolved)
    con.register("alias_resolved", edges)
    update.clusters_touched = con.execute(
        "SELECT count(DISTINCT (tenant_id, person_id)) FROM identity_resolved"
    ).fetchall()[0][0]
    # Only what changed is written: known identities whose person or component moved...
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE identity_moved AS
        SELECT r.* FROM identity_resolved r JOIN identity_members m USING (tenant_id, contact_key)
        WHERE m.person_id IS NOT NULL
          AND (r.person_id <> m.person_id OR r.graph_id IS DISTINCT FROM m.graph_id)
        """
    )
    update.identities_changed = con.execute("SELECT count(*) FROM identity_moved").fetchall()[0][0]
    if update.identities_changed:
        con.execute(
            """
            UPDATE identities SET person_id = r.person_id, graph_id = r.graph_id,
                                  updated_at = now()
            FROM identity_moved r
            WHERE identities.tenant_id = r.tenant_id AND identities.contact_key = r.contact_key
            """
        )
    # ... and the new ones, with their person (a cluster of one unless the batch joined it).
    con.execute(
        f"""
        INSERT INTO identities (tenant_id, contact_key, person_id, graph_id, updated_at)
        SELECT n.tenant_id, n.contact_key,
               coalesce(r.person_id, {_person_id_sql("n.tenant_id", "n.contact_key")}),
               r.graph_id, now()
        FROM identities_new n LEFT JOIN identity_resolved r USING (tenant_id, contact_key)
        """
    )
    _write_refusals(con, edges)
    applied, refused = con.execute(
        """
        SELECT count(*) FILTER (WHERE r.refused_reason IS NULL),
               count(*) FILTER (WHERE r.refused_reason IS NOT NULL)
        FROM alias_resolved r SEMI JOIN identity_touched t
            ON r.tenant_id = t.tenant_id AND r.alias_key = t.contact_key
        """
    ).fetchall()[0]
    update.aliases_applied, update.aliases_refused = applied, refused
    update.refused = [
        {"source": f"{uri}:{line}", "alias_key": a, "contact_key": c, "reason": r}
        for uri, line, a, c, r in con.execute(
            """
            SELECT a.source_uri, a.line_number, a.alias_key, a.contact_key, a.refused_reason
            FROM aliases a SEMI JOIN identity_touched t
                ON a.tenant_id = t.tenant_id AND a.alias_key = t.contact_key
            WHERE a.refused_reason IS NOT NULL ORDER BY ALL LIMIT 10
            """
        ).fetchall()
    ]
    con.unregister("identity_resolved")
    con.unregister("alias_resolved")
    con.execute(
        "DROP TABLE identity_members; DROP TABLE identity_moved; DROP TABLE identity_touched; "
        "DROP TABLE identities_new"
    )
    return update


def rebuild_identities(
    con: duckdb.DuckDBPyConnection, max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE
) -> IdentityUpdate:
    """Recompute `identities` of every tenant from scratch: persons, components and refusals
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
        "INSERT INTO identities (tenant_id, contact_key, person_id, graph_id, updated_at) "
        "SELECT tenant_id, contact_key, person_id, graph_id, now() FROM identity_resolved"
    )
    _write_refusals(con, edges)
    verdicts = edges["refused_reason"].to_pylist()
    update = IdentityUpdate(
        identities_added=resolved.num_rows,
        clusters_touched=con.execute(
            "SELECT count(DISTINCT (tenant_id, person_id)) FROM identity_resolved"
        ).fetchall()[0][0],
        aliases_applied=sum(r is None for r in verdicts),
        aliases_refused=sum(r is not None for r in verdicts),
    )
    con.unregister("identity_resolved")
    con.unregister("alias_resolved")
    return update
