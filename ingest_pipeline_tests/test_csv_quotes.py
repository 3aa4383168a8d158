"""A quote opened and never closed in a CSV file costs one line, not the rest of the file.

DuckDB's reader takes everything from an unterminated quote to the end of the file (or to the
next quote) as one record. parsing.stage_csv quarantines only the physical line that opens the
quote, with a reason saying what to do, and reads the lines after it as records again, each with
its own line number (record number, header = 1). Quoted fields that close, line breaks and all,
read as before.

Every expectation is computed here from the records the file is built from: record k of the
list is line k + 2 of the file (the header is line 1), whatever the line ends or compression.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ingest_pipeline import parsing
from ingest_pipeline_tests.helpers import Harness, Landed, check_counts, encode, unix

HEADER = b"event_text,event_timestamp,contact_key"
T = 1_767_225_600


@dataclass(frozen=True)
class Rec:
    """One record of the file: its bytes (without the line end) and, for a good one, the event
    it loads (contact key -> event text); a bad one is quarantined with `raw` as its text."""

    text: bytes
    key: str | None = None
    event_text: str | None = None

    @property
    def good(self) -> bool:
        return self.key is not None


def good(i: int, event_text: str = "opened") -> Rec:
    quoted = (
        '"' + event_text.replace('"', '""') + '"'
        if '"' in event_text or "\n" in event_text
        else event_text
    )
    return Rec(f"{quoted},{T + i},c{i}".encode(), f"c{i}", event_text)


def bad(text: bytes) -> Rec:
    return Rec(text)


def build(records: list[Rec], newline: bytes = b"\n") -> bytes:
    return newline.join([HEADER, *(r.text for r in records)]) + newline


def ingest(tmp_path: Path, name: str, body: bytes) -> tuple[Harness, Landed]:
    f = Landed(f"track/{name}", encode(name, body))
    h = Harness(tmp_path)
    h.ingest(f)
    return h, f


def check_file(h: Harness, f: Landed, records: list[Rec]) -> list[dict]:
    """Counts, quarantined line numbers and raw text, and every good record loaded with its own
    line number: all exactly as the record list says. Returns the quarantined rows."""
    lines = {n: r for n, r in enumerate(records, start=2)}
    expected_bad = {n: r.text.decode() for n, r in lines.items() if not r.good}
    expected_good = {r.key: (n, r.event_text) for n, r in lines.items() if r.good}
    counts = check_counts(h, f)
    assert (counts["rows_read"], counts["rows_loaded"], counts["rows_rejected"]) == (
        len(records),
        len(expected_good),
        len(expected_bad),
    )
    rejects = h.rejected(f)
    assert {r["line_number"]: r["raw"] for r in rejects} == expected_bad
    events = h.query("SELECT contact_key, line_number, event_text, event_timestamp FROM events")
    assert {e["contact_key"]: (e["line_number"], e["event_text"]) for e in events} == expected_good
    for e in events:  # each loaded row is the record at its line number, not a neighbour's
        n = e["line_number"]
        assert e["event_timestamp"] == unix(T + int(lines[n].key[1:]))
    return rejects


def assert_unterminated_reason(reason: str) -> None:
    assert "unterminated quote" in reason
    assert "close the quote" in reason and 'escape a quote inside a quoted field as ""' in reason


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_an_unterminated_quote_costs_only_its_line(
    tmp_path: Path, name: str, newline: bytes
) -> None:
    records = [good(1), good(2), bad(b'clicked,"1700000001,b'), good(4), good(5), good(6)]
    h, f = ingest(tmp_path, name, build(records, newline))
    (reject,) = check_file(h, f, records)
    assert reject["line_number"] == 4
    assert_unterminated_reason(reject["reason"])
    assert "end of the file" in reject["reason"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_two_unterminated_quotes_cost_two_lines(tmp_path: Path, newline: bytes) -> None:
    """The first quote is 'closed' by the second one (at the start of a field on a later line):
    DuckDB reads lines 4-6 as one record. Both opening lines are quarantined, on their own."""
    records = [
        good(1),
        good(2),
        bad(b'clicked,"1700000001,b'),
        good(4),
        bad(b'"never closed,1700000002,c'),
        good(6),
        good(7),
    ]
    h, f = ingest(tmp_path, "two.csv.gz", build(records, newline))
    rejects = check_file(h, f, records)
    assert [r["line_number"] for r in rejects] == [4, 6]
    for r in rejects:
        assert_unterminated_reason(r["reason"])


def test_a_closed_quoted_field_with_line_breaks_is_still_one_record(tmp_path: Path) -> None:
    """Quoted fields that close read as before, also around an unterminated quote; a multi-line
    record counts as one record (the records after it are numbered by record, not by line)."""
    records = [
        good(1, "two\nlines"),
        good(2, 'say "hi"\nthen\nleave'),
        good(3),
        bad(b'x,"1700000001,c'),
        good(5, "after\nthe bad one"),
        good(6),
    ]
    h, f = ingest(tmp_path, "multiline.csv", build(records))
    (reject,) = check_file(h, f, records)
    assert reject["line_number"] == 5
    assert_unterminated_reason(reject["reason"])


def test_a_quote_closed_on_its_line_with_text_after_it_stays_one_rejected_record(
    tmp_path: Path,
) -> None:
    """Not an unterminated quote: DuckDB's verdict and reason stand, nothing is split."""
    records = [good(1), bad(b'"ab"c,1767225600,c2'), good(3)]
    h, f = ingest(tmp_path, "junk.csv", build(records))
    (reject,) = check_file(h, f, records)
    assert "unescaped or unterminated quote: close the quoted field" in reject["reason"]
    assert "lines after this one" not in reject["reason"]


def test_a_mid_file_unterminated_quote_followed_by_many_good_lines(tmp_path: Path) -> None:
    n = 5_000
    records = [good(i) for i in range(1, 1_001)]
    records.append(bad(b'opened,"1767225600,c-bad'))
    records += [good(i) for i in range(1_002, n + 1)]
    h, f = ingest(tmp_path, "long.csv", build(records))
    (reject,) = check_file(h, f, records)
    assert reject["line_number"] == 1_002
    assert len(h.query("SELECT 1 FROM events")) == n - 1


def test_backslash_escaped_file_with_an_unterminated_quote(tmp_path: Path) -> None:
    """A file escaping quotes as \\" is read with that escape, and so is the search for the end
    of the unterminated quote (an escaped quote does not close it)."""
    records = [
        Rec(f'"say \\"hi\\"",{T + 1},c1'.encode(), "c1", 'say "hi"'),
        bad(b'x,"17\\"00000001,c'),
        Rec(f'"a \\"b\\"",{T + 3},c3'.encode(), "c3", 'a "b"'),
        good(4),
    ]
    h, f = ingest(tmp_path, "backslash.csv", build(records, b"\r\n"))
    (reject,) = check_file(h, f, records)
    assert_unterminated_reason(reject["reason"])


def test_unterminated_quotes_beyond_the_split_limit_are_still_accounted_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each split reads the rest of the file again: after MAX_QUOTE_SPLITS of them DuckDB's own
    grouping stands (the rest of the file, up to the next quote, is one record), and nothing is
    lost."""
    monkeypatch.setattr(parsing, "MAX_QUOTE_SPLITS", 2)
    records = [good(1), bad(b'a,"1,c'), good(3), bad(b'b,"2,c'), good(5), bad(b'c,"3,c'), good(7)]
    h, f = ingest(tmp_path, "many.csv", build(records))
    counts = check_counts(h, f)
    rejects = h.rejected(f)
    # the first two split off; the third runs to the end of the file as one record
    assert [r["line_number"] for r in rejects] == [3, 5, 7]
    assert rejects[2]["raw"] == 'c,"3,c\nopened,1767225607,c7'
    assert (counts["rows_read"], counts["rows_loaded"], counts["rows_rejected"]) == (6, 3, 3)
