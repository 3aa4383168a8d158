"""The DuckDB warehouse file: its tables (SPEC section 6), short-lived connections, and the
read snapshot analysts query.

DuckDB lets one process write a database file at a time. Dagster's pool serialises the merge
steps; the connection helper below also waits (with backoff) when another process holds the
file, so a lock conflict becomes a wait, never a failed run.

A writer also locks readers in other processes out of the file. So readers never open it: each
committed merge publishes a read snapshot (`publish_snapshot`), a checkpointed copy of the file
that no process writes, and `<warehouse>.read.duckdb` points at the newest one. Readers
(`ingest-pipeline sql`, the DuckDB CLI or Python with read_only, BI tools) open that and see
the warehouse as of the last committed merge, whatever runs (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

LOCK_WAIT_SECONDS = 900.0
# Older snapshots are removed once this old (a reader that opened one keeps reading it: the
# file lives on until it closes); the newest KEEP_SNAPSHOTS are always kept.
SNAPSHOT_GRACE_SECONDS = 60.0
KEEP_SNAPSHOTS = 2

log = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS events (
    tenant_id VARCHAR NOT NULL,
    contact_key VARCHAR NOT NULL,
    event_text VARCHAR NOT NULL,
    event_timestamp TIMESTAMPTZ NOT NULL,
    properties JSON,
    source_uri VARCHAR NOT NULL,
    line_number BIGINT NOT NULL,
    landed_at TIMESTAMPTZ NOT NULL,
    etag VARCHAR,          -- the file version the row came from (ranks same-second uploads)
    key_hash_hi UBIGINT,   -- MD5 of the key (merge.key_hash_sql): what a merge joins on
    key_hash_lo UBIGINT
    -- unique on (key columns) by construction of the merge (merge.py), no index
);
CREATE TABLE IF NOT EXISTS account_events (
    tenant_id VARCHAR NOT NULL,
    account_key VARCHAR NOT NULL,
    event_text VARCHAR NOT NULL,
    event_timestamp TIMESTAMPTZ NOT NULL,
    properties JSON,
    source_uri VARCHAR NOT NULL,
    line_number BIGINT NOT NULL,
    landed_at TIMESTAMPTZ NOT NULL,
    etag VARCHAR,          -- the file version the row came from (ranks same-second uploads)
    key_hash_hi UBIGINT,   -- MD5 of the key (merge.key_hash_sql): what a merge joins on
    key_hash_lo UBIGINT
    -- unique on (key columns) by construction of the merge (merge.py), no index
);
CREATE TABLE IF NOT EXISTS contacts (
    tenant_id VARCHAR NOT NULL,
    contact_key VARCHAR NOT NULL,
    email VARCHAR,
    attributes JSON,
    first_seen_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, contact_key)
);
CREATE TABLE IF NOT EXISTS accounts (
    tenant_id VARCHAR NOT NULL,
    account_key VARCHAR NOT NULL,
    domain VARCHAR,
    attributes JSON,
    first_seen_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, account_key)
);
-- Long form of contact/account attributes: one row per (entity, attribute) with the landed time
-- of its current value, so "newest landed non-null value wins" holds whatever the order in which
-- files are merged.
CREATE TABLE IF NOT EXISTS attribute_values (
    tenant_id VARCHAR NOT NULL,
    entity VARCHAR NOT NULL,
    entity_key VARCHAR NOT NULL,
    attribute VARCHAR NOT NULL,
    value JSON NOT NULL,
    landed_at TIMESTAMPTZ NOT NULL,
    source_uri VARCHAR NOT NULL,
    line_number BIGINT NOT NULL,
    etag VARCHAR,
    -- the time the record says the value was set (Kissmetrics `_t`), else its landing time:
    -- what "newest wins" compares first (merge.ATTRIBUTE_ORDER)
    recorded_at TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, entity, entity_key, attribute)
);
CREATE TABLE IF NOT EXISTS contact_accounts (
    tenant_id VARCHAR NOT NULL,
    contact_key VARCHAR NOT NULL,
    account_key VARCHAR NOT NULL,
    updated_at TIMESTAMPTZ,
    source_uri VARCHAR NOT NULL,
    line_number BIGINT NOT NULL,
    landed_at TIMESTAMPTZ NOT NULL,
    etag VARCHAR,
    key_hash_hi UBIGINT,
    key_hash_lo UBIGINT
    -- unique on (tenant_id, contact_key) by construction of the merge (merge.py), no index
);
CREATE TABLE IF NOT EXISTS aliases (
    tenant_id VARCHAR NOT NULL,
    alias_key VARCHAR NOT NULL,
    contact_key VARCHAR NOT NULL,
    source_uri VARCHAR,
    line_number BIGINT,
    landed_at TIMESTAMPTZ,
    recorded_at TIMESTAMPTZ,   -- the alias's `_t`: its newest wins, and orders the graph
    etag VARCHAR,
    key_hash_hi UBIGINT,
    key_hash_lo UBIGINT,
    refused_reason VARCHAR     -- NULL: applied to the identity graph (identity/graph.py)
    -- unique on (tenant_id, alias_key) by construction of the merge (merge.py), no index
);
-- The identity graph's result: every identity any feed of the tenant names and its person (a
-- cluster of identities joined by applied aliases); identity/resolve.py keeps it.
CREATE TABLE IF NOT EXISTS identities (
    tenant_id VARCHAR NOT NULL,
    contact_key VARCHAR NOT NULL,
    person_id VARCHAR NOT NULL,    -- depends only on the cluster's identities
    graph_id VARCHAR,              -- set when its component of every alias (refused ones too)
                                   -- is larger than its person
    updated_at TIMESTAMPTZ
    -- unique on (tenant_id, contact_key) by construction (identity/resolve.py), no index
);
CREATE TABLE IF NOT EXISTS crm_leads (
    tenant_id VARCHAR NOT NULL,
    email VARCHAR NOT NULL,
    account VARCHAR,
    created_at TIMESTAMPTZ,
    is_worked BOOLEAN,
    is_converted BOOLEAN,
    amount DOUBLE,
    is_unqualified BOOLEAN,
    worked_date TIMESTAMPTZ,
    converted_date TIMESTAMPTZ,
    deal_amount DOUBLE,
    attributes JSON,
    source_uri VARCHAR NOT NULL,
    line_number BIGINT NOT NULL,
    landed_at TIMESTAMPTZ NOT NULL,
    etag VARCHAR,          -- the file version the row came from (ranks same-second uploads)
    key_hash_hi UBIGINT,   -- MD5 of the key (merge.key_hash_sql): what a merge joins on
    key_hash_lo UBIGINT
    -- unique on (key columns) by construction of the merge (merge.py), no index
);
CREATE TABLE IF NOT EXISTS ingested_files (
    source_uri VARCHAR NOT NULL,
    etag VARCHAR NOT NULL,
    tenant_id VARCHAR NOT NULL,
    feed VARCHAR NOT NULL,
    landing_key VARCHAR,
    landed_at TIMESTAMPTZ,
    landing_date DATE,
    size_bytes BIGINT,
    status VARCHAR NOT NULL,
    rows_read BIGINT,
    rows_loaded BIGINT,
    rows_duplicate BIGINT,
    rows_rejected BIGINT,
    bronze_uri VARCHAR,
    run_id VARCHAR,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    error VARCHAR,
    attempts INTEGER,          -- reads begun (ledger.py: statuses and their transitions)
    requests INTEGER,          -- times the file was requested (first request and re-requests)
    request_key VARCHAR,       -- the sensor request (Dagster run key) that asked for the file
    queued_at TIMESTAMPTZ,
    retry_at TIMESTAMPTZ,      -- status retrying: taken again from then on
    PRIMARY KEY (source_uri, etag)
);
-- Warehouses created before these columns existed get them here.
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS attempts INTEGER;
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS requests INTEGER;
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS request_key VARCHAR;
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS queued_at TIMESTAMPTZ;
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS retry_at TIMESTAMPTZ;
-- What the reader noticed that is not an error (an import's columns not in its manifest).
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS notes VARCHAR;
ALTER TABLE attribute_values ADD COLUMN IF NOT EXISTS etag VARCHAR;
ALTER TABLE attribute_values ADD COLUMN IF NOT EXISTS recorded_at TIMESTAMPTZ;
ALTER TABLE aliases ADD COLUMN IF NOT EXISTS recorded_at TIMESTAMPTZ;
ALTER TABLE aliases ADD COLUMN IF NOT EXISTS refused_reason VARCHAR;
CREATE TABLE IF NOT EXISTS warehouse_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejected_rows (
    source_uri VARCHAR NOT NULL,
    etag VARCHAR NOT NULL,
    line_number BIGINT NOT NULL,
    tenant_id VARCHAR NOT NULL,
    feed VARCHAR NOT NULL,
    raw VARCHAR,
    reason VARCHAR NOT NULL,
    PRIMARY KEY (source_uri, etag, line_number)
);
"""


def _views_sql() -> str:
    """The views segment queries and analysts read people through; `people` merges a cluster's
    attribute values by the merge's own ranking (merge.ATTRIBUTE_ORDER)."""
    from ingest_pipeline.merge import ATTRIBUTE_ORDER

    return f"""
CREATE OR REPLACE VIEW events_resolved AS
SELECT e.*, i.person_id
FROM events e LEFT JOIN identities i
  ON i.tenant_id = e.tenant_id AND i.contact_key = e.contact_key;
CREATE OR REPLACE VIEW people AS
WITH winning AS (
    SELECT i.tenant_id, i.person_id, v.attribute, v.value
    FROM identities i JOIN attribute_values v
      ON v.entity = 'contacts' AND v.tenant_id = i.tenant_id AND v.entity_key = i.contact_key
    QUALIFY row_number() OVER (
        PARTITION BY i.tenant_id, i.person_id, v.attribute
        ORDER BY {ATTRIBUTE_ORDER}) = 1
)
SELECT p.tenant_id, p.person_id, p.identities, p.identity_count,
       coalesce(a.attributes, '{{}}'::JSON) AS attributes
FROM (
    SELECT tenant_id, person_id, list(contact_key ORDER BY contact_key) AS identities,
           count(*) AS identity_count
    FROM identities GROUP BY ALL
) p
LEFT JOIN (
    SELECT tenant_id, person_id,
           to_json(map_from_entries(list(struct_pack(k := attribute, v := value)
                                         ORDER BY attribute))) AS attributes
    FROM winning GROUP BY ALL
) a USING (tenant_id, person_id);
"""


# Raised whenever DDL or the migrations below change: a connection runs them only when the
# warehouse file says it is older, not on every connect.
SCHEMA_VERSION = 3
ROW_TABLES = ("events", "account_events", "contact_accounts", "crm_leads", "aliases")


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Row tables of older warehouses get `etag` and the key hash (filled in for stored rows)."""
    from ingest_pipeline.feeds import FEEDS
    from ingest_pipeline.merge import key_hash_sql, split_hash_sql

    for table in ROW_TABLES:
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS etag VARCHAR")
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS key_hash_hi UBIGINT")
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS key_hash_lo UBIGINT")
    keys = {t.table: t.key for f in FEEDS.values() for t in f.targets if t.mode == "row"}
    for table, key in keys.items():
        types = {
            name: type_
            for name, type_ in con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ?",
                [table],
            ).fetchall()
        }
        hi, lo = split_hash_sql(key_hash_sql({k: f'"{k}"' for k in key}, types))
        con.execute(
            f"UPDATE {table} SET key_hash_hi = {hi}, key_hash_lo = {lo} WHERE key_hash_hi IS NULL"
        )
    # v3: attribute values ranked by record time; what landed before has its landing time.
    con.execute("UPDATE attribute_values SET recorded_at = landed_at WHERE recorded_at IS NULL")
    con.execute("UPDATE aliases SET recorded_at = landed_at WHERE recorded_at IS NULL")
    # v3: every identity the tables name gets its row in the identity graph. Before v3 no feed
    # wrote aliases, so each is a person of its own: registered in SQL (bounded memory), not by
    # a rebuild of the graph in Python (a whole tenant in memory, on whichever process connects
    # first); a warehouse that has aliases all the same is rebuilt.
    if not con.execute("SELECT count(*) FROM identities").fetchall()[0][0]:
        from ingest_pipeline.identity.resolve import (
            identity_sources,
            rebuild_identities,
            update_identities,
        )

        if con.execute("SELECT count(*) FROM aliases").fetchall()[0][0]:
            rebuild_identities(con)
        else:
            update_identities(
                con,
                " UNION ".join(
                    f"SELECT tenant_id, {column} AS contact_key FROM {table}"
                    for table, column in identity_sources()
                ),
                None,
            )


# Threads of one process (a code server's sensors) share one DuckDB database per file, where two
# transactions creating the same tables conflict ("Catalog write-write conflict"): one at a time.
_SCHEMA_LOCK = threading.Lock()


def _schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    try:
        return con.execute("SELECT max(version) FROM warehouse_schema").fetchall()[0][0]
    except duckdb.CatalogException:
        return None


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """The warehouse's tables as this version of the code needs them (created or migrated)."""
    if _schema_version(con) == SCHEMA_VERSION:
        return
    with _SCHEMA_LOCK:
        if _schema_version(con) == SCHEMA_VERSION:
            return
        _create_or_migrate(con)


def _create_or_migrate(con: duckdb.DuckDBPyConnection) -> None:
    with transaction(con):
        con.execute(DDL)
        con.execute(_views_sql())
        _migrate(con)
        check_declarations(con)
        con.execute("DELETE FROM warehouse_schema")
        con.execute("INSERT INTO warehouse_schema VALUES (?)", [SCHEMA_VERSION])


class SchemaMismatch(RuntimeError):
    """The warehouse tables and the feed declarations disagree (a code defect, not data)."""


def check_declarations(con: duckdb.DuckDBPyConnection) -> None:
    """Every column a feed's target writes exists in its table: a declaration cannot name a
    column the DDL lacks (checked when the schema is created or migrated, and by the tests)."""
    from ingest_pipeline.feeds import FEEDS

    tables: dict[str, set[str]] = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
    ).fetchall():
        tables.setdefault(table, set()).add(column)
    problems = []
    for feed in FEEDS.values():
        for target in feed.targets:
            have = tables.get(target.table)
            if have is None:
                problems.append(f"feed {feed.name}: table {target.table} does not exist")
                continue
            missing = [c for c in target.written_columns() if c not in have]
            if missing:
                problems.append(
                    f"feed {feed.name}: {target.table} has no column {', '.join(missing)}"
                )
    if problems:
        raise SchemaMismatch(
            "the warehouse DDL and the feed declarations disagree: " + "; ".join(problems)
        )


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    text = str(exc)
    return "lock" in text.lower() and ("Conflicting" in text or "Could not set lock" in text)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """One transaction on `con`: committed when the block ends, rolled back if it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def read_path(path: str | Path) -> Path:
    """Where readers open the warehouse: a symlink to its newest read snapshot."""
    path = Path(path)
    return path.with_name(f"{path.stem}.read{path.suffix or '.duckdb'}")


def snapshot_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.snapshots")


def publish_snapshot(con: duckdb.DuckDBPyConnection, path: str | Path) -> Path:
    """Publish what `con` (the writer, holding the file) has committed as the read snapshot.

    CHECKPOINT moves every committed change from the WAL into the file; while `con` runs nothing
    else no process can change the file, so its copy is a consistent database. It is written
    under a temporary name, then renamed, then the read link is swapped by a rename: a reader
    opens either the previous snapshot or this one, never a part-written file.
    """
    path = Path(path)
    con.execute("CHECKPOINT")
    folder = snapshot_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    # One folder per snapshot, the file keeping the warehouse's name: readers' catalog is
    # `warehouse` (the file's stem), as when they open the warehouse itself.
    generation = folder / f"{time.time_ns():020d}"
    partial = folder / f".{generation.name}.partial"
    partial.mkdir()
    copy = partial / path.name
    # The copy is made by a child process: DuckDB's write lock is a POSIX record lock, which a
    # process loses on the file as soon as it closes *any* descriptor of it, so opening the
    # warehouse here to copy it would let a second writer in. (--reflink=auto: nearly free on a
    # copy-on-write file system.)
    subprocess.run(
        ["cp", "--reflink=auto", str(path), str(copy)],
        check=True,
        capture_output=True,
    )
    with copy.open("rb+") as dst:
        os.fsync(dst.fileno())
    os.replace(partial, generation)
    final = generation / path.name
    link = read_path(path)
    staged_link = link.with_name(f".{link.name}.{os.getpid()}-{threading.get_ident()}.link")
    staged_link.unlink(missing_ok=True)
    staged_link.symlink_to(os.path.relpath(final, link.parent))
    os.replace(staged_link, link)
    _prune_snapshots(folder, keep=final)
    return final


def _prune_snapshots(folder: Path, *, keep: Path) -> None:
    """Remove snapshots past the newest few once they are older than the grace period (and a
    dead writer's partial copies)."""
    cutoff = time.time() - SNAPSHOT_GRACE_SECONDS
    generations = sorted(p for p in folder.iterdir() if p.name.isdigit())
    old = [p for p in generations[:-KEEP_SNAPSHOTS] if p != keep.parent]
    old += list(folder.glob(".*.partial"))
    for p in old:
        try:
            if p.stat().st_mtime < cutoff:
                shutil.rmtree(p)
        except FileNotFoundError:
            pass


class NoSnapshot(RuntimeError):
    """Nothing has been written to the warehouse yet, so there is nothing to read."""


def connect_reader(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the newest read snapshot: never waits for a writer.

    A warehouse written before snapshots existed has none until its next merge: it is then
    opened read-only itself, which works while no process writes it."""
    link = read_path(path)
    for _ in range(5):
        if not link.exists() and not link.is_symlink():
            break
        try:
            return duckdb.connect(str(link.resolve(strict=True)), read_only=True)
        except (FileNotFoundError, duckdb.IOException):
            # The snapshot the link named was just pruned (the link has moved on): again.
            time.sleep(0.01)
    if Path(path).exists():
        return duckdb.connect(str(path), read_only=True)
    raise NoSnapshot(f"no warehouse at {path} yet: nothing has been merged")


def publish_after_commit(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Publish after a commit without turning a committed merge into a failed one: a snapshot
    that cannot be written now (disk full) is written by the next merge."""
    try:
        publish_snapshot(con, path)
    except (OSError, subprocess.CalledProcessError, duckdb.Error) as exc:
        log.warning("the read snapshot of %s could not be published: %s", path, exc)


@contextmanager
def connect(
    path: str | Path,
    *,
    read_only: bool = False,
    wait_seconds: float = LOCK_WAIT_SECONDS,
    publish: bool = False,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection to the warehouse file, waiting while another process writes it.

    publish: when the block ends, publish the read snapshot (a merge, an identity rebuild, an
    export: what readers see). A new warehouse gets its first snapshot at once, so readers
    always have one."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.Error as exc:
            if not _is_lock_conflict(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    try:
        if not read_only:
            ensure_schema(con)
            if not publish and not read_path(path).exists():
                with _SCHEMA_LOCK:
                    if not read_path(path).exists():
                        publish_after_commit(con, path)
        yield con
        if publish:
            publish_after_commit(con, path)
    finally:
        con.close()
