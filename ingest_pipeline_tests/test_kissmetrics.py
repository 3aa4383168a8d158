"""The Kissmetrics feed (SPEC section 3.2, issue 9): one line is an event, an alias, both, or
person properties, folded into `events`, `aliases` and `contacts` by routed targets; identities
resolved into people across every feed of the tenant."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ingest_pipeline import cli, warehouse
from ingest_pipeline.config import parse_config
from ingest_pipeline.feeds import DEFAULT_PLACEHOLDER_IDENTITIES, KISSMETRICS
from ingest_pipeline.file_report import file_report
from ingest_pipeline.identity.graph import person_id
from ingest_pipeline.landing import landing_from_url
from ingest_pipeline_tests.helpers import T0, Harness, Landed, ndjson
from ingest_pipeline_tests.test_end_to_end import pipeline_env, tick_and_run

__all__ = ["pipeline_env"]  # the fixture, shared with the end-to-end tests

# The vendor page's examples (../shared/seeds/002_5cfa130d68c848cc.txt), in its order.
VENDOR_VALID = [
    '{"_n":"visited site","_p":"person@mail.com","_t":1393344604}',
    '{"url":"www.example.com/","_n":"visited","_p":"person@mail.com","_t":1393344607}',
    '{"url":"www.example.com/","_n":"visited site","_p":"person@mail.com","_t":1393344609}',
    '{"_p":"new_customer@mail.com","_p2":"chuck@mail.com","_t":1393344614}',
    '{"_p":"1", "_t":1328044149, "_n":"Subscribed"}',
    '{"_p":"1", "_t":1328044149, "_n":"Subscribed", "Age":32, "Gender":"Male"}',
    '{"_p":"1", "_t":1328044149, "Email Address":"bob@bob.com"}',
    '{"_p":"1", "_t":1328044149, "_p2":"bob"}',
]
VENDOR_INVALID = """{"links":
  [
    {"_n":"visited site","_p":"person@mail.com","_t":1393344604},
    {"url":"www.example.com/","_n":"visited","_p":"person@mail.com","_t":1393344607},
    {"_p":"new_customer@mail.com","_p2":"chuck@mail.com","_t":1393344614},
  ]
}
"""


def _rows(con: Any, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def test_vendor_page_examples_dropped_in_s3_land_in_their_tables(
    pipeline_env: Path, s3_bucket: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, wh = f"s3://{s3_bucket[1]}/incoming", pipeline_env / "warehouse.duckdb"
    monkeypatch.setenv("INGEST_LANDING_URL", url)
    landing = landing_from_url(url)
    landing.put("kissmetrics/vendor.json", ("\n".join(VENDOR_VALID) + "\n").encode())
    landing.put("kissmetrics/vendor_invalid.json", VENDOR_INVALID.encode())
    with dg.instance_for_test() as instance:
        assert tick_and_run(instance, {}) >= 1
        merged = instance.get_latest_materialization_event(dg.AssetKey("kissmetrics_warehouse"))
        assert merged is not None
        metadata = merged.asset_materialization.metadata
        assert metadata["aliases_applied"].value == 2
        assert metadata["aliases_refused"].value == 0
        assert metadata["clusters_touched"].value == 2

    with warehouse.connect(wh, read_only=True) as con:
        events = {
            (c, e, int(ts.timestamp())): (json.loads(p), n)
            for c, e, ts, p, n in _rows(
                con,
                "SELECT contact_key, event_text, event_timestamp, properties, line_number "
                "FROM events",
            )
        }
        assert events == {
            ("person@mail.com", "visited site", 1393344604): ({}, 1),
            ("person@mail.com", "visited", 1393344607): ({"url": "www.example.com/"}, 2),
            ("person@mail.com", "visited site", 1393344609): ({"url": "www.example.com/"}, 3),
            # the same event twice in one file: the first line is kept, the second a duplicate
            ("1", "Subscribed", 1328044149): ({}, 5),
        }
        aliases = _rows(
            con,
            "SELECT alias_key, contact_key, epoch(recorded_at)::BIGINT, line_number, "
            "refused_reason FROM aliases ORDER BY line_number",
        )
        assert aliases == [
            ("chuck@mail.com", "new_customer@mail.com", 1393344614, 4, None),
            ("bob", "1", 1328044149, 8, None),
        ]
        contacts = _rows(con, "SELECT contact_key, attributes FROM contacts")
        assert [(k, json.loads(a)) for k, a in contacts] == [
            ("1", {"Email Address": "bob@bob.com"})
        ]
        people = {
            tuple(ids): json.loads(attrs)
            for ids, attrs in _rows(con, "SELECT identities, attributes FROM people")
        }
        assert people == {
            ("1", "bob"): {"Email Address": "bob@bob.com"},
            ("chuck@mail.com", "new_customer@mail.com"): {},
            ("person@mail.com",): {},
        }
        ledger = dict(
            (uri.rsplit("/", 1)[1], rest)
            for uri, *rest in _rows(
                con,
                "SELECT source_uri, status, rows_read, rows_loaded, rows_duplicate, "
                "rows_rejected, error FROM ingested_files",
            )
        )
        assert ledger["vendor.json"] == ["ingested", 8, 7, 1, 0, None]
        status, read, loaded, dup, rejected, error = ledger["vendor_invalid.json"]
        assert (status, read, loaded, dup, rejected) == ("failed", 7, 0, 0, 7)
        assert "each line must be one JSON object" in error
        quarantined = _rows(
            con,
            "SELECT line_number, reason FROM rejected_rows "
            "WHERE source_uri LIKE '%vendor_invalid.json' ORDER BY line_number",
        )
        assert [n for n, _ in quarantined] == list(range(1, 8))
        assert all("each line must be one JSON object" in r for _, r in quarantined)


def test_the_same_event_from_a_track_file_and_a_kissmetrics_file_is_one_row(
    tmp_path: Path,
) -> None:
    track = Landed(
        "track/t.jsonl",
        ndjson(
            [
                {
                    "contact_key": "bob@x.io",
                    "event_text": "paid",
                    "event_timestamp": 1700000000,
                    "via": "track",
                }
            ]
        ),
        landed_at=T0 + timedelta(minutes=5),
    )
    km = Landed(
        "kissmetrics/k.jsonl",
        ndjson([{"_p": "bob@x.io", "_n": "paid", "_t": 1700000000, "via": "kissmetrics"}]),
        landed_at=T0,
    )
    for order, name in (((track, km), "track first"), ((km, track), "kissmetrics first")):
        h = Harness(tmp_path / name.replace(" ", "-"))
        h.ingest(*order)
        rows = h.query("SELECT contact_key, properties, source_uri FROM events")
        # latest landed wins: the track file, whatever the merge order
        assert [(r["contact_key"], r["properties"]["via"]) for r in rows] == [
            ("bob@x.io", "track")
        ], name
        for r in h.query("SELECT * FROM ingested_files"):
            assert r["rows_read"] == r["rows_loaded"] + r["rows_duplicate"] + r["rows_rejected"]


def test_person_properties_newest_t_wins_whatever_the_landing_order(tmp_path: Path) -> None:
    newer_landed_first = Landed(
        "kissmetrics/a.jsonl",
        ndjson([{"_p": "ann", "_t": 1700000500, "plan": "pro"}]),
        landed_at=T0,
    )
    older_landed_later = Landed(
        "kissmetrics/b.jsonl",
        ndjson(
            [
                {"_p": "ann", "_t": 1700000100, "plan": "free", "city": "Oslo"},
                # same _t, later line of the same file: newer
                {"_p": "ann", "_t": 1700000100, "city": "Bergen"},
            ]
        ),
        landed_at=T0 + timedelta(hours=1),
    )
    for name, run in (
        ("in landing order", lambda h: h.ingest(newer_landed_first, older_landed_later)),
        ("reversed", lambda h: h.ingest(older_landed_later, newer_landed_first)),
        ("one batch", lambda h: h.ingest_batch(newer_landed_first, older_landed_later)),
    ):
        h = Harness(tmp_path / name.replace(" ", "-"))
        run(h)
        [contact] = h.query("SELECT contact_key, attributes FROM contacts")
        assert contact["attributes"] == {"plan": "pro", "city": "Bergen"}, name
        [person] = h.query("SELECT attributes FROM people")
        assert person["attributes"] == {"city": "Bergen", "plan": "pro"}, name


def test_an_alias_key_names_the_person_of_its_newest_t(tmp_path: Path) -> None:
    newer = Landed(
        "kissmetrics/a.jsonl", ndjson([{"_p": "ann", "_p2": "x", "_t": 1700000900}]), landed_at=T0
    )
    older = Landed(
        "kissmetrics/b.jsonl",
        ndjson([{"_p": "bob", "_p2": "x", "_t": 1700000100}]),
        landed_at=T0 + timedelta(hours=1),
    )
    for name, files in (("newer first", (newer, older)), ("older first", (older, newer))):
        h = Harness(tmp_path / name.replace(" ", "-"))
        h.ingest(*files)
        assert h.query("SELECT alias_key, contact_key FROM aliases") == [
            {"alias_key": "x", "contact_key": "ann"}
        ], name
        person = {r["contact_key"]: r["person_id"] for r in h.query("SELECT * FROM identities")}
        assert person["x"] == person["ann"] != person["bob"], name
        assert person["ann"] == person_id(h.tenant, "ann")  # the smallest identity of the two


def test_a_line_with_n_and_p2_is_an_event_and_an_alias_and_counts_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    [report] = h.ingest(
        Landed(
            "kissmetrics/a.jsonl",
            ndjson(
                [
                    {"_p": "ann", "_p2": "a@x.io", "_n": "signed up", "_t": 1700000000},
                    {"_p": "ann", "_p2": "a@x.io", "_n": "signed up", "_t": 1700000000},
                ]
            ),
        )
    )
    assert len(h.query("SELECT * FROM events")) == 1
    assert len(h.query("SELECT * FROM aliases")) == 1
    [row] = h.query(
        "SELECT rows_read, rows_loaded, rows_duplicate, rows_rejected FROM ingested_files"
    )
    # line 1 is the event (first line) ... line 2 the alias (last line): both loaded once each
    assert row == {"rows_read": 2, "rows_loaded": 2, "rows_duplicate": 0, "rows_rejected": 0}
    [resolved] = h.query("SELECT person_id FROM events_resolved")
    assert resolved["person_id"] == person_id(h.tenant, "a@x.io")


def test_a_track_event_and_a_kissmetrics_alias_resolve_to_one_person(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.ingest(
        Landed(
            "track/t.jsonl",
            ndjson(
                [{"contact_key": "bob@x.io", "event_text": "paid", "event_timestamp": 1700000000}]
            ),
        ),
        Landed(
            "identify/i.jsonl", ndjson([{"contact_key": "42", "email": "bob@x.io", "tier": "gold"}])
        ),
        Landed("kissmetrics/k.jsonl", ndjson([{"_p": "42", "_p2": "bob@x.io", "_t": 1700000001}])),
    )
    [event] = h.query("SELECT contact_key, person_id FROM events_resolved")
    assert event["person_id"] == person_id(h.tenant, "42")
    [person] = h.query("SELECT identities, attributes FROM people")
    assert person["identities"] == ["42", "bob@x.io"]
    assert person["attributes"] == {"email": "bob@x.io", "tier": "gold"}


_LONG = "x" * 256


def test_every_rejection_reason_with_its_line_number(tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [
        {"_p": "  ann  ", "_t": "1700000000", "_n": "ok"},  # 1: valid, trimmed, numeric string
        {"_t": 1700000000, "_n": "x"},  # 2
        {"_p": "ann", "_n": "x"},  # 3
        {"_p": "ann", "_t": 1700000000000, "_n": "x"},  # 4
        {"_p": "ann", "_t": -5, "_n": "x"},  # 5
        {"_p": "ann", "_t": 20000000000, "_n": "x"},  # 6
        {"_p": "ann", "_t": "yesterday", "_n": "x"},  # 7
        {"_p": "ann", "_t": 1700000000},  # 8
        {"_p": _LONG, "_t": 1700000000, "_n": "x"},  # 9
        {"_p": "ann", "_p2": _LONG, "_t": 1700000000},  # 10
        {"_p": None, "_t": 1700000000, "_n": "x"},  # 11
    ]
    expected = {
        2: "missing required field '_p'",
        3: "missing required field '_t'",
        4: "looks like milliseconds",
        5: "out of range",
        6: "out of range",
        7: "field '_t' must be Unix seconds",
        8: "needs `_n`, `_p2` or a property",
        9: "field '_p' is longer than 255 characters (256 characters)",
        10: "field '_p2' is longer than 255 characters",
        11: "missing required field '_p'",
    }
    first_placeholder = len(lines) + 1
    for i, value in enumerate(DEFAULT_PLACEHOLDER_IDENTITIES):
        sent = value.upper() if i % 2 else f" {value} "  # compared trimmed, any case
        lines.append({"_p": sent, "_t": 1700000000, "_n": "x"})
        expected[first_placeholder + 2 * i] = "field '_p' is a placeholder identity"
        lines.append({"_p": "ann", "_p2": sent, "_t": 1700000000})
        expected[first_placeholder + 2 * i + 1] = "field '_p2' is a placeholder identity"
    h = Harness(tmp_path)
    [report] = h.ingest(Landed("kissmetrics/bad.jsonl", ndjson(lines)))
    got = dict(
        (r["line_number"], r["reason"])
        for r in h.query("SELECT line_number, reason FROM rejected_rows")
    )
    assert set(got) == set(expected)
    for line, text in expected.items():
        assert text in got[line], (line, got[line])
    assert "placeholder identity" in got[first_placeholder]
    [row] = h.query("SELECT * FROM ingested_files")
    assert row["rows_read"] == len(lines)
    assert row["rows_rejected"] == len(expected)
    assert row["rows_loaded"] == 1
    assert row["rows_read"] == row["rows_loaded"] + row["rows_duplicate"] + row["rows_rejected"]
    assert [r["contact_key"] for r in h.query("SELECT contact_key FROM events")] == ["ann"]


@pytest.mark.parametrize(
    "body, physical_lines",
    [
        (json.dumps([{"_p": "a", "_t": 1700000000, "_n": "x"}] * 3, indent=1), 17),
        (json.dumps({"_p": "a", "_t": 1700000000, "_n": "x"}, indent=2), 5),
        (VENDOR_INVALID, 7),
    ],
    ids=["array", "pretty-printed object", "vendor's invalid example"],
)
def test_a_file_that_is_one_json_document_is_rejected_whole(
    tmp_path: Path, body: str, physical_lines: int
) -> None:
    assert body.rstrip("\n").count("\n") + 1 == physical_lines
    h = Harness(tmp_path)
    [report] = h.ingest(Landed("kissmetrics/doc.json", body.encode()))
    assert report.status == "failed"
    assert "each line must be one JSON object" in (report.error or "")
    rejected = h.query("SELECT line_number, reason FROM rejected_rows ORDER BY line_number")
    assert [r["line_number"] for r in rejected] == list(range(1, physical_lines + 1))
    assert all("each line must be one JSON object" in r["reason"] for r in rejected)
    [row] = h.query("SELECT * FROM ingested_files")
    assert (row["rows_read"], row["rows_rejected"]) == (physical_lines, physical_lines)
    assert h.query("SELECT * FROM events") == []


def test_the_placeholder_blocklist_is_configured_in_ingest_yaml(tmp_path: Path) -> None:
    config = parse_config({"identity": {"placeholders": ["Test@Example.com", "unknown"]}})
    feed = config.feed("kissmetrics")
    h = Harness(tmp_path)
    lines = [
        {"_p": "test@example.com", "_t": 1700000000, "_n": "x"},
        {"_p": "null", "_t": 1700000000, "_n": "x"},  # not a placeholder any more
        {"_p": "ann", "_p2": " UNKNOWN", "_t": 1700000000},
    ]
    report = h.parse(Landed("kissmetrics/a.jsonl", ndjson(lines)), feed)
    reasons = dict(
        zip(
            report.rejects["line_number"].to_pylist(),
            report.rejects["reason"].to_pylist(),
            strict=True,
        )
    )
    assert set(reasons) == {1, 3}
    assert "placeholder identity" in reasons[1] and "placeholder identity" in reasons[3]
    assert KISSMETRICS.placeholder_identities == DEFAULT_PLACEHOLDER_IDENTITIES  # unchanged
    with pytest.raises(ValueError, match="identity.max_cluster_size"):
        parse_config({"identity": {"max_cluster_size": 1}})


def test_an_alias_past_the_cluster_cap_is_refused_recorded_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    h = Harness(tmp_path, max_cluster_size=3)
    f = Landed(
        "kissmetrics/a.jsonl",
        ndjson(
            [
                {"_p": "ann", "_p2": "a1", "_t": 1700000001},
                {"_p": "ann", "_p2": "a2", "_t": 1700000002},
                {"_p": "ann", "_p2": "a3", "_t": 1700000003},  # the 4th identity: refused
                {"_p": "bob", "_p2": "b1", "_t": 1700000004},
            ]
        ),
    )
    h.ingest(f)
    outcome_rows = h.query("SELECT alias_key, refused_reason FROM aliases ORDER BY alias_key")
    refused = {r["alias_key"]: r["refused_reason"] for r in outcome_rows}
    assert refused["a1"] is None and refused["a2"] is None and refused["b1"] is None
    assert "cluster-size cap of 3" in refused["a3"]
    sizes = {
        r["contact_key"]: r["size"]
        for r in h.query(
            "SELECT contact_key, count(*) OVER (PARTITION BY person_id) AS size FROM identities"
        )
    }
    assert sizes == {"ann": 3, "a1": 3, "a2": 3, "a3": 1, "bob": 2, "b1": 2}
    # the line is still loaded (the alias is kept), and the file's report says why it is unused
    [row] = h.query("SELECT rows_loaded, rows_duplicate FROM ingested_files")
    assert row == {"rows_loaded": 4, "rows_duplicate": 0}
    with warehouse.connect(h.wh_path, read_only=True) as con:
        view = file_report(con, f.source_uri)
    assert view is not None
    assert [(r["line_number"], r["alias_key"]) for r in view.refused_aliases] == [(3, "a3")]
    monkeypatch.setenv("INGEST_WAREHOUSE_PATH", str(h.wh_path))
    assert cli.main(["report", f.source_uri]) == 0
    out = capsys.readouterr().out
    assert "line 3: a3 -> ann" in out and "cluster-size cap of 3" in out


def test_rebuild_from_scratch_equals_the_incremental_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, max_cluster_size=4)
    files = [
        Landed(
            f"kissmetrics/f{i}.jsonl",
            ndjson(
                [
                    {
                        "_p": f"u{(i * 7 + j) % 13}",
                        "_p2": f"u{(i * 3 + j * 5) % 13}",
                        "_t": 1700000000 + j,
                    }
                    for j in range(6)
                ]
                + [{"_p": f"u{i}", "_n": "seen", "_t": 1700000000 + i}]
            ),
            landed_at=T0 + timedelta(minutes=(i * 5) % 7),
        )
        for i in range(7)
    ]
    h.ingest(*files)
    before = h.query("SELECT * EXCLUDE (updated_at) FROM identities ORDER BY ALL")
    aliases_before = h.query("SELECT alias_key, refused_reason FROM aliases ORDER BY ALL")
    assert any(r["refused_reason"] for r in aliases_before)  # the cap was reached
    assert len({r["person_id"] for r in before}) > 1
    # scramble the graph, then rebuild it with the command
    with warehouse.connect(h.wh_path) as con:
        con.execute("UPDATE identities SET person_id = 'wrong', graph_id = 'wrong'")
        con.execute("UPDATE aliases SET refused_reason = NULL")
    monkeypatch.setenv("INGEST_WAREHOUSE_PATH", str(h.wh_path))
    monkeypatch.setenv("INGEST_CONFIG", str(tmp_path / "ingest.yaml"))
    (tmp_path / "ingest.yaml").write_text("identity:\n  max_cluster_size: 4\n")
    assert cli.main(["identities", "rebuild"]) == 0
    assert h.query("SELECT * EXCLUDE (updated_at) FROM identities ORDER BY ALL") == before
    assert h.query("SELECT alias_key, refused_reason FROM aliases ORDER BY ALL") == aliases_before


def test_a_warehouse_of_schema_v2_gets_record_times_and_its_identities(tmp_path: Path) -> None:
    """v3 added attribute_values.recorded_at, the alias columns and the identity graph: a v2
    warehouse gets them on first connection, its stored values ranked by their landing time and
    every contact key it holds registered as a person."""
    import duckdb

    h = Harness(tmp_path)
    h.ingest(
        Landed(
            "identify/i.jsonl", ndjson([{"contact_key": "ann", "email": "a@x.io", "plan": "pro"}])
        ),
        Landed(
            "track/t.jsonl",
            ndjson([{"contact_key": "bob", "event_text": "paid", "event_timestamp": 1700000000}]),
        ),
    )
    with duckdb.connect(str(h.wh_path)) as con:  # as version 2 left it
        con.execute("DROP VIEW people; DROP VIEW events_resolved; DROP TABLE identities")
        con.execute("ALTER TABLE attribute_values DROP COLUMN recorded_at")
        for column in ("recorded_at", "refused_reason", "etag", "key_hash_hi", "key_hash_lo"):
            con.execute(f"ALTER TABLE aliases DROP COLUMN {column}")
        con.execute("UPDATE warehouse_schema SET version = 2")
    people = {tuple(r["identities"]) for r in h.query("SELECT identities FROM people")}
    assert people == {("ann",), ("bob",)}
    [value] = h.query(
        "SELECT recorded_at = landed_at AS same FROM attribute_values WHERE attribute = 'plan'"
    )
    assert value["same"]
    # a Kissmetrics property with an older _t does not overwrite the migrated (landed) value
    h.ingest(
        Landed("kissmetrics/k.jsonl", ndjson([{"_p": "ann", "_t": 1700000000, "plan": "free"}]))
    )
    [person] = h.query("SELECT attributes FROM people WHERE list_contains(identities, 'ann')")
    assert person["attributes"]["plan"] == "pro"


def test_the_readme_identity_example_loads() -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Kissmetrics event logs and people") :]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    config = parse_config(yaml.safe_load(example.group(1)))
    assert config.identity.max_cluster_size == 500
    assert "test@example.com" in config.feed("kissmetrics").placeholder_identities
