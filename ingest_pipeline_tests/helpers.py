"""Test helpers: build files from Python rows, run them through bronze + ledger + merge on a real
DuckDB file, read tables back, and compute expected results with plain Python (no pipeline code).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ingest_pipeline import ledger, pipeline, warehouse
from ingest_pipeline.bronze import FileReport, SourceFile, process_file
from ingest_pipeline.feeds import FEEDS, FeedSpec, feed_for_key
from ingest_pipeline.landing import LocalLanding
from ingest_pipeline.merge import BronzeFile, merge_bronze

TENANT = "acme"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DOMAIN_TABLES = (
    "events",
    "contacts",
    "accounts",
    "attribute_values",
    "contact_accounts",
    "crm_leads",
    "rejected_rows",
    "aliases",
    "identities",
)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- building file bodies --------------------------------------------------------------------------


def ndjson(rows: Iterable[dict[str, Any] | str], *, newline: str = "\n") -> bytes:
    """One line per row; a str row is written as is (a raw, possibly broken, line)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    return "".join(line + newline for line in lines).encode()


def csv_text(value: Any) -> str:
    """How a CSV writer would represent a Python value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csv_body(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> bytes:
    """A CSV file (header + rows) written by Python's csv module (`""` quote escaping)."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([csv_text(r.get(c)) for c in columns])
    return out.getvalue().encode()


def as_read(rows: Sequence[dict[str, Any]], is_csv: bool) -> list[dict[str, Any]]:
    """The rows as a reader of the file sees them: CSV turns every value into text, '' = null."""
    if not is_csv:
        return list(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return [{c: (csv_text(r.get(c)) or None) for c in columns} for r in rows]


def encode(name: str, body: bytes) -> bytes:
    """Compress `body` when the file name asks for it."""
    return gzip.compress(body) if name.lower().endswith((".gz", ".gzip")) else body


# --- running files through the pipeline -------------------------------------------------------------


@dataclass(frozen=True)
class Landed:
    """A landed file: its key (gives feed and format), body, landing time and identity."""

    key: str
    body: bytes
    landed_at: datetime = T0
    etag: str | None = None
    uri: str | None = None

    @property
    def source_uri(self) -> str:
        return self.uri or f"s3://landing-bucket/{self.key}"

    @property
    def version(self) -> str:
        return self.etag or hashlib.md5(self.body).hexdigest()

    @property
    def feed(self) -> FeedSpec:
        feed = feed_for_key(self.key)
        assert feed is not None, self.key
        return feed


_NOT_DATA = {"identities": "EXCLUDE (updated_at)"}


class Harness:
    """One warehouse file + lake folder; files are parsed, recorded and merged like production."""

    def __init__(self, root: Path, tenant: str = TENANT, max_cluster_size: int = 500) -> None:
        self.root = root
        self.tenant = tenant
        self.max_cluster_size = max_cluster_size
        self.wh_path = root / "wh.duckdb"
        self.lake = LocalLanding(root / "lake")
        self._n = 0

    def source(self, f: Landed) -> SourceFile:
        return SourceFile(
            uri=f.source_uri,
            etag=f.version,
            key=f.key,
            landed_at=f.landed_at,
            size=len(f.body),
            tenant_id=self.tenant,
        )

    def parse(self, f: Landed, feed: FeedSpec | None = None) -> FileReport:
        self._n += 1
        local = self.root / "download" / str(self._n) / Path(f.key).name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(f.body)
        source = self.source(f)
        return process_file(local, source, feed or f.feed, self.root / "work" / str(self._n))

    def record(self, report: FileReport) -> None:
        feed = FEEDS[report.feed]
        bronze_uri = None
        if report.bronze_path is not None:
            bronze_uri = pipeline.bronze_key(feed, report.source)
            self.lake.put(bronze_uri, report.bronze_path)
        with warehouse.connect(self.wh_path) as con:
            ledger.record_parsed(
                con, report, bronze_uri=bronze_uri, run_id="test", started_at=T0, finished_at=T0
            )

    def merge(self, feed: FeedSpec) -> pipeline.MergeOutcome:
        return pipeline.merge_pending(
            feed,
            lake=self.lake,
            warehouse_path=self.wh_path,
            max_cluster_size=self.max_cluster_size,
        )

    def ingest(self, *files: Landed) -> list[FileReport]:
        """Parse, record and merge each file, one merge per file, in the given order."""
        reports = []
        for f in files:
            report = self.parse(f)
            self.record(report)
            self.merge(f.feed)
            reports.append(report)
        return reports

    def ingest_batch(self, *files: Landed) -> list[FileReport]:
        """Parse and record all files, then merge each feed's pending files in one batch."""
        reports = [self.parse(f) for f in files]
        for report in reports:
            self.record(report)
        for name in dict.fromkeys(r.feed for r in reports):
            self.merge(FEEDS[name])
        return reports

    def replay(self, reports: Sequence[FileReport], *, batch: bool = False) -> None:
        """Record and merge already parsed files (of any harness) in the given order: one merge
        per file, or all recorded first and merged per feed in one batch."""
        for report in reports:
            self.record(report)
            if not batch:
                self.merge(FEEDS[report.feed])
        if batch:
            for name in dict.fromkeys(r.feed for r in reports):
                self.merge(FEEDS[name])

    def merge_direct(self, feed: FeedSpec, reports: Sequence[FileReport]) -> dict:
        """merge_bronze over the reports' bronze files in one transaction (no ledger)."""
        files = [
            BronzeFile(
                r.source.uri, r.source.etag, r.source.landed_at.isoformat(), Path(r.bronze_path)
            )
            for r in reports
            if r.bronze_path is not None
        ]
        with warehouse.connect(self.wh_path) as con:
            con.execute("BEGIN TRANSACTION")
            loaded = merge_bronze(con, feed, files).loaded
            con.execute("COMMIT")
        return loaded

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with warehouse.connect(self.wh_path) as con:
            return rows_of(con, sql, params)

    def ledger_row(self, f: Landed) -> dict[str, Any]:
        rows = self.query(
            "SELECT * FROM ingested_files WHERE source_uri = ? AND etag = ?",
            [f.source_uri, f.version],
        )
        assert len(rows) == 1, rows
        return rows[0]

    def rejected(self, f: Landed) -> list[dict[str, Any]]:
        return self.query(
            "SELECT line_number, raw, reason FROM rejected_rows WHERE source_uri = ? AND etag = ? "
            "ORDER BY line_number",
            [f.source_uri, f.version],
        )

    def snapshot(self, tables: Sequence[str] = DOMAIN_TABLES) -> dict[str, list[dict[str, Any]]]:
        with warehouse.connect(self.wh_path) as con:
            # an identity row's updated_at is the wall-clock time of the merge that changed it
            return {
                t: sorted_rows(rows_of(con, f"SELECT * {_NOT_DATA.get(t, '')} FROM {t}"))
                for t in tables
            }


def rows_of(con: Any, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Rows as dicts; JSON columns parsed (key order of a JSON object is not data)."""
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    names = rel.columns
    json_cols = {n for n, t in zip(names, rel.types, strict=True) if str(t) == "JSON"}
    out = []
    for row in rel.fetchall():
        d = dict(zip(names, row, strict=True))
        for c in json_cols:
            if d[c] is not None:
                d[c] = json.loads(d[c])
        out.append(d)
    return out


def sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def check_counts(h: Harness, *files: Landed) -> dict[str, Any]:
    """The ledger row of (the first of) the ingested files, after checking each one's
    read = loaded + duplicates + rejected."""
    ledger_rows = {(r["source_uri"], r["etag"]): r for r in h.query("SELECT * FROM ingested_files")}
    for f in files:
        row = ledger_rows[(f.source_uri, f.version)]
        assert row["status"] == "ingested", row
        assert row["rows_read"] == (
            row["rows_loaded"] + row["rows_duplicate"] + row["rows_rejected"]
        ), row
    return ledger_rows[(files[0].source_uri, files[0].version)]


def drop_nulls(obj: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (obj or {}).items() if v is not None}


# --- expected results, in plain Python -------------------------------------------------------------


@dataclass(frozen=True)
class FileRows:
    """A file as the model sees it: identity, landing time and its valid rows by line number."""

    uri: str
    landed_at: datetime
    rows: list[tuple[int, dict[str, Any]]]


def file_rows(f: Landed, rows: Sequence[dict[str, Any]], first_line: int = 1) -> FileRows:
    return FileRows(f.source_uri, f.landed_at, list(enumerate(rows, start=first_line)))


def newest_rows(
    files: Iterable[FileRows],
    key: Callable[[dict[str, Any]], Any],
    *,
    within_file: str,
) -> dict[Any, tuple[FileRows, int, dict[str, Any]]]:
    """Per key, the winning row: newest landed file, then greatest uri, then first/last line."""
    best: dict[Any, tuple[tuple, tuple[FileRows, int, dict[str, Any]]]] = {}
    for f in files:
        for line, row in f.rows:
            rank = (f.landed_at, f.uri, -line if within_file == "first" else line)
            k = key(row)
            if k not in best or rank > best[k][0]:
                best[k] = (rank, (f, line, row))
    return {k: v for k, (_, v) in best.items()}


def newest_attributes(
    files: Iterable[FileRows], key: Callable[[dict[str, Any]], Any], skip: Sequence[str]
) -> dict[Any, dict[str, Any]]:
    """Per key and attribute, the newest landed non-null value (later line = newer)."""
    best: dict[Any, dict[str, tuple[tuple, Any]]] = {}
    for f in files:
        for line, row in f.rows:
            attrs = best.setdefault(key(row), {})
            for name, value in row.items():
                if name in skip or value is None:
                    continue
                rank = (f.landed_at, f.uri, line)
                if name not in attrs or rank > attrs[name][0]:
                    attrs[name] = (rank, value)
    return {k: {a: v for a, (_, v) in attrs.items()} for k, attrs in best.items()}


def unix(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)
