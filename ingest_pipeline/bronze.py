"""One landed file -> typed bronze rows (Parquet) + rejected rows (quarantine Parquet), with counts.

One streaming pass: DuckDB reads the file's records (parsing.py) in a private in-memory database,
types their fields and takes their extras; chunk by chunk the feed's pandera schema names the
rows that break a rule (validation.py); good rows are appended to the bronze file and every other
record to the quarantine file, with its line number, raw text and reason. Nothing of the file is
held beyond one chunk, so memory is bounded whatever the file size, and the warehouse is not
touched: it sees the result later, in one merge transaction.

A verdict on the whole file (one JSON document, only NUL bytes, the feed's error policy refusing
the file) is known only at the end: then the records are read a second time and every one goes to
the quarantine with the reason, so that rows_read = rows_loaded + rows_duplicate + rows_rejected
still holds.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest_pipeline.config import FeedPolicy
from ingest_pipeline.feeds import FeedSpec, FieldSpec
from ingest_pipeline.parsing import (
    DESCRIBE_JSON_ERRORS,
    INVALID_JSON,
    NdjsonFileCheck,
    Records,
    UnsupportedFile,
    describe_invalid_json,
    ident,
    open_records,
    quarantine_raw,
    quarantine_raw_sql,
    sql_str,
)
from ingest_pipeline.validation import (
    MAX_UNIX_SECONDS,
    TYPE_NAMES,
    RowValidator,
    typed_column,
    typed_sql,
    validation_columns_sql,
)

MEMORY_LIMIT = "1GB"
# Records validated and written at a time: 1M-line file, 100k: 2.2 s and 0.7 GiB peak,
# 500k: 2.6 s and 1.1 GiB (fewer, bigger chunks in flight), 50k: 2.4 s and 0.6 GiB.
CHUNK_ROWS = 100_000
CHUNKS_IN_FLIGHT = 2  # handed to the worker thread and not yet written
HEAD_REJECTS = 100  # rejected records kept in memory for reports and metadata

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


@dataclass(frozen=True)
class SourceFile:
    """A file as found in the landing zone: identity (uri, etag) and landing time."""

    uri: str
    etag: str
    key: str
    landed_at: datetime
    size: int
    tenant_id: str

    @property
    def file_id(self) -> str:
        return hashlib.sha1(f"{self.uri}\0{self.etag}".encode()).hexdigest()[:20]

    @property
    def landing_date(self) -> str:
        return self.landed_at.date().isoformat()


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
    bronze_path: Path | None = None
    # Parquet of every rejected record (QUARANTINE_SCHEMA), None when nothing was rejected.
    quarantine_path: Path | None = None
    # The first rejected records in line order (line_number, raw, reason), for reports.
    rejects_head: pa.Table = field(default_factory=_no_rejects)

    @property
    def rejects(self) -> pa.Table:
        """Every rejected record (line_number, raw, reason) in line order, read from the
        quarantine file: for small files and tests; reports use `rejects_head`."""
        if self.quarantine_path is None:
            return _no_rejects()
        return pq.read_table(self.quarantine_path, columns=REJECT_COLUMNS).sort_by("line_number")


def new_connection(temp_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET temp_directory = {sql_str(str(temp_dir))}")
    con.execute(f"SET memory_limit = {sql_str(MEMORY_LIMIT)}")
    # Timestamps without an offset are UTC, whatever the machine's time zone (SPEC section 6).
    con.execute("SET TimeZone = 'UTC'")
    return con


def _timestamp_column(field: FieldSpec) -> str:
    return f"{field.name}__timestamp"


def _records_query(feed: FeedSpec, records_sql: str) -> str:
    """Each record with what the rules check and what bronze stores, in one SELECT."""
    select = ["line_number", "raw", "error", *validation_columns_sql(feed)]
    for f in feed.fields:
        if f.kind == "unix_seconds":
            seconds = typed_sql(f)
            select.append(
                f"CASE WHEN {seconds} >= 0 AND {seconds} < {MAX_UNIX_SECONDS} "
                f"THEN to_timestamp({seconds}) END AS {ident(_timestamp_column(f))}"
            )
    select.append(ident(feed.extras_column))
    return f"SELECT {', '.join(select)} FROM ({records_sql})"


def _bronze_value(field: FieldSpec) -> str:
    """The column of the records query holding a field's bronze value."""
    if field.kind == "unix_seconds":
        return _timestamp_column(field)
    if field.kind in TYPE_NAMES:
        return typed_column(field)
    return field.name  # text, trimmed


def _constant(value: object, type_: pa.DataType, n: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), n)


def _bronze_table(good: pa.Table, feed: FeedSpec, source: SourceFile) -> pa.Table:
    """The bronze rows of a chunk: provenance, typed fields and the extras as JSON."""
    n = good.num_rows
    extras = good[feed.extras_column].combine_chunks()
    provenance = (source.tenant_id, source.uri, source.etag, source.landed_at)
    columns = {
        **{
            name: _constant(value, PROVENANCE_COLUMNS[name], n)
            for name, value in zip(PROVENANCE_COLUMNS, provenance, strict=True)
        },
        "line_number": good["line_number"],
        **{f.name: good[_bronze_value(f)] for f in feed.fields},
        # Parquet's JSON logical type, so DuckDB reads the column back as JSON
        feed.extras_column: pa.ExtensionArray.from_storage(pa.json_(extras.type), extras),
    }
    return pa.table(columns)


def _chunks(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.Table]:
    """The reader's batches gathered into tables of about `rows` rows (pandera has a fixed cost
    per call; DuckDB hands over batches the size of its input's)."""
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
    """Rejected records appended to a Parquet file as they are found."""

    def __init__(self, path: Path, source: SourceFile, feed: str) -> None:
        self.path, self.source, self.feed = path, source, feed
        self.writer: pq.ParquetWriter | None = None
        self.count = 0
        self.head: list[pa.Table] = []
        self.head_rows = 0

    def add(self, line_numbers: pa.Array, raw: pa.Array, reasons: pa.Array) -> None:
        n = len(line_numbers)
        if not n:
            return
        table = pa.table(
            [
                line_numbers,
                quarantine_raw(raw.cast(pa.string())),
                reasons.cast(pa.string()),
                _constant(self.source.uri, pa.string(), n),
                _constant(self.source.etag, pa.string(), n),
                _constant(self.feed, pa.string(), n),
            ],
            schema=QUARANTINE_SCHEMA,
        )
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, QUARANTINE_SCHEMA, compression="snappy")
        self.writer.write_table(table)
        self.count += n
        if self.head_rows < HEAD_REJECTS:
            self.head.append(table.select(REJECT_COLUMNS).slice(0, HEAD_REJECTS))
            self.head_rows += min(n, HEAD_REJECTS)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def head_table(self) -> pa.Table:
        if not self.head:
            return _no_rejects()
        return pa.concat_tables(self.head).sort_by("line_number").slice(0, HEAD_REJECTS)


@dataclass
class _Pass:
    """What one streaming pass over a file's records found."""

    rows_read: int = 0
    rows_valid: int = 0
    last_line: int = 0
    file_check: NdjsonFileCheck | None = None


def _reasons_of_unreadable(bad: pa.Table, budget: int) -> tuple[pa.Array, int]:
    """The reasons of unreadable records: the reader's error, with the position worked out for
    up to `budget` invalid JSON lines. Returns (reasons, how many were worked out)."""
    errors = bad["error"].combine_chunks()
    invalid = np.flatnonzero(pc.equal(errors, INVALID_JSON).to_numpy(zero_copy_only=False))
    invalid = invalid[:budget]
    if not len(invalid):
        return errors, 0
    reasons = errors.to_pylist()
    raws = bad["raw"].take(pa.array(invalid)).to_pylist()
    for i, raw in zip(invalid.tolist(), raws, strict=True):
        reasons[i] = describe_invalid_json(raw)
    return pa.array(reasons, pa.string()), len(invalid)


class _ChunkHandler:
    """Validates one chunk of records and writes it out: unreadable and rule-breaking records
    to the quarantine, the others to the bronze file. Chunks must come in file order."""

    def __init__(
        self,
        feed: FeedSpec,
        source: SourceFile,
        bronze_path: Path,
        records_schema: pa.Schema,
        quarantine: _Quarantine,
        file_check: NdjsonFileCheck | None,
    ) -> None:
        self.feed, self.source, self.quarantine = feed, source, quarantine
        self.found = _Pass(file_check=file_check)
        self.validator = RowValidator(feed)
        self.describe_budget = DESCRIBE_JSON_ERRORS
        self.bronze_inputs = [
            "line_number",
            *(_bronze_value(f) for f in feed.fields),
            feed.extras_column,
        ]
        bronze_schema = _bronze_table(records_schema.empty_table(), feed, source).schema
        self.bronze = pq.ParquetWriter(
            bronze_path,
            bronze_schema,
            compression="snappy",
            # only the provenance columns, constant in a file: trying a dictionary on every
            # column cost a third of the write (1M rows: 0.47 s -> 0.34 s)
            use_dictionary=list(PROVENANCE_COLUMNS),
        )

    def handle(self, chunk: pa.Table) -> None:
        found = self.found
        found.rows_read += chunk.num_rows
        found.last_line = max(found.last_line, pc.max(chunk["line_number"]).as_py() or 0)
        if found.file_check is not None:
            found.file_check.add(chunk)
        # Filters copy: each output takes only the columns it needs (raw text only for the
        # few rejected records).
        unreadable = pc.is_valid(chunk["error"])
        readable = pc.invert(unreadable)
        bad = chunk.select(["line_number", "raw", "error"]).filter(unreadable)
        if bad.num_rows:
            reasons, described = _reasons_of_unreadable(bad, self.describe_budget)
            self.describe_budget -= described
            self.quarantine.add(bad["line_number"], bad["raw"], reasons)
        failures = self.validator.failures(chunk.select(self.validator.columns).filter(readable))
        keep = readable
        if failures.num_rows:
            failures = failures.sort_by("line_number")
            failed = pc.is_in(chunk["line_number"], value_set=failures["line_number"])
            failed_rows = chunk.select(["line_number", "raw"]).filter(failed)
            failed_rows = failed_rows.sort_by("line_number")
            self.quarantine.add(failed_rows["line_number"], failed_rows["raw"], failures["reason"])
            keep = pc.and_(readable, pc.invert(failed))
        good = chunk.select(self.bronze_inputs).filter(keep)
        if good.num_rows:
            self.bronze.write_table(_bronze_table(good, self.feed, self.source))
            found.rows_valid += good.num_rows

    def close(self) -> None:
        self.bronze.close()


def _stream(
    con: duckdb.DuckDBPyConnection,
    records: Records,
    feed: FeedSpec,
    source: SourceFile,
    bronze_path: Path,
    quarantine: _Quarantine,
) -> _Pass:
    """One pass over the file's records. DuckDB produces the next chunk (in this thread, the
    GIL released) while a worker thread validates and writes the previous ones, in order."""
    reader = con.sql(_records_query(feed, records.sql(con))).to_arrow_reader(CHUNK_ROWS)
    file_check = NdjsonFileCheck() if records.shape.file_format == "ndjson" else None
    handler = _ChunkHandler(feed, source, bronze_path, reader.schema, quarantine, file_check)
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


def _policy_verdict(report: FileReport, policy: FeedPolicy) -> str | None:
    """Why the error policy refuses the whole file, or None when its good rows may load."""
    if report.rows_rejected == 0:
        return None
    share = report.rows_rejected / report.rows_read
    first = report.rejects_head.slice(0, 1).to_pylist()[0]
    summary = (
        f"{report.rows_rejected} of {report.rows_read} rows rejected ({share:.1%}); first: "
        f"line {first['line_number']}: {first['reason']}"
    )
    if policy.on_error == "abort":
        return f"import aborted (on_error: abort): {summary}"
    if policy.on_error == "skip_file" and share > policy.max_rejected_fraction:
        return (
            f"file skipped (on_error: skip_file, max_rejected_fraction "
            f"{policy.max_rejected_fraction:g}): {summary}"
        )
    return None


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
) -> FileReport:
    """Parse, type and validate one local copy of a landed file.

    Writes `<workdir>/<file_id>.parquet` with the rows to merge (and the quarantine beside it)
    and returns the counts. Whole-file problems give status `failed` (or `skipped` by the error
    policy) with the reason, never an exception; the file's records are then all in the
    quarantine, so rows_read = rows_loaded + rows_duplicate + rows_rejected still holds.
    """
    policy = policy or FeedPolicy()
    workdir.mkdir(parents=True, exist_ok=True)
    report = FileReport(source=source, feed=feed.name, status="parsed")
    bronze_path = workdir / f"{source.file_id}.parquet"
    quarantine = _Quarantine(workdir / f"{source.file_id}.quarantine.parquet", source, feed.name)
    con = new_connection(workdir)
    try:
        try:
            records = open_records(con, local_path, source.key, feed)
            found = _stream(con, records, feed, source, bronze_path, quarantine)
            damage = records.damage
            damage_line = None
            if damage is not None:
                # The damaged tail is one more record, in the quarantine with the reason.
                damage_line = max(found.last_line, 1 if records.shape.file_format == "csv" else 0)
                damage_line += 1
                quarantine.add(
                    pa.array([damage_line], pa.int64()), pa.array([""]), pa.array([damage])
                )
                found.rows_read += 1
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

        report.rows_read = found.rows_read
        report.rows_valid = found.rows_valid
        report.rows_rejected = quarantine.count
        report.rejects_head = quarantine.head_table()
        report.quarantine_path = quarantine.path if quarantine.count else None
        report.bronze_path = bronze_path
        report.error = damage

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
        con.close()
