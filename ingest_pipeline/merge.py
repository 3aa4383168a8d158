"""Dedupe and merge bronze rows into the warehouse tables, one transaction per batch.

The rules (SPEC section 4), implemented here and nowhere else:
  * row tables (events, crm_leads, contact_accounts): per key the row of the most recently landed
    file wins; ties by source_uri, then by the file version's etag (two uploads of one key in
    the same second), then by line (first line for events/leads, last line for
    contact_accounts: "the most recent account"). The incoming row replaces the stored one only
    when it ranks higher, so the result is the same whatever order files are merged in.
  * attribute tables (contacts, accounts): per (key, attribute) the most recently landed non-null
    value wins (later lines of one file are newer); the entity row is rebuilt from those values.
  * a target with a `record_time` ranks by it first, landing order breaking ties; a target with
    a `where` takes only the rows it routes to it; a row is a duplicate only when every target
    it is routed to skipped it. After the targets, the identity graph is brought up to date
    (identity/resolve.py).

A row table stores its key's 128-bit MD5 (key_hash_sql) as two 64-bit columns, `key_hash_hi` and
`key_hash_lo`: a batch finds the stored rows it collides with by joining on those, so the merge
reads 16 bytes per stored row instead of the key's text columns, whatever the batch's time range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ingest_pipeline.arrow import pa
from ingest_pipeline.feeds import FeedSpec, TargetSpec
from ingest_pipeline.identity.resolve import (
    DEFAULT_MAX_CLUSTER_SIZE,
    IdentityUpdate,
    update_identities,
)
from ingest_pipeline.parsing import ident, sql_str


@dataclass(frozen=True)
class BronzeFile:
    """One landed file's rows in a bronze Parquet file (which may hold other files' rows too)."""

    source_uri: str
    etag: str
    landed_at_iso: str
    parquet_path: Path


KEY_HASH = ("key_hash_hi", "key_hash_lo")


def key_hash_columns(target: TargetSpec) -> tuple[str, str]:
    """The bronze columns holding a row's key hash for `target` (written by the bronze step)."""
    return (f"key_hash_hi__{target.table}", f"key_hash_lo__{target.table}")


def key_hash_sql(parts: Mapping[str, str], types: Mapping[str, str]) -> str:
    """SQL: the 128-bit MD5 (UHUGEINT) of a row's key, from its parts (key column -> SQL
    expression) and their types. Each part is written with its length (no two keys give the
    same text) and timestamps as epoch microseconds (not text in the session's time zone): the
    same key gives the same hash in any process and any DuckDB version."""
    texts = []
    for column, expr in parts.items():
        value = f"epoch_us({expr})" if types[column].startswith("TIMESTAMP") else f"({expr})"
        text = f"CAST({value} AS VARCHAR)"
        texts.append(f"coalesce(length({text})::VARCHAR || ':' || {text}, '-')")
    return f"md5_number({' || '.join(texts)})"


def split_hash_sql(hashed: str) -> tuple[str, str]:
    """The high and low 64 bits of a UHUGEINT hash (Arrow and Parquet have no 128-bit integer)."""
    return (f"({hashed} >> 64)::UBIGINT", f"({hashed} & 18446744073709551615)::UBIGINT")


def _rank_order(target: TargetSpec) -> str:
    line_order = "ASC" if target.within_file == "first" else "DESC"
    timed = "recorded_at DESC, " if target.record_time else ""
    return (
        f"{timed}landed_at DESC, source_uri DESC, coalesce(etag, '') DESC, line_number {line_order}"
    )


def _outranks(target: TargetSpec, new: str, old: str) -> str:
    """SQL: the row `new` ranks at least as high as the stored row `old` (equal = idempotent)."""
    line_cmp = "<=" if target.within_file == "first" else ">="
    new_etag, old_etag = f"coalesce({new}.etag, '')", f"coalesce({old}.etag, '')"
    landing = (
        f"({new}.landed_at > {old}.landed_at OR ({new}.landed_at = {old}.landed_at AND "
        f"({new}.source_uri > {old}.source_uri OR ({new}.source_uri = {old}.source_uri AND "
        f"({new_etag} > {old_etag} OR ({new_etag} = {old_etag} AND "
        f"{new}.line_number {line_cmp} {old}.line_number))))))"
    )
    if not target.record_time:
        return landing
    return (
        f"({new}.recorded_at > {old}.recorded_at OR "
        f"({new}.recorded_at = {old}.recorded_at AND {landing}))"
    )


def _types(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE {relation}").fetchall()}


def _merge_rows(con: duckdb.DuckDBPyConnection, target: TargetSpec, batch: str) -> None:
    """Fold the target's rows of the batch (relation `batch`) into a row table; the rows not
    applied (duplicates) are left in the temp table `merge_skip`.

    Row tables carry no PRIMARY KEY: maintaining an ART index row by row made a 1M-row merge
    several times slower than the rest of the pipeline and its memory unbounded. Keys stay
    unique by construction: per key only the batch's best row is applied, it replaces a stored
    row only when it ranks at least as high, and merges are serialised (Dagster pool + lock).

    The rows of the batch that are not applied (`merge_skip`) are found without ranking the
    whole batch: only keys that occur more than once in it are ranked, and only keys already
    stored are compared with their stored row. A batch row is (source_uri, etag, line_number).
    """
    table = ident(target.table)
    cols = [*target.columns, "etag", *KEY_HASH]
    select = ", ".join(f"{expr} AS {ident(col)}" for col, expr in target.columns.items())
    if target.record_time:
        cols.append("recorded_at")
        select += f", {target.record_time} AS recorded_at"
    if "updated_at" in _table_columns(con, target.table) and "updated_at" not in cols:
        cols.append("updated_at")
        select += ", landed_at AS updated_at"
    batch_types = _types(con, batch)
    written = key_hash_columns(target)
    if all(c in batch_types for c in written):  # by the bronze step
        hi, lo = (ident(c) for c in written)
    else:  # bronze files of an older version
        parts = {k: target.columns[k] for k in target.key}
        hi, lo = split_hash_sql(key_hash_sql(parts, {k: batch_types[e] for k, e in parts.items()}))
    # Rows are matched by key hash and by the key itself: the hash makes the join cheap, the
    # key makes a hash collision (MD5's can be crafted) two keys, not one.
    key_cols = [*KEY_HASH, *(ident(k) for k in target.key)]
    key = ", ".join(key_cols)
    same_key = " AND ".join(f"t.{c} = w.{c}" for c in key_cols)
    batch_keyed = f"(SELECT {select}, etag, {hi} AS key_hash_hi, {lo} AS key_hash_lo FROM {batch})"
    prune = ""
    if target.prune_column:
        # Stored rows outside the batch's range of this column cannot match: DuckDB's min/max
        # zone maps skip their row groups, so the merge reads what the batch can touch.
        low, high = con.execute(
            f"SELECT min({target.columns[target.prune_column]}), "
            f"max({target.columns[target.prune_column]}) FROM {batch}"
        ).fetchall()[0]
        if low is not None:
            col = f"t.{ident(target.prune_column)}"
            prune = f" AND {col} >= '{low.isoformat()}' AND {col} <= '{high.isoformat()}'"
    # The batch rows whose key is stored, and whether each ranks at least as high as the
    # stored row (an equal one is the same row merged again): the one join with stored rows.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE merge_stored AS
        SELECT w.source_uri, w.etag, w.line_number, {_outranks(target, "w", "t")} AS replaces
        FROM {batch_keyed} w JOIN (SELECT * FROM {table} t WHERE true {prune}) t ON {same_key}
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE merge_skip AS
        -- within the batch, every row of a repeated key but the best one
        SELECT source_uri, etag, line_number FROM (
            SELECT source_uri, etag, line_number,
                   row_number() OVER (PARTITION BY {key} ORDER BY {_rank_order(target)}) AS rank
            FROM {batch_keyed} b
            SEMI JOIN (SELECT {key} FROM {batch_keyed} GROUP BY ALL HAVING count(*) > 1) USING ({key})
        ) WHERE rank > 1
        UNION
        -- rows whose stored row ranks higher
        SELECT source_uri, etag, line_number FROM merge_stored WHERE NOT replaces
        """
    )
    applied = (
        f"(SELECT * FROM {batch_keyed} ANTI JOIN merge_skip USING (source_uri, etag, line_number))"
    )
    # A batch row that outranks its stored row means the key's best row does too: that stored
    # row is replaced. Without one, the DELETE (another join with the table) is not needed.
    if con.execute("SELECT bool_or(replaces) FROM merge_stored").fetchall()[0][0]:
        con.execute(f"DELETE FROM {table} t USING {applied} w WHERE {same_key}{prune}")
    col_list = ", ".join(ident(c) for c in cols)
    con.execute(f"INSERT INTO {table} ({col_list}) SELECT {col_list} FROM {applied}")
    con.execute("DROP TABLE merge_stored")


def _table_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
    }


# Per attribute the newest value wins: the newest record time (the landing time for feeds that
# give none), then the newest landed; within a file the later line (the ranking of row tables
# whose within-file winner is the last line).
attr_target = TargetSpec(
    table="attribute_values",
    key=(),
    mode="row",
    columns={},
    within_file="last",
    record_time="recorded_at",
)
ATTRIBUTE_ORDER = _rank_order(attr_target)


def entity_columns(table: str) -> tuple[list[str], list[str]]:
    """The columns of an attribute table (contacts, accounts) kept beside the attributes JSON,
    over every feed writing it: declared (email) and promoted (domain). The entity row is a
    function of its attribute values, so every feed rebuilds it the same way."""
    from ingest_pipeline.feeds import FEEDS

    declared: list[str] = []
    promoted: list[str] = []
    for feed in FEEDS.values():
        for t in feed.targets:
            if t.mode == "attributes" and t.table == table:
                declared += [c for c in t.columns if c not in t.key and c not in declared]
                promoted += [c for c in t.promoted if c not in promoted]
    # A column one feed declares and another promotes (an account's domain: a field of the API
    # stream, an attribute of group files) is promoted: kept in the attributes JSON too.
    return [c for c in declared if c not in promoted], promoted


def _merge_attributes(con: duckdb.DuckDBPyConnection, target: TargetSpec, batch: str) -> None:
    entity = target.table
    key_col = target.key[-1]
    key_expr = target.columns[key_col]
    recorded = target.record_time or "landed_at"
    scalar_cols = [c for c in target.columns if c not in target.key]
    # Declared columns (email) are attributes too, so they follow the same newest-wins rule.
    declared = " UNION ALL ".join(
        f"SELECT tenant_id, {key_expr} AS entity_key, {sql_str(c)} AS attribute, "
        f"to_json({target.columns[c]}) AS value, {recorded} AS recorded_at, landed_at, "
        f"source_uri, etag, line_number "
        f"FROM {batch} WHERE {target.columns[c]} IS NOT NULL"
        for c in scalar_cols
    )
    extras = (
        f"SELECT b.tenant_id, b.{key_expr} AS entity_key, j.key AS attribute, "
        f"j.value::JSON AS value, b.{recorded} AS recorded_at, b.landed_at, b.source_uri, "
        f"b.etag, b.line_number "
        f"FROM {batch} b, json_each(b.{ident(target.attributes_from)}) j WHERE j.type <> 'NULL'"
    )
    values_sql = f"{declared} UNION ALL {extras}" if declared else extras
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE batch_values AS
        SELECT * FROM ({values_sql})
        QUALIFY row_number() OVER (
            PARTITION BY tenant_id, entity_key, attribute ORDER BY {ATTRIBUTE_ORDER}) = 1
        """
    )
    con.execute(
        f"""
        INSERT INTO attribute_values (tenant_id, entity, entity_key, attribute, value, landed_at,
                                      source_uri, line_number, etag, recorded_at)
        SELECT tenant_id, {sql_str(entity)}, entity_key, attribute, value, landed_at, source_uri,
               line_number, etag, recorded_at
        FROM batch_values
        ON CONFLICT (tenant_id, entity, entity_key, attribute) DO UPDATE SET
            value = excluded.value, landed_at = excluded.landed_at,
            source_uri = excluded.source_uri, line_number = excluded.line_number,
            etag = excluded.etag, recorded_at = excluded.recorded_at
        WHERE {_outranks(attr_target, "excluded", "attribute_values")}
        """
    )
    # Rebuild the entity row of every key in the batch (with or without attributes) from its
    # current values; first/last seen come from all the batch's rows, not only the winning values,
    # so one batch gives what one merge per file gives.
    declared_cols, promoted_cols = entity_columns(entity)
    value_cols = [*declared_cols, *sorted(promoted_cols)]
    selects = ", ".join(
        f"any_value(value ->> '$') FILTER (WHERE attribute = {sql_str(c)}) AS {ident(c)}"
        for c in value_cols
    )
    excluded_attrs = ", ".join(sql_str(c) for c in declared_cols) or "''"
    con.execute(
        f"""
        INSERT INTO {ident(entity)} (tenant_id, {ident(key_col)}, {", ".join(ident(c) for c in value_cols) + ", " if value_cols else ""}
                                     attributes, first_seen_at, updated_at)
        SELECT touched.tenant_id, touched.entity_key, {selects + ", " if selects else ""}
               coalesce(to_json(map_from_entries(
                   list(struct_pack(k := attribute, v := value))
                   FILTER (WHERE attribute NOT IN ({excluded_attrs})))), '{{}}')::JSON,
               any_value(touched.first_seen_at), any_value(touched.last_seen_at)
        FROM (
            SELECT tenant_id, {key_expr} AS entity_key, min(landed_at) AS first_seen_at,
                   max(landed_at) AS last_seen_at
            FROM {batch} GROUP BY ALL
        ) touched
        LEFT JOIN attribute_values v
          ON v.entity = {sql_str(entity)} AND v.tenant_id = touched.tenant_id
         AND v.entity_key = touched.entity_key
        GROUP BY touched.tenant_id, touched.entity_key
        ON CONFLICT (tenant_id, {ident(key_col)}) DO UPDATE SET
            {", ".join(f"{ident(c)} = excluded.{ident(c)}" for c in value_cols) + "," if value_cols else ""}
            attributes = excluded.attributes,
            first_seen_at = least({ident(entity)}.first_seen_at, excluded.first_seen_at),
            updated_at = greatest({ident(entity)}.updated_at, excluded.updated_at)
        """
    )


@dataclass
class MergeResult:
    """What merging a batch did: rows loaded per file (source_uri, etag) and, when the batch
    touched the identity graph, what happened to it."""

    loaded: dict[tuple[str, str], int]
    identity: IdentityUpdate | None = None


def _target_batch(con: duckdb.DuckDBPyConnection, target: TargetSpec) -> str:
    """The relation of the batch rows `target` takes: the batch itself, or its routed rows
    copied once (a view would read and filter the whole batch's Parquet at every use)."""
    if target.where is None:
        return "batch"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE target_batch AS SELECT * FROM batch WHERE {target.where}"
    )
    return "target_batch"


def _routes_sql(feed: FeedSpec) -> str:
    """SQL over a bronze row: the indexes of the feed's targets it is routed to."""
    routed = ", ".join(
        f"CASE WHEN {t.where or 'true'} THEN {i} END" for i, t in enumerate(feed.targets)
    )
    return f"list_filter([{routed}]::INTEGER[], lambda x: x IS NOT NULL)"


def _keep_skipped(con: duckdb.DuckDBPyConnection, feed: FeedSpec, index: int, rows: str) -> bool:
    """Add the rows target `index` skipped (`merge_skip`) to `lines_skipped`, each with the
    targets it is routed to; returns whether there were any."""
    if not con.execute("SELECT count(*) FROM merge_skip").fetchall()[0][0]:
        return False
    if all(t.where is None for t in feed.targets):  # every row goes to every target
        every = "[" + ", ".join(str(i) for i in range(len(feed.targets))) + "]::INTEGER[]"
        con.execute(f"INSERT INTO lines_skipped SELECT {index}, *, {every} FROM merge_skip")
        return True
    # The skipped rows' routes, from the target's own rows (a copy when it is routed).
    con.execute(
        f"""
        INSERT INTO lines_skipped
        SELECT {index}, s.source_uri, s.etag, s.line_number, {_routes_sql(feed)}
        FROM {rows} t JOIN merge_skip s
          ON t.source_uri = s.source_uri AND t.etag = s.etag AND t.line_number = s.line_number
        """
    )
    return True


def _loaded_per_file(
    con: duckdb.DuckDBPyConnection, skipping: list[int]
) -> dict[tuple[str, str], int]:
    """Rows loaded per file: each batch row counts once, loaded when at least one target it is
    routed to applied it, a duplicate when every such target skipped it (`lines_skipped`, with
    each row's routes; only row targets skip rows). A row no target takes is loaded (it is
    kept in the bronze)."""
    totals = con.execute("SELECT source_uri, etag, count(*) FROM batch GROUP BY ALL").fetchall()
    loaded = {(uri, etag): n for uri, etag, n in totals}
    if not skipping:
        return loaded
    duplicates = con.execute(
        """
        SELECT source_uri, etag, count(*) FROM (
            SELECT source_uri, etag, line_number, list(target_index) AS skipped_in,
                   any_value(routes) AS routes
            FROM lines_skipped GROUP BY ALL
        ) WHERE list_has_all(skipped_in, routes)
        GROUP BY ALL
        """
    ).fetchall()
    for uri, etag, n in duplicates:
        loaded[uri, etag] -= n
    return loaded


def merge_bronze(
    con: duckdb.DuckDBPyConnection,
    feed: FeedSpec,
    files: Sequence[BronzeFile],
    max_cluster_size: int = DEFAULT_MAX_CLUSTER_SIZE,
) -> MergeResult:
    """Merge the bronze Parquet of `files` into the feed's tables, each target taking the rows
    its `where` routes to it, then bring the identity graph up to date.

    Runs inside the caller's transaction. Returns the rows each file (source_uri, etag) loaded:
    its rows in the batch less those every target they were routed to skipped as duplicates.
    """
    if not files:
        return MergeResult({})
    distinct = sorted({str(f.parquet_path) for f in files})
    paths = "[" + ", ".join(sql_str(p) for p in distinct) + "]"
    # A view, not a copy: each target reads only the Parquet columns it needs. A bronze file may
    # hold rows of files that are not in this batch (a pass of many files, some read again on
    # their own since): only the batch's files' rows are taken from each.
    con.register(
        "batch_files",
        pa.table(
            {
                "bronze_path": [str(f.parquet_path) for f in files],
                "source_uri": [f.source_uri for f in files],
                "etag": [f.etag for f in files],
            }
        ),
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW batch AS
        SELECT b.* EXCLUDE (filename)
        FROM read_parquet({paths}, union_by_name = true, filename = true) b
        SEMI JOIN batch_files f
            ON b.filename = f.bronze_path AND b.source_uri = f.source_uri AND b.etag = f.etag
        """
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE lines_skipped (target_index INTEGER, source_uri VARCHAR, "
        "etag VARCHAR, line_number BIGINT, routes INTEGER[])"
    )
    skipping: list[int] = []
    edges: list[tuple[TargetSpec, str]] = []
    for i, target in enumerate(feed.targets):
        rows = _target_batch(con, target)
        if target.mode == "row":
            _merge_rows(con, target, rows)
            if _keep_skipped(con, feed, i, rows):
                skipping.append(i)
            con.execute("DROP TABLE merge_skip")
        else:
            _merge_attributes(con, target, rows)
        if target.graph_edges:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE batch_edges_{i} AS SELECT DISTINCT tenant_id, "
                f"{target.columns['alias_key']} AS alias_key, "
                f"{target.columns['contact_key']} AS contact_key FROM {rows}"
            )
            edges.append((target, f"batch_edges_{i}"))
    loaded = _loaded_per_file(con, skipping)
    identity = None
    if feed.identity_columns:
        seen = " UNION ".join(
            f"SELECT tenant_id, {c} AS contact_key FROM batch WHERE {c} IS NOT NULL"
            for c in feed.identity_columns
        )
        touched = " UNION ".join(
            f"SELECT tenant_id, alias_key AS contact_key FROM {t} UNION "
            f"SELECT tenant_id, contact_key FROM {t}"
            for _, t in edges
        )
        identity = update_identities(con, seen, touched or None, max_cluster_size)
    for _, t in edges:
        con.execute(f"DROP TABLE {t}")
    con.execute(
        "DROP TABLE IF EXISTS target_batch; DROP VIEW IF EXISTS batch; "
        "DROP TABLE IF EXISTS batch_values; DROP TABLE lines_skipped"
    )
    con.unregister("batch_files")
    return MergeResult(loaded, identity)
