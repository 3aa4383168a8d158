"""The warehouse DDL and the feed declarations cannot disagree (issue #9, the seam): every column
a target writes exists in its table, checked when the schema is created or migrated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ingest_pipeline import feeds, warehouse


def test_every_declared_column_exists_in_the_warehouse(tmp_path: Path) -> None:
    with warehouse.connect(tmp_path / "wh.duckdb") as con:
        warehouse.check_declarations(con)  # raises SchemaMismatch naming what is missing
        columns = {
            (t, c)
            for t, c in con.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
            ).fetchall()
        }
    for feed in feeds.FEEDS.values():
        for target in feed.targets:
            for column in target.written_columns():
                assert (target.table, column) in columns, (feed.name, target.table, column)
    # the account's domain is a declaration now, not a special case in the merge
    (accounts,) = [t for t in feeds.GROUP.targets if t.table == "accounts"]
    assert accounts.promoted == ("domain",)


def test_a_declaration_naming_a_column_the_warehouse_lacks_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warehouse.connect(tmp_path / "wh.duckdb"):
        pass  # created with the real declarations
    accounts = next(t for t in feeds.GROUP.targets if t.table == "accounts")
    wrong = dataclasses.replace(accounts, promoted=("domain", "industry"))
    group = dataclasses.replace(
        feeds.GROUP, targets=tuple(wrong if t is accounts else t for t in feeds.GROUP.targets)
    )
    monkeypatch.setitem(feeds.FEEDS, "group", group)
    with warehouse.connect(tmp_path / "wh.duckdb") as con:
        with pytest.raises(warehouse.SchemaMismatch, match="accounts has no column industry"):
            warehouse.check_declarations(con)


def test_a_new_warehouse_is_not_created_against_a_wrong_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    track = dataclasses.replace(
        feeds.TRACK,
        targets=(
            dataclasses.replace(
                feeds.TRACK.targets[0],
                columns={**feeds.TRACK.targets[0].columns, "channel": "properties->>'channel'"},
            ),
        ),
    )
    monkeypatch.setitem(feeds.FEEDS, "track", track)
    with pytest.raises(warehouse.SchemaMismatch, match="events has no column channel"):
        with warehouse.connect(tmp_path / "wh.duckdb"):
            pass
