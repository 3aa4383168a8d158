"""Data-quality rules over the warehouse, plain SQL on a read-only connection: what the per-feed
asset checks (defs/ingestion/assets.py) report. They read the read snapshot, as of the last
committed merge, so a check never waits for a merge."""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from ingest_pipeline.feeds import FeedSpec
from ingest_pipeline.parsing import ident

SHOWN = 20


@dataclass
class AccountingCheck:
    """Every final file's rows add up: read = loaded + duplicate + rejected."""

    files_checked: int = 0
    rows_read: int = 0
    rows_loaded: int = 0
    rows_duplicate: int = 0
    rows_rejected: int = 0
    broken: list[tuple[str, int, int, int, int]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.broken

    @property
    def summary(self) -> str:
        if self.broken:
            return (
                f"{len(self.broken)} of {self.files_checked} ingested file(s) do not add up "
                "(rows read != loaded + duplicate + rejected): see `broken_files`, and "
                "`ingest-pipeline report <file>` for each"
            )
        return (
            f"all {self.files_checked} ingested file(s) add up: {self.rows_read} rows read = "
            f"{self.rows_loaded} loaded + {self.rows_duplicate} duplicate + "
            f"{self.rows_rejected} rejected"
        )

    def markdown(self) -> str:
        if not self.broken:
            return "Every file adds up."
        lines = [
            "| file | read | loaded | duplicate | rejected |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [f"| {u} | {r} | {lo} | {d} | {rj} |" for u, r, lo, d, rj in self.broken[:SHOWN]]
        return "\n".join(lines)


def accounting(con: duckdb.DuckDBPyConnection, feed: str) -> AccountingCheck:
    """Files `ingested` (the only final status that loads rows) whose counts do not add up."""
    total = con.execute(
        """
        SELECT count(*), coalesce(sum(rows_read), 0), coalesce(sum(rows_loaded), 0),
               coalesce(sum(rows_duplicate), 0), coalesce(sum(rows_rejected), 0)
        FROM ingested_files WHERE feed = ? AND status = 'ingested'
        """,
        [feed],
    ).fetchone()
    assert total is not None
    check = AccountingCheck(*(int(v) for v in total))
    check.broken = [
        (str(u), int(r or 0), int(lo or 0), int(d or 0), int(rj or 0))
        for u, r, lo, d, rj in con.execute(
            """
            SELECT source_uri, rows_read, rows_loaded, rows_duplicate, rows_rejected
            FROM ingested_files
            WHERE feed = ? AND status = 'ingested'
              AND (rows_read IS NULL OR rows_loaded IS NULL OR rows_duplicate IS NULL
                   OR rows_rejected IS NULL
                   OR rows_read <> rows_loaded + rows_duplicate + rows_rejected)
            ORDER BY source_uri
            """,
            [feed],
        ).fetchall()
    ]
    return check


@dataclass
class DuplicateKeys:
    table: str
    key: tuple[str, ...]
    rows: int = 0
    duplicated_keys: int = 0
    sample: list[dict[str, object]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.duplicated_keys == 0

    @property
    def summary(self) -> str:
        key = ", ".join(self.key)
        if self.duplicated_keys:
            return (
                f"{self.duplicated_keys} key(s) ({key}) have more than one row in "
                f"`{self.table}` ({self.rows} rows): the merge's dedupe was bypassed"
            )
        return f"no duplicate ({key}) among the {self.rows} rows of `{self.table}`"

    def markdown(self) -> str:
        if not self.sample:
            return "No duplicate keys."
        columns = [*self.key, "rows"]
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in self.sample]
        return "\n".join(lines)


def duplicate_keys(
    con: duckdb.DuckDBPyConnection, table: str, key: tuple[str, ...]
) -> DuplicateKeys:
    """Keys of `table` held by more than one row (a row table is unique on its target key by
    construction of the merge: this checks it)."""
    cols = ", ".join(ident(c) for c in key)
    result = DuplicateKeys(table=table, key=key)
    result.rows = int(con.execute(f"SELECT count(*) FROM {ident(table)}").fetchone()[0])  # type: ignore[index]
    dupes = con.execute(
        f"SELECT {cols}, count(*) AS n FROM {ident(table)} GROUP BY ALL HAVING count(*) > 1"
        " ORDER BY n DESC"
    )
    rows = dupes.fetchall()
    result.duplicated_keys = len(rows)
    result.sample = [dict(zip([*key, "rows"], r, strict=True)) for r in rows[:SHOWN]]
    return result


def unique_key_targets(feed: FeedSpec, table: str = "events") -> list[tuple[str, ...]]:
    """The keys `feed`'s row targets into `table` are unique on."""
    return [tuple(t.key) for t in feed.targets if t.table == table and t.mode == "row"]
