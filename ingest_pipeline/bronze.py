"""Landed files -> typed bronze rows (Parquet) + rejected rows (quarantine Parquet), with counts.

One streaming pass: DuckDB reads the records (parsing.py) in a private in-memory database, types
their fields, takes their extras, evaluates the feed's row rules (validation.py) and hashes each
row's keys, all in one query; chunk by chunk, good rows are appended to the bronze file and every
other record to the quarantine file, with its line number, raw text and reason. Nothing is held
beyond a few chunks, so memory is bounded whatever the file size, and the warehouse is not
touched: it sees the result later, in one merge transaction.

Two ways in, one engine (`_stream`):

* `process_file`: one file, any format and size. A verdict on the whole file (one JSON document,
  only NUL bytes, the feed's error policy refusing the file) is known only at the end: then the
  records are read a second time and every one goes to the quarantine with the reason, so that
  rows_read = rows_loaded + rows_duplicate + rows_rejected still holds.
* `process_pass`: many small NDJSON files as one stream, each line tagged with its file's index:
  one query, one bronze file and one quarantine file for the pass, counts per file. A file that
  needs a whole-file verdict (gzip damage, no records, mostly not JSON objects, an error policy
  refusing it) is taken out of the pass outputs and read again on its own by `process_file`, so
  every file ends exactly as it would alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest_pipeline.arrow import pa
from ingest_pipeline.config import FeedPolicy
from ingest_pipeline.feeds import FeedSpec, FieldSpec, TargetSpec, tenant_of
from ingest_pipeline.landing import LandedObject
from ingest_pipeline.merge import key_hash_columns, key_hash_sql, split_hash_sql
from ingest_pipeline.parsing import (
    DESCRIBE_JSON_ERRORS,
    INVALID_JSON,
    NdjsonFileCheck,
    NdjsonPass,
    Records,
    UnsupportedFile,
    describe_invalid_json,
    ident,
    ndjson_pass,
    open_records,
    quarantine_raw,
    quarantine_raw_sql,
    sql_str,
    undeclared_columns,
)
from ingest_pipeline.validation import (
    MAX_UNIX_SECONDS,
    TYPE_NAMES,
    rule_failures_sql,
    typed_column,
    typed_sql,
    validation_columns,
    validation_columns_sql,
)

MEMORY_LIMIT = "512MB"
# Records validated and written at a time: 1M-line file, 100k: 2.2 s and 0.7 GiB peak,
# 500k: 2.6 s and 1.1 GiB (fewer, bigger chunks in flight), 50k: 2.4 s and 0.6 GiB.
CHUNK_ROWS = 100_000
CHUNKS_IN_FLIGHT = 2  # handed to the worker thread and not yet written
HEAD_REJECTS = 100  # rejected records of a file kept in memory for reports and metadata
HEAD_FILES = 50  # files of a pass whose first rejected records are kept in memory
# NDJSON files up to this size (as landed) are read together in a pass; larger ones alone.
BULK_MAX_BYTES = 4 * 1024 * 1024

QUARANTINE_SCHEMA = pa.schema(
    [
        ("line_number", pa.int64()),
        ("raw", pa.string()),
        ("reason", pa.string()),
        ("source_uri", pa.string()),
        ("etag", pa.string()),
        ("feed", pa.string()),
    ]
)
REJECT_COLUMNS = ["line_number", "raw", "reason"]
# Every bronze row says where it came from (constant within one file).
PROVENANCE_COLUMNS = {
    "tenant_id": pa.string(),
    "source_uri": pa.string(),
    "etag": pa.string(),
    "landed_at": pa.timestamp("us", "UTC"),
}
# The type of a field's bronze value, for hashing keys.
_BRONZE_TYPES = {
    "unix_seconds": "TIMESTAMP WITH TIME ZONE",
    "timestamp": "TIMESTAMP WITH TIME ZONE",
    "datetime": "TIMESTAMP WITH TIME ZONE",
    "boolean": "BOOLEAN",
    "number": "DOUBLE",
}


@dataclass(frozen=True)
class SourceFile:
    """A file as found in the landing zone: identity (uri, etag) and landing time."""

    uri: str
    etag: str
    key: str
    landed_at: datetime
    size: int
    tenant_id: str

    @classmethod
    def of(cls, obj: LandedObject, tenant_id: str) -> SourceFile:
        """The file a landing listing gave, as the tenant's."""
        return cls(
            uri=obj.uri,
            etag=obj.etag,
            key=obj.key,
            landed_at=obj.last_modified,
            size=obj.size,
            tenant_id=tenant_id,
        )

    @classmethod
    def of_feed(
        cls, obj: LandedObject, feed: FeedSpec, default_tenant: str, *, own_landing: bool = False
    ) -> SourceFile:
        """The feed's file, the tenant's its channel says (feeds.tenant_of). A key that names
        no tenant gets none; such a file fails with feeds.key_problem's reason unread. In a
        tenant's own landing zone (`own_landing`) every file is that tenant's (`default_tenant`),
        whatever its key says: a client cannot drop a file as another tenant."""
        tenant = tenant_of(feed, obj.key, default_tenant)
        if own_landing and tenant is not None:
            tenant = default_tenant
        return cls.of(obj, tenant or "")

    @property
    def file_id(self) -> str:
        return hashlib.sha1(f"{self.uri}\0{self.etag}".encode()).hexdigest()[:20]

    @property
    def landing_date(self) -> str:
        return self.landed_at.date().isoformat()


@functools.cache  # Arrow tables are immutable: one empty table serves every report
def _no_rejects() -> pa.Table:
    return QUARANTINE_SCHEMA.empty_table().select(REJECT_COLUMNS)


@dataclass
class FileReport:
    source: SourceFile
    feed: str
    status: str  # parsed | failed | skipped
    rows_read: int = 0
    rows_valid: int = 0
    rows_duplicate: int = 0  # only for refused files; otherwise the merge counts duplicates
    rows_rejected: int = 0
    error: str | None = None
    notes: str | None = None  # not an error: e.g. an import's columns not in its manifest
    # The bronze Parquet holding the file's rows (shared with the other files of a pass).
    bronze_path: Path | None = None
    # Parquet of every rejected record (QUARANTINE_SCHEMA; shared with the other files of a
    # pass), None when nothing was rejected.
    quarantine_path: Path | None = None
    # The first rejected records in line order (line_number, raw, reason), for reports (files
    # of a pass beyond the first HEAD_FILES with rejects have none here; the ledger has all).
    rejects_head: pa.Table = field(default_factory=_no_rejects)

    @property
    def rejects(self) -> pa.Table:
        """Every rejected record (line_number, raw, reason) in line order, read from the
        quarantine file: for small files and tests; reports use `rejects_head`."""
        if self.quarantine_path is None:
            return _no_rejects()
        table = pq.read_table(self.quarantine_path)
        mine = pc.and_(
            pc.equal(table["source_uri"], self.source.uri),
            pc.equal(table["etag"], self.source.etag),
        )
        return table.filter(mine).select(REJECT_COLUMNS).sort_by("line_number")


def new_connection(temp_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET temp_directory = {sql_str(str(temp_dir))}")
    con.execute(f"SET memory_limit = {sql_str(MEMORY_LIMIT)}")
    # Timestamps without an offset are UTC, whatever the machine's time zone (SPEC section 6).
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")  # DuckDB draws it on stdout for long queries
    return con


class _Provenance:
    """The files of a pass, by index: what every bronze and quarantine row says about its file."""

    def __init__(self, sources: Sequence[SourceFile], feed: str) -> None:
        self.sources = list(sources)
        self.tenant = pa.array([s.tenant_id for s in sources], pa.string())
        self.uri = pa.array([s.uri for s in sources], pa.string())
        self.etag = pa.array([s.etag for s in sources], pa.string())
        self.landed_at = pa.array([s.landed_at for s in sources], PROVENANCE_COLUMNS["landed_at"])
        self.feed = pa.array([feed] * len(sources), pa.string())

    def __len__(self) -> int:
        return len(self.sources)

    def tenant_sql(self) -> str:
        """SQL: the tenant of a record's file (`file_index`), without a join (a join would not
        keep the records in file order)."""
        tenants = [s.tenant_id for s in self.sources]
        if len(set(tenants)) == 1:
            return sql_str(tenants[0])
        return f"[{', '.join(sql_str(t) for t in tenants)}][r.file_index + 1]"

    @staticmethod
    def of(values: pa.Array, indexes: pa.Array) -> pa.Array:
        """Per row, its file's value: dictionary-encoded (no string copied per row)."""
        if pa.types.is_timestamp(values.type):
            return values.take(indexes)
        return pa.DictionaryArray.from_arrays(indexes, values)


def _timestamp_column(field: FieldSpec) -> str:
    return f"{field.name}__timestamp"


def _bronze_value(field: FieldSpec) -> str:
    """The column of the records query holding a field's bronze value."""
    if field.kind == "unix_seconds":
        return _timestamp_column(field)
    if field.kind in TYPE_NAMES:
        return typed_column(field)
    return field.name  # text, trimmed


def _hashed_targets(feed: FeedSpec) -> list[TargetSpec]:
    """Row targets whose key the bronze step can hash: every key column is the tenant or a
    declared field taken as it is."""
    fields = {f.name for f in feed.fields}
    return [
        t
        for t in feed.targets
        if t.mode == "row" and all(k == "tenant_id" or t.columns.get(k) in fields for k in t.key)
    ]


def _key_hashes_sql(feed: FeedSpec, tenant: str) -> list[str]:
    """SELECT items: each hashed target's key hash (merge.key_hash_columns), over the records
    query (`r`); `tenant`: SQL giving the record's tenant."""
    by_name = {f.name: f for f in feed.fields}
    items = []
    for target in _hashed_targets(feed):
        parts, types = {}, {}
        for k in target.key:
            if k == "tenant_id":
                parts[k], types[k] = tenant, "VARCHAR"
            else:
                f = by_name[target.columns[k]]
                parts[k] = f"r.{ident(_bronze_value(f))}"
                types[k] = _BRONZE_TYPES.get(f.kind, "VARCHAR")
        hi, lo = split_hash_sql(key_hash_sql(parts, types))
        hi_name, lo_name = key_hash_columns(target)
        items += [f"{hi} AS {ident(hi_name)}", f"{lo} AS {ident(lo_name)}"]
    return items


def _json_value_sql(field: FieldSpec) -> str:
    """SQL: a field's typed value as JSON text (numbers and booleans as such, datetimes as ISO
    8601 UTC text), NULL when absent, over the validation columns (lateral column aliases)."""
    if field.kind == "datetime":
        seconds = "%S.%f" if field.format and "%f" in field.format else "%S"
        utc = f"timezone('UTC', {ident(typed_column(field))})"
        return f"'\"' || strftime({utc}, '%Y-%m-%dT%H:%M:{seconds}Z') || '\"'"
    if field.kind in TYPE_NAMES:
        return f"to_json({ident(typed_column(field))})::VARCHAR"
    return f"to_json(nullif(trim({ident(field.name)}), ''))::VARCHAR"


def _fields_json_sql(feed: FeedSpec) -> str:
    """SQL: the JSON object of the feed's `extras_fields`, typed, without the absent ones. Text
    put together (concat_ws skips NULLs): a third of the cost of building a MAP per record."""
    by_name = {f.name: f for f in feed.fields}
    members = ", ".join(
        f"{sql_str(json.dumps(name) + ':')} || {_json_value_sql(by_name[name])}"
        for name in feed.extras_fields
    )
    # Valid JSON by construction (to_json quotes every value): text, not a JSON cast, which
    # would parse every record's object again; the bronze file marks the column as JSON.
    return f"'{{' || concat_ws(',', {members}) || '}}'"


def _records_query(feed: FeedSpec, records_sql: str, files: _Provenance) -> str:
    """Each record with what bronze stores and why it is rejected, if it is, in one SELECT:
    `error` (unreadable), `rule_error` (the row rules it breaks), typed fields, extras, key
    hashes."""
    select = ["file_index", "line_number", "raw", "error", *validation_columns_sql(feed)]
    for f in feed.fields:
        if f.kind == "unix_seconds":
            seconds = typed_sql(f)
            select.append(
                f"CASE WHEN {seconds} >= 0 AND {seconds} < {MAX_UNIX_SECONDS} "
                f"THEN to_timestamp({seconds}) END AS {ident(_timestamp_column(f))}"
            )
    if feed.extras_fields:
        select.append(f"{_fields_json_sql(feed)} AS {ident(feed.extras_column)}")
    elif feed.extras_column not in validation_columns(feed):
        select.append(ident(feed.extras_column))
    records = f"SELECT {', '.join(select)} FROM ({records_sql})"
    outer = [
        "r.*",
        f"CASE WHEN r.error IS NULL THEN {rule_failures_sql(feed)} END AS rule_error",
        *_key_hashes_sql(feed, files.tenant_sql()),
    ]
    return f"SELECT {', '.join(outer)} FROM ({records}) r"


def _bronze_table(
    good: pa.Table, feed: FeedSpec, files: _Provenance, hashes: list[str]
) -> pa.Table:
    """The bronze rows of a chunk: provenance, typed fields, extras as JSON, key hashes."""
    indexes = good["file_index"].combine_chunks()

    def as_json(column: str) -> pa.Array:
        # Parquet's JSON logical type, so DuckDB reads the column back as JSON
        values = good[column].combine_chunks()
        return pa.ExtensionArray.from_storage(pa.json_(values.type), values)

    columns = {
        "tenant_id": files.of(files.tenant, indexes),
        "source_uri": files.of(files.uri, indexes),
        "etag": files.of(files.etag, indexes),
        "landed_at": files.of(files.landed_at, indexes),
        "line_number": good["line_number"],
        **{
            f.name: as_json(f.name) if f.kind == "object" else good[_bronze_value(f)]
            for f in feed.fields
        },
        feed.extras_column: as_json(feed.extras_column),
        **{h: good[h] for h in hashes},
    }
    return pa.table(columns)


def _chunks(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.Table]:
    """The reader's batches gathered into tables of about `rows` rows (a fixed cost per chunk
    is paid per call; DuckDB hands over batches the size of its input's)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


class _Quarantine:
    """Rejected records appended to a Parquet file as they are found (in line order per file),
    with the first ones of up to HEAD_FILES files kept for reports."""

    def __init__(self, path: Path, files: _Provenance) -> None:
        self.path, self.files = path, files
        self.writer: pq.ParquetWriter | None = None
        self.count = 0
        self.heads: dict[int, list[pa.Table]] = {}
        self.head_rows: dict[int, int] = {}

    def add(
        self, indexes: pa.Array, line_numbers: pa.Array, raw: pa.Array, reasons: pa.Array
    ) -> None:
        n = len(line_numbers)
        if not n:
            return
        indexes = indexes.cast(pa.int32())
        table = pa.table(
            [
                line_numbers,
                quarantine_raw(raw.cast(pa.string())),
                reasons.cast(pa.string()),
                self.files.uri.take(indexes),
                self.files.etag.take(indexes),
                self.files.feed.take(indexes),
            ],
            schema=QUARANTINE_SCHEMA,
        )
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, QUARANTINE_SCHEMA, compression="snappy")
        self.writer.write_table(table)
        self.count += n
        self._keep_heads(indexes.to_numpy(), table)

    def _keep_heads(self, indexes: np.ndarray, table: pa.Table) -> None:
        for index in np.unique(indexes).tolist():
            if index not in self.heads and len(self.heads) >= HEAD_FILES:
                continue
            kept = self.head_rows.get(index, 0)
            if kept >= HEAD_REJECTS:
                continue
            rows = table.filter(pa.array(indexes == index)).select(REJECT_COLUMNS)
            rows = rows.slice(0, HEAD_REJECTS - kept)
            self.heads.setdefault(index, []).append(rows)
            self.head_rows[index] = kept + rows.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def head_table(self, index: int = 0) -> pa.Table:
        if index not in self.heads:
            return _no_rejects()
        return pa.concat_tables(self.heads[index]).sort_by("line_number").slice(0, HEAD_REJECTS)


@dataclass
class _Counts:
    """What one streaming pass found, per file (arrays indexed by file)."""

    read: np.ndarray
    valid: np.ndarray
    objects: np.ndarray  # readable records (JSON objects / CSV records)
    last_line: np.ndarray
    file_check: NdjsonFileCheck | None = None

    @classmethod
    def zeros(cls, n: int, file_check: NdjsonFileCheck | None) -> _Counts:
        z = np.zeros(n, np.int64)
        return cls(z.copy(), z.copy(), z.copy(), z.copy(), file_check)


def _reasons_of_unreadable(
    errors: pa.Array, raws: pa.Array, files: np.ndarray, described: np.ndarray
) -> pa.Array:
    """The reasons of unreadable records: the reader's error, with the position worked out for
    the first DESCRIBE_JSON_ERRORS invalid JSON lines of each file (`files`: each record's file
    index; `described`: per file, how many were worked out before, updated here)."""
    invalid = np.flatnonzero(pc.equal(errors, INVALID_JSON).to_numpy(zero_copy_only=False))
    if not len(invalid):
        return errors
    of_file = files[invalid]
    # each invalid line's rank among its file's invalid lines in this chunk
    order = np.argsort(of_file, kind="stable")
    ranked = of_file[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(len(ranked)) - np.searchsorted(ranked, ranked, side="left")
    keep = described[of_file] + rank < DESCRIBE_JSON_ERRORS
    invalid = invalid[keep]
    if not len(invalid):
        return errors
    described += np.bincount(of_file[keep], minlength=len(described))
    reasons = errors.to_pylist()
    for i, raw in zip(invalid.tolist(), raws.take(pa.array(invalid)).to_pylist(), strict=True):
        reasons[i] = describe_invalid_json(raw)
    return pa.array(reasons, pa.string())


class _ChunkHandler:
    """Splits one chunk of records and writes it out: unreadable and rule-breaking records to
    the quarantine, the others to the bronze file. Chunks must come in file order."""

    def __init__(
        self,
        feed: FeedSpec,
        files: _Provenance,
        bronze_path: Path,
        records_schema: pa.Schema,
        quarantine: _Quarantine,
        file_check: NdjsonFileCheck | None,
    ) -> None:
        self.feed, self.files, self.quarantine = feed, files, quarantine
        self.found = _Counts.zeros(len(files), file_check)
        self.described = np.zeros(len(files), np.int64)  # invalid JSON lines described
        self.hashes = [h for t in _hashed_targets(feed) for h in key_hash_columns(t)]
        self.bronze_inputs = [
            "file_index",
            "line_number",
            *(_bronze_value(f) for f in feed.fields),
            feed.extras_column,
            *self.hashes,
        ]
        empty = records_schema.empty_table().select(self.bronze_inputs)
        self.bronze = pq.ParquetWriter(
            bronze_path,
            _bronze_table(empty, feed, files, self.hashes).schema,
            compression="snappy",
            # only the provenance columns, constant in a file: trying a dictionary on every
            # column cost a third of the write (1M rows: 0.47 s -> 0.34 s)
            use_dictionary=list(PROVENANCE_COLUMNS),
        )

    def handle(self, chunk: pa.Table) -> None:
        found, n = self.found, len(self.files)
        indexes = chunk["file_index"].to_numpy()
        lines = chunk["line_number"].to_numpy()
        found.read += np.bincount(indexes, minlength=n)
        np.maximum.at(found.last_line, indexes, lines)
        if found.file_check is not None:
            found.file_check.add(chunk)
        unreadable = pc.is_valid(chunk["error"])
        rejected = pc.or_(unreadable, pc.is_valid(chunk["rule_error"]))
        found.objects += np.bincount(
            indexes[~unreadable.to_numpy(zero_copy_only=False)], minlength=n
        )
        # Filters copy: each output takes only the columns it needs (raw text only for the
        # few rejected records).
        bad = chunk.select(["file_index", "line_number", "raw", "error", "rule_error"]).filter(
            rejected
        )
        if bad.num_rows:
            reasons = _reasons_of_unreadable(
                bad["error"].combine_chunks(),
                bad["raw"].combine_chunks(),
                bad["file_index"].to_numpy(),
                self.described,
            )
            reasons = pc.coalesce(reasons, bad["rule_error"].combine_chunks())
            self.quarantine.add(
                bad["file_index"].combine_chunks(), bad["line_number"], bad["raw"], reasons
            )
        good = chunk.select(self.bronze_inputs).filter(pc.invert(rejected))
        if good.num_rows:
            self.bronze.write_table(_bronze_table(good, self.feed, self.files, self.hashes))
            found.valid += np.bincount(good["file_index"].to_numpy(), minlength=n)

    def close(self) -> None:
        self.bronze.close()


def _stream(
    con: duckdb.DuckDBPyConnection,
    records: Records | NdjsonPass,
    feed: FeedSpec,
    files: _Provenance,
    bronze_path: Path,
    quarantine: _Quarantine,
    file_check: NdjsonFileCheck | None,
) -> _Counts:
    """One pass over the records. DuckDB produces the next chunk (in this thread, the GIL
    released) while a worker thread splits and writes the previous ones, in order."""
    reader = con.sql(_records_query(feed, records.sql(con), files)).to_arrow_reader(CHUNK_ROWS)
    handler = _ChunkHandler(feed, files, bronze_path, reader.schema, quarantine, file_check)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bronze-chunks") as worker:
            in_flight: deque[Future[None]] = deque()
            for chunk in _chunks(reader, CHUNK_ROWS):
                in_flight.append(worker.submit(handler.handle, chunk))
                if len(in_flight) > CHUNKS_IN_FLIGHT:
                    in_flight.popleft().result()  # bounds memory; re-raises a chunk's error
            for done in in_flight:
                done.result()
    finally:
        handler.close()
        records.release(con)
    return handler.found


def _policy_refuses(policy: FeedPolicy, rejected: int, read: int) -> bool:
    if rejected == 0:
        return False
    if policy.on_error == "abort":
        return True
    return policy.on_error == "skip_file" and rejected / read > policy.max_rejected_fraction


def _policy_verdict(report: FileReport, policy: FeedPolicy) -> str | None:
    """Why the error policy refuses the whole file, or None when its good rows may load."""
    if not _policy_refuses(policy, report.rows_rejected, report.rows_read):
        return None
    share = report.rows_rejected / report.rows_read
    first = report.rejects_head.slice(0, 1).to_pylist()[0]
    summary = (
        f"{report.rows_rejected} of {report.rows_read} rows rejected ({share:.1%}); first: "
        f"line {first['line_number']}: {first['reason']}"
    )
    if policy.on_error == "abort":
        return f"import aborted (on_error: abort): {summary}"
    return (
        f"file skipped (on_error: skip_file, max_rejected_fraction "
        f"{policy.max_rejected_fraction:g}): {summary}"
    )


def _head_of(path: Path) -> pa.Table:
    """The first rejected records of a quarantine file (written in line order)."""
    batches = pq.ParquetFile(path).iter_batches(batch_size=HEAD_REJECTS, columns=REJECT_COLUMNS)
    first = next(batches, None)
    return pa.Table.from_batches([first]) if first is not None else _no_rejects()


def _quarantine_everything(
    con: duckdb.DuckDBPyConnection,
    records: Records,
    report: FileReport,
    quarantine_path: Path,
    new_reason: str,
    *,
    keep_reasons: bool,
    damage_line: int | None,
) -> None:
    """Second read: every record of the file into the quarantine with `new_reason`; records
    already rejected keep their own reason when `keep_reasons`. Rewrites the quarantine file."""
    src = report.source
    constants = (
        f"{sql_str(src.uri)} AS source_uri, {sql_str(src.etag)} AS etag, "
        f"{sql_str(report.feed)} AS feed"
    )
    everything = (
        f"SELECT line_number, {quarantine_raw_sql('raw')} AS raw, $reason AS reason, {constants} "
        f"FROM ({records.sql(con)})"
    )
    if keep_reasons and report.quarantine_path is not None:
        quarantined = f"read_parquet({sql_str(str(report.quarantine_path))})"
        body = f"""
            SELECT * FROM {quarantined}
            UNION ALL
            SELECT * FROM ({everything}) WHERE line_number NOT IN (SELECT line_number FROM {quarantined})"""
    elif damage_line is not None:  # the gzip damage record is not one the second read sees
        body = f"{everything} UNION ALL SELECT {damage_line}, '', $reason, {constants}"
    else:
        body = everything
    rewritten = quarantine_path.with_name(quarantine_path.name + ".all")
    con.execute(
        f"COPY ({body} ORDER BY line_number) TO {sql_str(str(rewritten))} "
        "(FORMAT parquet, COMPRESSION snappy)",
        {"reason": new_reason},
    )
    records.release(con)
    rewritten.replace(quarantine_path)
    report.quarantine_path = quarantine_path
    report.rows_rejected = pq.ParquetFile(quarantine_path).metadata.num_rows
    report.rejects_head = _head_of(quarantine_path)
    report.rows_valid = 0
    report.bronze_path = None


def process_file(
    local_path: Path,
    source: SourceFile,
    feed: FeedSpec,
    workdir: Path,
    policy: FeedPolicy | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    *,
    name: str | None = None,
) -> FileReport:
    """Parse, type and validate one local copy of a landed file.

    Writes `<workdir>/<file_id>.parquet` with the rows to merge (and the quarantine beside it)
    and returns the counts. Whole-file problems give status `failed` (or `skipped` by the error
    policy) with the reason, never an exception; the file's records are then all in the
    quarantine, so rows_read = rows_loaded + rows_duplicate + rows_rejected still holds.
    `con`: a connection of `new_connection` to reuse (one is opened and closed otherwise).
    """
    policy = policy or FeedPolicy()
    workdir.mkdir(parents=True, exist_ok=True)
    report = FileReport(source=source, feed=feed.name, status="parsed")
    bronze_path = workdir / f"{source.file_id}.parquet"
    files = _Provenance([source], feed.name)
    quarantine = _Quarantine(workdir / f"{source.file_id}.quarantine.parquet", files)
    own = con is None
    con = con or new_connection(workdir)
    try:
        try:
            records = open_records(con, local_path, name or source.key, feed)
            file_check = NdjsonFileCheck() if records.shape.file_format == "ndjson" else None
            found = _stream(con, records, feed, files, bronze_path, quarantine, file_check)
            damage = records.damage
            damage_line = None
            if damage is not None:
                # The damaged tail is one more record, in the quarantine with the reason.
                damage_line = int(found.last_line[0])
                damage_line = max(damage_line, 1 if records.shape.file_format == "csv" else 0) + 1
                quarantine.add(
                    pa.array([0], pa.int32()),
                    pa.array([damage_line], pa.int64()),
                    pa.array([""]),
                    pa.array([damage]),
                )
                found.read[0] += 1
                if found.file_check is not None:
                    found.file_check.total += 1  # a record too, if not one that can be read
        except UnsupportedFile as exc:
            report.status, report.error = "failed", str(exc)
            return report
        except duckdb.Error as exc:
            report.status, report.error = "failed", f"the file could not be read: {exc}"
            return report
        finally:
            quarantine.close()

        report.rows_read = int(found.read[0])
        report.rows_valid = int(found.valid[0])
        report.rows_rejected = quarantine.count
        report.rejects_head = quarantine.head_table(0)
        report.quarantine_path = quarantine.path if quarantine.count else None
        report.bronze_path = bronze_path
        report.error = damage
        if feed.undeclared == "ignore" and records.columns:
            ignored = undeclared_columns(records.columns, feed)
            if ignored:
                report.notes = "columns not imported (not mapped): " + ", ".join(ignored)

        if report.rows_read == 0:
            report.status, report.error = "failed", "found zero data rows in the file"
            report.bronze_path = None
            return report
        file_error = found.file_check.verdict() if found.file_check is not None else None
        if file_error:
            # The file as a whole is wrong: every record goes to the quarantine with that reason.
            report.status, report.error = "failed", file_error
            _quarantine_everything(
                con,
                records,
                report,
                quarantine.path,
                file_error,
                keep_reasons=False,
                damage_line=damage_line,
            )
            return report
        refusal = _policy_verdict(report, policy)
        if refusal is not None:
            # Nothing from the file merges; its good rows wait in the quarantine with the reason.
            report.status = "failed" if policy.on_error == "abort" else "skipped"
            report.error = refusal if not damage else f"{refusal}; {damage}"
            _quarantine_everything(
                con,
                records,
                report,
                quarantine.path,
                "not loaded: " + refusal,
                keep_reasons=True,
                damage_line=damage_line,
            )
            return report
        return report
    finally:
        if own:
            con.close()


def bulk_readable(source: SourceFile) -> bool:
    """Whether a file is read in a pass with others: a small NDJSON file (any compression)."""
    name = source.key.lower()
    for ext in (".gz", ".gzip"):
        name = name.removesuffix(ext)
    return source.size <= BULK_MAX_BYTES and name.endswith((".json", ".jsonl", ".ndjson"))


def _without_files(
    con: duckdb.DuckDBPyConnection, path: Path, files: _Provenance, drop: list[int]
) -> None:
    """Rewrite a pass's Parquet file (bronze or quarantine) without the rows of files `drop`."""
    gone = ", ".join(
        f"({sql_str(files.sources[i].uri)}, {sql_str(files.sources[i].etag)})" for i in drop
    )
    rewritten = path.with_name(path.name + ".kept")
    con.execute(
        f"COPY (SELECT * FROM read_parquet({sql_str(str(path))}) "
        f"ANTI JOIN (VALUES {gone}) gone(source_uri, etag) USING (source_uri, etag)) "
        f"TO {sql_str(str(rewritten))} (FORMAT parquet, COMPRESSION snappy)"
    )
    rewritten.replace(path)


def process_pass(
    inputs: Sequence[tuple[Path, SourceFile]],
    feed: FeedSpec,
    workdir: Path,
    policy: FeedPolicy | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> list[FileReport]:
    """Read several small NDJSON files (bulk_readable) in one stream: one bronze and one
    quarantine Parquet file for all of them (`pass-<id>.parquet`), a report per file in input
    order. A file that needs a verdict on the whole file is read again on its own
    (`process_file`), so each report is what the file alone would give."""
    policy = policy or FeedPolicy()
    workdir.mkdir(parents=True, exist_ok=True)
    sources = [s for _, s in inputs]
    pass_id = hashlib.sha1("\n".join(s.file_id for s in sources).encode()).hexdigest()[:20]
    bronze_path = workdir / f"pass-{pass_id}.parquet"
    files = _Provenance(sources, feed.name)
    quarantine = _Quarantine(workdir / f"pass-{pass_id}.quarantine.parquet", files)
    own = con is None
    con = con or new_connection(workdir)
    try:
        records = ndjson_pass([p for p, _ in inputs], [s.key for s in sources], feed)
        try:
            found = _stream(con, records, feed, files, bronze_path, quarantine, None)
        finally:
            quarantine.close()
        # Every record went to the bronze file or to the quarantine.
        rejected = found.read - found.valid
        alone = {
            i
            for i in range(len(files))
            if records.damage(i) is not None
            or found.read[i] == 0
            or NdjsonFileCheck.may_refuse(int(found.objects[i]), int(found.read[i]))
            or _policy_refuses(policy, int(rejected[i]), int(found.read[i]))
        }
        if alone:
            _without_files(con, bronze_path, files, sorted(alone))
            if quarantine.count:
                _without_files(con, quarantine.path, files, sorted(alone))
        reports = []
        for i, (path, source) in enumerate(inputs):
            if i in alone:
                reports.append(
                    process_file(path, source, feed, workdir / source.file_id, policy, con)
                )
                continue
            reports.append(
                FileReport(
                    source=source,
                    feed=feed.name,
                    status="parsed",
                    rows_read=int(found.read[i]),
                    rows_valid=int(found.valid[i]),
                    rows_rejected=int(rejected[i]),
                    bronze_path=bronze_path,
                    quarantine_path=quarantine.path if rejected[i] else None,
                    rejects_head=quarantine.head_table(i),
                )
            )
        return reports
    finally:
        if own:
            con.close()


def first_records(
    con: duckdb.DuckDBPyConnection,
    local_path: Path,
    name: str,
    source: SourceFile,
    feed: FeedSpec,
    limit: int,
) -> tuple[list[str], list[str], list[tuple]]:
    """The first `limit` records of a file as the bronze pass sees them (previews): the file's
    header (CSV), the column names, and per record its line, raw text, each field's bronze
    value, the extras, and why it would be rejected (`error`, `rule_error`). Writes nothing."""
    records = open_records(con, local_path, name, feed)
    query = _records_query(feed, records.sql(con), _Provenance([source], feed.name))
    columns = [
        "line_number",
        "raw",
        *(_bronze_value(f) for f in feed.fields),
        feed.extras_column,
        "error",
        "rule_error",
    ]
    try:
        rows = con.execute(
            f"SELECT {', '.join(ident(c) for c in columns)} FROM ({query}) "
            f"ORDER BY line_number LIMIT {int(limit)}"
        ).fetchall()
    finally:
        records.release(con)
    names = ["line_number", "raw", *(f.name for f in feed.fields), feed.extras_column]
    return records.columns or [], [*names, "error", "rule_error"], rows
