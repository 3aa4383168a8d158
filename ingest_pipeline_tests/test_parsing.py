"""Parsing and row rules of the flat-file feeds, run through bronze + ledger + merge on a real
DuckDB warehouse file. Every expectation is computed here from the Python rows the files were
built from (or with Python's csv/json modules), never copied from the pipeline's output."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ingest_pipeline.feeds import FEEDS
from ingest_pipeline_tests.helpers import (
    TENANT,
    Harness,
    Landed,
    as_read,
    check_counts,
    csv_body,
    drop_nulls,
    encode,
    ndjson,
    unix,
)

FORMATS = (".json", ".jsonl", ".ndjson", ".csv")
COMPRESSIONS = ("", ".gz", ".gzip")

TRACK_ROWS: list[dict[str, Any]] = [
    {"event_text": "signed up", "event_timestamp": 1700000000, "contact_key": "c1",
     "plan": "pro", "seats": 3, "trial": True},
    {"event_text": "viewed page", "event_timestamp": "1700000100", "contact_key": "c2",
     "url": "/pricing?a=1,2"},
    {"event_text": "viewed page", "event_timestamp": 1700000200.5, "contact_key": "c2",
     "url": "/docs", "ref": {"utm": ["a", "b"], "n": None}},
    {"event_text": "clicked", "event_timestamp": "1700000300.25", "contact_key": "c3",
     "label": 'Say "hi", now'},
]  # fmt: skip
IDENTIFY_ROWS: list[dict[str, Any]] = [
    {"contact_key": "c1", "email": "ann@example.com", "name": "Ann", "age": 31, "vip": True},
    {"contact_key": "c2", "email": "bob@example.org", "name": "Bob, Jr.", "city": "Paris"},
    {"contact_key": "c3", "email": "cy@example.net", "score": 0.5, "tags": ["x", "y"]},
]
GROUP_ROWS: list[dict[str, Any]] = [
    {"contact_key": "c1", "account_key": "a1", "domain": "acme.com", "industry": "software"},
    {"contact_key": "c2", "account_key": "a1", "employees": 250},
    {"contact_key": "c3", "account_key": "a2", "domain": "globex.com", "tier": "gold"},
]
CRM_ROWS: list[dict[str, Any]] = [
    {"email": "lead1@example.com", "account": "Acme", "created_at": "2024-01-05T10:00:00Z",
     "is_worked": "true", "is_converted": "false", "amount": 1200.5, "is_unqualified": False,
     "worked_date": "2024-01-06T09:30:00+00:00", "source": "webinar"},
    {"email": "lead2@example.com", "account": "Globex", "created_at": 1704448800,
     "is_worked": True, "is_converted": True, "amount": "300", "converted_date": "1704535200",
     "deal_amount": 5000, "owner": "kim"},
    {"email": "lead3@example.com", "account": "Initech", "created_at": "1704448800.5",
     "is_worked": False, "is_converted": "true", "amount": 0, "is_unqualified": "true"},
]  # fmt: skip
ROWS = {"track": TRACK_ROWS, "identify": IDENTIFY_ROWS, "group": GROUP_ROWS, "crm": CRM_ROWS}
BOOLEANS = ("is_worked", "is_converted", "is_unqualified")
NUMBERS = ("amount", "deal_amount")
TIMESTAMPS = ("created_at", "worked_date", "converted_date")


def body_for(name: str, rows: list[dict[str, Any]]) -> bytes:
    return encode(name, csv_body(rows) if ".csv" in name else ndjson(rows))


def to_time(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return unix(value)
    except ValueError:
        return datetime.fromisoformat(value)


def to_bool(value: Any) -> bool | None:
    return value if value is None or isinstance(value, bool) else value.lower() == "true"


def extras(row: dict[str, Any], feed: str) -> dict[str, Any]:
    declared = {f.name for f in FEEDS[feed].fields}
    return {k: v for k, v in row.items() if k not in declared}


@pytest.mark.parametrize("file_format", FORMATS)
def test_every_format_loads_typed_values_and_extras(tmp_path: Path, file_format: str) -> None:
    """Every (feed, format), (feed, compression) and (format, compression) pair occurs."""
    h = Harness(tmp_path)  # each feed has its own tables: one warehouse serves all four
    for i, feed in enumerate(ROWS):
        compression = COMPRESSIONS[(i + FORMATS.index(file_format)) % len(COMPRESSIONS)]
        check_feed_file_loads(h, feed, file_format + compression)


def check_feed_file_loads(h: Harness, feed: str, ext: str) -> None:
    is_csv = ".csv" in ext
    f = Landed(f"{feed}/2024/03/file{ext}", body_for(ext, ROWS[feed]))
    (report,) = h.ingest(f)
    assert report.status == "parsed", report.error
    rows = as_read(ROWS[feed], is_csv)
    first = 2 if is_csv else 1
    counts = check_counts(h, f)
    assert (counts["rows_read"], counts["rows_rejected"]) == (len(rows), 0)

    if feed == "track":
        got = h.query("SELECT * FROM events")
        assert {(r["contact_key"], r["event_text"], r["event_timestamp"]) for r in got} == {
            (r["contact_key"], r["event_text"], unix(r["event_timestamp"])) for r in rows
        }
        by_line = {r["line_number"]: r for r in got}
        assert sorted(by_line) == [first + i for i in range(len(rows))]
        for i, row in enumerate(rows):
            stored = by_line[first + i]
            assert stored["event_timestamp"] == unix(row["event_timestamp"])
            assert stored["contact_key"] == row["contact_key"]
            assert drop_nulls(stored["properties"]) == drop_nulls(extras(row, feed))
            assert stored["source_uri"] == f.source_uri
            assert stored["tenant_id"] == TENANT
    elif feed == "identify":
        got = {r["contact_key"]: r for r in h.query("SELECT * FROM contacts")}
        assert set(got) == {r["contact_key"] for r in rows}
        for row in rows:
            stored = got[row["contact_key"]]
            assert stored["email"] == row["email"]
            assert stored["attributes"] == drop_nulls(extras(row, feed))
            assert stored["tenant_id"] == TENANT
    elif feed == "group":
        members = h.query("SELECT contact_key, account_key FROM contact_accounts")
        assert {(r["contact_key"], r["account_key"]) for r in members} == {
            (r["contact_key"], r["account_key"]) for r in rows
        }
        expected: dict[str, dict[str, Any]] = {}
        for row in rows:  # later lines are newer; attributes only accumulate here
            expected.setdefault(row["account_key"], {}).update(drop_nulls(extras(row, feed)))
        got = {r["account_key"]: r for r in h.query("SELECT * FROM accounts")}
        assert {k: v["attributes"] for k, v in got.items()} == expected
        assert {k: v["domain"] for k, v in got.items()} == {
            k: v.get("domain") for k, v in expected.items()
        }
    else:
        got = {r["email"]: r for r in h.query("SELECT * FROM crm_leads")}
        assert set(got) == {r["email"] for r in rows}
        for row in rows:
            stored = got[row["email"]]
            assert stored["account"] == row["account"]
            for name in TIMESTAMPS:
                assert stored[name] == to_time(row.get(name)), name
            for name in BOOLEANS:
                assert stored[name] is to_bool(row.get(name)), name
            for name in NUMBERS:
                value = row.get(name)
                assert stored[name] == (None if value is None else float(value)), name
            assert drop_nulls(stored["attributes"]) == drop_nulls(extras(row, feed))


def test_ndjson_with_bom_crlf_and_no_final_newline(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in TRACK_ROWS]
    body = ("\ufeff" + "\r\n".join(lines)).encode()  # no line end after the last record
    f = Landed("track/bom.jsonl", body)
    h = Harness(tmp_path)
    h.ingest(f)
    counts = check_counts(h, f)
    assert (counts["rows_read"], counts["rows_loaded"]) == (len(lines), len(lines))
    got = {r["line_number"]: r for r in h.query("SELECT * FROM events")}
    for i, row in enumerate(TRACK_ROWS, start=1):
        assert got[i]["contact_key"] == row["contact_key"]
        assert drop_nulls(got[i]["properties"]) == drop_nulls(extras(row, "track"))


def python_csv(text: str, **dialect: Any) -> list[dict[str, str | None]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), **dialect)
    return [{k: (v if v != "" else None) for k, v in r.items()} for r in reader]


def test_csv_quotes_line_breaks_bom_and_crlf(tmp_path: Path) -> None:
    text = (
        "\ufeffcontact_key,email,note,city\r\n"
        'c1,ann@example.com,"She said ""hi"", then left","New\r\nYork"\r\n'
        'c2,bob@example.com,plain,"Paris"\r\n'
        'c3,cy@example.com,"multi\nline\n""note""",Oslo\r\n'
        'c4,dan@example.com,"",",;"\r\n'
    )
    f = Landed("identify/quoting.csv", text.encode())
    h = Harness(tmp_path)
    h.ingest(f)
    expected = python_csv(text.lstrip("\ufeff"))
    counts = check_counts(h, f)
    assert (counts["rows_read"], counts["rows_loaded"]) == (len(expected), len(expected))
    got = {r["contact_key"]: r for r in h.query("SELECT * FROM contacts")}
    assert {k: (v["email"], v["attributes"]) for k, v in got.items()} == {
        r["contact_key"]: (r["email"], drop_nulls({"note": r["note"], "city": r["city"]}))
        for r in expected
    }


def test_csv_backslash_escaped_quotes(tmp_path: Path) -> None:
    text = (
        "contact_key,email,note\n"
        'c1,ann@example.com,"She said \\"hi\\", then left"\n'
        'c2,bob@example.com,"\\"quoted\\""\n'
        "c3,cy@example.com,plain\n"
    )
    f = Landed("identify/backslash.csv.gz", encode(".gz", text.encode()))
    h = Harness(tmp_path)
    h.ingest(f)
    expected = python_csv(text, escapechar="\\", doublequote=False)
    assert expected[0]["note"] == 'She said "hi", then left'  # the expectation itself
    check_counts(h, f)
    got = {r["contact_key"]: r["attributes"] for r in h.query("SELECT * FROM contacts")}
    assert got == {r["contact_key"]: {"note": r["note"]} for r in expected}


@pytest.mark.parametrize(
    "key",
    ["identify/people.txt", "track/events.parquet", "group/x.csv.bz2", "crm/leads",
     "track/e.json.zip", "identify/people.gz"],
)  # fmt: skip
def test_unsupported_extension_fails_with_reason(tmp_path: Path, key: str) -> None:
    f = Landed(key, ndjson(TRACK_ROWS))
    h = Harness(tmp_path)
    (report,) = h.ingest(f)
    assert report.status == "failed"
    assert report.error is not None
    for ext in (".json", ".jsonl", ".ndjson", ".csv", ".gz", ".gzip"):
        assert ext in report.error
    row = h.ledger_row(f)
    assert row["status"] == "failed"
    assert row["error"] == report.error
    assert h.query("SELECT count(*) AS n FROM events")[0]["n"] == 0


# --- bad rows: quarantined, counted, the rest loads ---------------------------------------------


def good_event(i: int) -> dict[str, Any]:
    return {"event_text": "opened", "event_timestamp": 1700000000 + i, "contact_key": f"c{i}"}


def test_ndjson_bad_lines_are_quarantined(tmp_path: Path) -> None:
    # (line text, words the reason must contain); None = a good line
    lines: list[tuple[str, tuple[str, ...] | None]] = [
        (json.dumps(good_event(1)), None),
        ('{"event_text": "x", "event_timestamp": 17000', ("invalid json",)),
        ("[1, 2, 3]", ("not an object", "array")),
        ("", ("empty line",)),
        (json.dumps({"event_text": "x", "event_timestamp": 1700000000}), ("contact_key", "missing")),
        (json.dumps({**good_event(2), "contact_key": ""}), ("contact_key", "missing")),
        (json.dumps({**good_event(3), "event_timestamp": "soon"}), ("event_timestamp", "unix seconds", "soon")),
        (json.dumps({**good_event(4), "event_timestamp": True}), ("event_timestamp", "unix seconds")),
        (json.dumps({**good_event(5), "event_timestamp": 1700000000123}), ("event_timestamp", "milliseconds")),
        (json.dumps({**good_event(6), "event_text": None}), ("event_text", "missing")),
        ("   ", ("empty line",)),
        ('"just a string"', ("not an object",)),
        (json.dumps(good_event(7)), None),
        (json.dumps({**good_event(1), "extra": "dup"}), None),  # duplicate of line 1
    ]  # fmt: skip
    f = Landed("track/bad.ndjson", "\n".join(text for text, _ in lines).encode() + b"\n")
    h = Harness(tmp_path)
    h.ingest(f)

    rejects = h.rejected(f)
    expected_bad = {i: words for i, (_, words) in enumerate(lines, start=1) if words}
    assert [r["line_number"] for r in rejects] == sorted(expected_bad)
    for r in rejects:
        assert r["raw"] == lines[r["line_number"] - 1][0]
        for word in expected_bad[r["line_number"]]:
            assert word in r["reason"].lower(), (r, word)

    good = [json.loads(t) for t, w in lines if w is None]
    unique = {(g["contact_key"], g["event_text"], g["event_timestamp"]) for g in good}
    counts = check_counts(h, f)
    assert counts["rows_read"] == len(lines)
    assert counts["rows_rejected"] == len(expected_bad)
    assert counts["rows_loaded"] == len(unique)
    assert counts["rows_duplicate"] == len(good) - len(unique)
    got = h.query("SELECT contact_key, line_number, properties FROM events ORDER BY line_number")
    assert [(r["contact_key"], r["line_number"]) for r in got] == [("c1", 1), ("c7", 13)]
    assert got[0]["properties"] == {}  # the first occurrence, not the duplicate


def test_identify_and_crm_bad_rows(tmp_path: Path) -> None:
    identify = [
        ({"contact_key": "c1", "email": "ann@example.com"}, None),
        ({"contact_key": "c2", "email": "not-an-email"}, ("email", "not an email", "not-an-email")),
        ({"contact_key": "c3", "email": "x@nodot"}, ("email",)),
        ({"contact_key": "c4"}, ("email", "missing")),
        ({"contact_key": "c5", "email": "  "}, ("email", "missing")),
        ({"contact_key": 7, "email": "num@example.com"}, None),  # a number is a fine key
        ({"email": "nokey@example.com"}, ("contact_key", "missing")),
    ]
    crm_ok = CRM_ROWS[0]
    crm = [
        (crm_ok, None),
        ({**crm_ok, "email": "bad email@example.com"}, ("email",)),
        ({**crm_ok, "email": "b@example.com", "is_worked": "maybe"}, ("is_worked", "true or false")),
        ({**crm_ok, "email": "c@example.com", "amount": "lots"}, ("amount", "number", "lots")),
        ({**crm_ok, "email": "d@example.com", "created_at": "yesterday"}, ("created_at", "timestamp")),
        ({**crm_ok, "email": "e@example.com", "account": None}, ("account", "missing")),
        ({**crm_ok, "email": "f@example.com", "deal_amount": "n/a"}, ("deal_amount", "number")),
        ({**crm_ok, "email": "g@example.com", "is_unqualified": None}, None),  # optional
    ]  # fmt: skip
    h = Harness(tmp_path)
    for key, cases in (("identify/bad.jsonl", identify), ("crm/bad.json", crm)):
        f = Landed(key, ndjson(row for row, _ in cases))
        h.ingest(f)
        expected_bad = {i: words for i, (_, words) in enumerate(cases, start=1) if words}
        rejects = h.rejected(f)
        assert [r["line_number"] for r in rejects] == sorted(expected_bad)
        for r in rejects:
            assert json.loads(r["raw"]) == cases[r["line_number"] - 1][0]
            for word in expected_bad[r["line_number"]]:
                assert word in r["reason"].lower(), (r, word)
        counts = check_counts(h, f)
        assert counts["rows_read"] == len(cases)
        assert counts["rows_rejected"] == len(expected_bad)
        assert counts["rows_loaded"] == len(cases) - len(expected_bad)

    contacts = {r["contact_key"] for r in h.query("SELECT contact_key FROM contacts")}
    assert contacts == {str(r["contact_key"]) for r, w in identify if w is None}
    leads = {r["email"] for r in h.query("SELECT email FROM crm_leads")}
    assert leads == {r["email"] for r, w in crm if w is None}


def test_csv_bad_records_are_quarantined(tmp_path: Path) -> None:
    lines: list[tuple[str, tuple[str, ...] | None]] = [
        ("contact_key,email,name", None),
        ("c1,ann@example.com,Ann", None),
        ("c2,bob@example.com,Bob,extra", ("more fields", "4 instead of 3")),
        ("c3,cy@example.com", ("fewer fields", "2 instead of 3")),
        ("c4,not-an-email,Dan", ("email", "not an email")),
        (",eve@example.com,Eve", ("contact_key", "missing")),
        ('c6,fay@example.com,"Fay, ""F"""', None),
        ("c7,gil@example.com,Gil,x,y,z", ("more fields",)),
        ("c8,hal@example.com,Hal", None),
    ]
    for compression in ("", ".gz"):
        h = Harness(tmp_path / (compression or "plain"))
        text = "\n".join(t for t, _ in lines) + "\n"
        f = Landed(f"identify/bad.csv{compression}", encode(compression, text.encode()))
        h.ingest(f)
        expected_bad = {i: w for i, (_, w) in enumerate(lines, start=1) if w}
        rejects = h.rejected(f)
        assert [r["line_number"] for r in rejects] == sorted(expected_bad)
        for r in rejects:
            assert r["raw"] == lines[r["line_number"] - 1][0]
            for word in expected_bad[r["line_number"]]:
                assert word in r["reason"].lower(), (r, word)
        good = python_csv("\n".join(t for t, w in lines if w is None) + "\n")
        counts = check_counts(h, f)
        assert counts["rows_read"] == len(lines) - 1  # the header is not a record
        assert counts["rows_rejected"] == len(expected_bad)
        assert counts["rows_loaded"] == len(good)
        got = {r["contact_key"]: r for r in h.query("SELECT * FROM contacts")}
        assert {k: (v["email"], v["attributes"]) for k, v in got.items()} == {
            r["contact_key"]: (r["email"], {"name": r["name"]}) for r in good
        }


def test_header_only_and_empty_files_fail_with_reason(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for key, body in (("identify/h.csv", b"contact_key,email\n"), ("track/e.jsonl", b"")):
        (report,) = h.ingest(Landed(key, body))
        assert report.status == "failed"
        assert report.error


# --- line numbers on large files -----------------------------------------------------------------


def test_line_numbers_of_a_large_ndjson_file(tmp_path: Path) -> None:
    n = 200_000
    bad = {2: "{not json", 777: "[]", 65_536: "", 100_001: '{"event_text": "x"}',
           150_000: "{", 199_999: '{"contact_key": "k", "event_text": "e", "event_timestamp": "x"}'}  # fmt: skip
    pad = "x" * 60
    lines = [
        bad.get(
            i,
            f'{{"event_text":"e","event_timestamp":{1600000000 + i},"contact_key":"c{i}","n":{i},"pad":"{pad}"}}',
        )
        for i in range(1, n + 1)
    ]
    f = Landed("track/big.ndjson", ("\n".join(lines) + "\n").encode())
    h = Harness(tmp_path)
    started = time.monotonic()
    h.ingest(f)
    rejects = h.rejected(f)
    assert [r["line_number"] for r in rejects] == sorted(bad)
    assert [r["raw"] for r in rejects] == [bad[i] for i in sorted(bad)]
    counts = check_counts(h, f)
    assert (counts["rows_read"], counts["rows_loaded"]) == (n, n - len(bad))
    mismatched = h.query(
        "SELECT count(*) AS n FROM events WHERE line_number <> (properties->>'n')::BIGINT "
        "OR contact_key <> 'c' || line_number "
        "OR epoch(event_timestamp) <> 1600000000 + line_number"
    )
    assert mismatched[0]["n"] == 0
    assert time.monotonic() - started < 30


def test_line_numbers_of_a_large_csv_file_with_multiline_records(tmp_path: Path) -> None:
    n = 30_000  # records after the header
    bad = {5: "too,many,fields,here,x", 9_999: "few", 20_001: "a,b,c,d,e,f", 29_999: "x"}
    records = ["contact_key,email,n,note"]
    for i in range(2, n + 2):
        if i in bad:
            records.append(bad[i])
        elif i % 1000 == 0:
            records.append(f'c{i},u{i}@example.com,{i},"two\nlines, ""quoted"""')
        else:
            records.append(f"c{i},u{i}@example.com,{i},plain")
    f = Landed("identify/big.csv", ("\n".join(records) + "\n").encode())
    h = Harness(tmp_path)
    h.ingest(f)
    rejects = h.rejected(f)
    assert [r["line_number"] for r in rejects] == sorted(bad)
    counts = check_counts(h, f)
    assert (counts["rows_read"], counts["rows_loaded"]) == (n, n - len(bad))
    # record number (header = 1) is what `n` holds; the bronze rows carry it as line_number
    mismatched = h.query(
        "SELECT count(*) AS n FROM attribute_values WHERE attribute = 'n' "
        "AND (value->>'$')::BIGINT <> line_number"
    )
    assert mismatched[0]["n"] == 0
    notes = h.query(
        "SELECT count(*) AS n FROM contacts WHERE attributes->>'note' = 'two\nlines, \"quoted\"'"
    )
    assert notes[0]["n"] == len([i for i in range(2, n + 2) if i % 1000 == 0 and i not in bad])


# --- time zones ----------------------------------------------------------------------------------


@pytest.fixture
def new_york_local_time(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
    assert os.environ.get("TZ") != "America/New_York"


def test_naive_timestamps_are_utc_whatever_the_machine_time_zone(
    tmp_path: Path, new_york_local_time: None
) -> None:
    row = {**CRM_ROWS[0], "created_at": "2024-01-05 10:00:00", "worked_date": "2024-01-06"}
    f = Landed("crm/naive.csv", csv_body([row]))
    h = Harness(tmp_path)
    h.ingest(f)
    (lead,) = h.query("SELECT epoch(created_at) AS c, epoch(worked_date) AS w FROM crm_leads")
    assert lead["c"] == datetime.fromisoformat("2024-01-05T10:00:00+00:00").timestamp()
    assert lead["w"] == datetime.fromisoformat("2024-01-06T00:00:00+00:00").timestamp()


def test_the_whole_file_verdict_reads_the_first_line_by_number_not_by_position() -> None:
    """DuckDB may hand a chunk's records over in another order: the verdict on a JSON array
    file must come from line 1 (`[`), not from whichever line arrived first."""
    from ingest_pipeline.arrow import pa
    from ingest_pipeline.parsing import NdjsonFileCheck

    lines = ["[\n", " {\n", '  "_p": "a",\n', " }\n", "]\n"]
    order = [2, 0, 4, 1, 3]  # line 3 first
    chunk = pa.table(
        {
            "line_number": pa.array([i + 1 for i in order], pa.int64()),
            "raw": pa.array([lines[i] for i in order], pa.string()),
            "error": pa.array(["invalid JSON"] * len(lines), pa.string()),
        }
    )
    check = NdjsonFileCheck()
    check.add(chunk.slice(0, 2))  # line 3 and line 1 in one chunk, lines 5, 2, 4 in the next
    check.add(chunk.slice(2))
    assert check.first_text == "["
    assert check.verdict() is not None and "one JSON array" in check.verdict()
