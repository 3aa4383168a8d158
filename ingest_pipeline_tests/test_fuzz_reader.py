"""The reader cannot be crashed: any bytes, as a file of any accepted format, for every feed, give a
report, never an exception (SPEC 4: "bad input never crashes a run without saying why").

The property (`check_case`), for every case:

* `process_file` returns; nothing escapes it.
* `parsed`: every record is accounted for, `rows_read = rows_valid + rows_rejected`, and each one
  is in exactly one place: its line number in the bronze file or in the quarantine, never both,
  never twice.
* `failed`: the whole file is refused with an actionable reason - not DuckDB's own error text
  caught at the last moment ("the file could not be read: ...") - and every record it counted is
  in the quarantine (`rows_read = rows_rejected`).
* Every quarantined record has a non-empty reason and a line number between 1 and the number of
  lines of the file (LF, CRLF and CR each end a line; a damaged gzip stream adds one record).

Cases come from `@example` seeds (deep nesting, huge numbers, lone surrogates, multi-MB strings,
BOMs, NULs, invalid UTF-8 everywhere, multi-byte characters cut at the reader's 1 MiB chunk
boundaries, mixed line ends, empty and header-only files, 10,000 columns, unterminated quotes, bad
gzip) and from strategies: random bytes, and valid files of each feed mutated (bytes flipped,
hostile tokens inserted, cut, spliced), each plain or gzipped (sometimes damaged). The CI run is
bounded (FUZZ_EXAMPLES=10 runs ten times as many generated cases); `scripts/fuzz_reader.py` runs
the same property for longer, coverage-guided with atheris. The crashes found have their own
regression tests at the end of this module.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from ingest_pipeline.bronze import FileReport, SourceFile, process_file
from ingest_pipeline.feeds import API_STREAMS, FEEDS
from ingest_pipeline.parsing import MAX_CSV_COLUMNS, MAX_HEADER_BYTES, MAX_LINE_BYTES
from ingest_pipeline.reading import READ_BYTES

BOM = b"\xef\xbb\xbf"
FORMATS = (".jsonl", ".json", ".ndjson", ".csv")
COMPRESSIONS = ("", ".gz", ".gzip")
DEEP = 100_000
MB = 1 << 20

# ================================================================================================
# The property
# ================================================================================================


@dataclass(frozen=True)
class Case:
    """A landed file: its name (format and compression) and feed, and its content before the
    name's compression is applied (`raw_body`: the bytes are landed as they are)."""

    name: str
    feed: str
    content: bytes
    raw_body: bool = False

    @property
    def body(self) -> bytes:
        if self.raw_body or not self.name.endswith((".gz", ".gzip")):
            return self.content
        return gzip.compress(self.content, compresslevel=1, mtime=0)

    def __repr__(self) -> str:  # multi-MB seeds: print what identifies them
        content = self.content
        shown = (
            repr(content)
            if len(content) <= 2000
            else f"{content[:300]!r}... ({len(content)} bytes)"
        )
        digest = hashlib.sha1(content).hexdigest()[:12]
        return (
            f"Case({self.name!r}, {self.feed!r}, {shown}, raw_body={self.raw_body}, sha1={digest})"
        )


def _line_count(content: bytes) -> int:
    """Lines of a file: LF, CRLF and CR each end one; a last line without an end counts."""
    ends = len(re.findall(rb"\r\n|\r|\n", content))
    return ends + (1 if content and not content.endswith((b"\n", b"\r")) else 0)


def _plain(case: Case) -> tuple[bytes, bool]:
    """(content as a reader of the landed bytes sees it, damaged gzip?), with zlib."""
    body = case.body
    if not case.name.endswith((".gz", ".gzip")):
        return body, False
    out, data = b"", body
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            out += d.decompress(data)
        except zlib.error:
            return out, True
        if not d.eof:
            return out, True
        data = d.unused_data
        if not data.strip(b"\x00"):
            break
    return out, False


def run_case(case: Case, workdir: Path) -> FileReport:
    path = workdir / case.name
    body = case.body
    path.write_bytes(body)
    source = SourceFile(
        uri=f"s3://landing/{case.feed}/{case.name}",
        etag="fuzz",
        key=f"{case.feed}/{case.name}",
        landed_at=datetime(2026, 11, 1, tzinfo=UTC),
        size=len(body),
        tenant_id="fuzz",
    )
    return process_file(path, source, FEEDS[case.feed], workdir / "work")


def check_case(case: Case, workdir: Path | None = None) -> FileReport:
    """Run the case through process_file and check the property (see the module docstring).
    The files it writes go to `workdir` (kept), or to a temporary folder (removed)."""
    if workdir is not None:
        return _check_in(case, workdir)
    with tempfile.TemporaryDirectory(prefix="fuzz-reader-") as tmp:
        return _check_in(case, Path(tmp))


def _check_in(case: Case, workdir: Path) -> FileReport:
    report = run_case(case, workdir)
    where = f"{case!r}: {report.status} read={report.rows_read} valid={report.rows_valid} rejected={report.rows_rejected} error={report.error!r}"
    assert report.status in ("parsed", "failed"), where
    rejects = report.rejects.to_pylist()
    assert len(rejects) == report.rows_rejected, where
    loaded: list[int] = []
    if report.status == "parsed":
        assert report.rows_read == report.rows_valid + report.rows_rejected, where
        assert report.rows_duplicate == 0, where
        assert report.bronze_path is not None, where
        loaded = pq.read_table(report.bronze_path, columns=["line_number"])[
            "line_number"
        ].to_pylist()
        assert len(loaded) == report.rows_valid, where
    else:
        error = report.error or ""
        assert error.strip(), where
        assert not error.startswith("the file could not be read"), where  # DuckDB's text
        assert "Traceback" not in error, where
        assert report.rows_read == report.rows_rejected and report.rows_valid == 0, where
    content, damaged = _plain(case)
    lines = _line_count(content) + (1 if damaged else 0)
    numbers = loaded + [r["line_number"] for r in rejects]
    assert len(set(numbers)) == len(numbers) == report.rows_read, (where, sorted(numbers)[:50])
    for r in rejects:
        assert r["reason"] and r["reason"].strip(), (where, r)
        assert r["raw"] is not None, (where, r)
        assert 1 <= r["line_number"] <= lines, (where, r["line_number"], lines)
    for n in loaded:
        assert 1 <= n <= lines, (where, n, lines)
    return report


# ================================================================================================
# Seeds
# ================================================================================================

EVENT = {"event_text": "opened", "event_timestamp": 1_767_225_600, "contact_key": "c1"}
GOOD = {
    "track": EVENT,
    "identify": {"contact_key": "c1", "email": "ann@example.com"},
    "group": {"contact_key": "c1", "account_key": "a1"},
    "crm": {
        "email": "lead@example.com",
        "account": "Acme",
        "created_at": "2024-01-05T10:00:00Z",
        "is_worked": "true",
        "is_converted": "false",
        "amount": 12.5,
    },
    "kissmetrics": {"_p": "ann@example.com", "_t": 1700000000, "_n": "signed up"},
    **{name: feed.example for name, feed in API_STREAMS.items()},
}
HEADER = b"event_text,event_timestamp,contact_key\n"


def event_line(i: int = 1, **extra: object) -> bytes:
    return (json.dumps({**EVENT, "contact_key": f"c{i}", **extra}) + "\n").encode()


def event_row(i: int = 1) -> bytes:
    return b"opened,%d,c%d\n" % (1_767_225_600 + i, i)


def _padded_to(prefix: bytes, at: int, line_end: bytes = b"\n") -> bytes:
    """A JSON-ish filler line so that `prefix + filler` is `at` bytes long."""
    need = at - len(prefix) - len(line_end)
    return prefix + b"x" * need + line_end


def _straddling(piece: bytes, boundary: int = READ_BYTES, csv: bool = False) -> bytes:
    """A file where `piece` (a multi-byte character, a CRLF, an escaped quote...) starts one byte
    before `boundary`, inside a record: the reader's chunk boundary cuts it."""
    head = HEADER if csv else b""
    before = boundary - 1 - len(head)
    if csv:
        # "opened,<ts>,c<xxx>" ... then the piece inside the contact key
        start = b"opened,1767225600,c"
        return head + start + b"k" * (before - len(start)) + piece + b"z\n" + event_row(2)
    start = b'{"event_text": "opened", "event_timestamp": 1767225600, "contact_key": "'
    return start + b"k" * (before - len(start)) + piece + b'z"}\n' + event_line(2)


def _noisy(n_bytes: int, seed: int, csv: bool = False) -> bytes:
    """Hard-to-compress records of 1- to 4-byte characters: their gzip stream is over 1 MiB, and
    the decompressed chunks end at arbitrary bytes, many inside a character."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789éüßøåæЖЯжя中文字日本語😀🎉🚀€£¥"
    out = [b"event_text,event_timestamp,contact_key,note\n"] if csv else []
    size = 0
    while size < n_bytes:
        value = "".join(rng.choices(alphabet, k=rng.randint(10, 200)))
        i = len(out)
        line = (
            f"opened,{1_767_225_600 + i},c{i},{value}\n".encode()
            if csv
            else event_line(i, note=value)
        )
        out.append(line)
        size += len(line)
    return b"".join(out)


def _utf16(text: str) -> bytes:
    return text.encode("utf-16")


def seeds() -> list[Case]:
    """Hostile files, each a case of the property."""
    t = []

    def add(name: str, content: bytes, feed: str = "track", raw_body: bool = False) -> None:
        t.append(Case(name, feed, content, raw_body))

    # --- deep nesting: closed and unclosed, arrays and objects, 100k deep ---
    add("deep-array-open.jsonl", event_line(1) + b"[" * DEEP + b"\n" + event_line(3))
    add("deep-array-closed.json", b"[" * DEEP + b"]" * DEEP + b"\n")
    add("deep-object-open.jsonl", event_line(1) + b'{"a":' * DEEP + b"\n" + event_line(3))
    add("deep-object-closed.ndjson", b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"\n", feed="identify")
    add("deep-array-broken-end.jsonl.gz", b"[" * DEEP + b"]" * DEEP + b"x\n")
    add("deep-extra.jsonl", event_line(1)[:-2] + b', "p": ' + b"[" * DEEP + b"]" * DEEP + b"}\n")
    add("deep-extra-open.jsonl", event_line(1)[:-2] + b', "p": ' + b"[" * DEEP + b"\n")
    add("deep-field.jsonl", b'{"event_text": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}\n")
    add("deep-in-csv.csv", HEADER + b"opened,1767225600," + b"[" * DEEP + b"\n")
    # --- numbers with thousands of digits: declared fields, extras, before an error ---
    big = b"1" + b"0" * 5000
    add("big-ts.jsonl", b'{"event_text":"x","event_timestamp":' + big + b',"contact_key":"c"}\n')
    add("big-extra.jsonl", event_line(1)[:-2] + b', "n": ' + big + b', "f": 1e99999}\n')
    add("big-then-broken.jsonl", b'{"event_text":"x","n":' + big + b",,}\n")
    add(
        "big-crm.jsonl",
        json.dumps({**GOOD["crm"], "amount": 0}).encode().replace(b"0}", big + b"}") + b"\n",
        feed="crm",
    )
    add("big-csv.csv", HEADER + b"opened," + big + b",c1\n" + event_row(2))
    add(
        "big-csv-extra.csv.gz",
        b"event_text,event_timestamp,contact_key,n\nopened,1767225600,c1," + big + b"\n",
    )
    # --- lone surrogate escapes, in keys and values; surrogates encoded as bytes ---
    add(
        "surrogate-value.jsonl",
        event_line(1)
        + b'{"event_text":"\\ud800","event_timestamp":1767225600,"contact_key":"c"}\n',
    )
    add("surrogate-key.jsonl", event_line(1)[:-2] + b', "\\udc00": 1}\n')
    add("surrogate-extra.ndjson", event_line(1)[:-2] + b', "p": "a\\ud800\\u0041"}\n')
    add("surrogate-pair-ok.jsonl", event_line(1)[:-2] + b', "p": "\\ud83d\\ude00"}\n')
    add("surrogate-broken.jsonl", b'{"\\ud800": "\\udfff",,}\n')
    add("surrogate-bytes.jsonl", event_line(1)[:-2] + b', "p": "\xed\xa0\x80"}\n')
    add("surrogate-bytes.csv", HEADER + b"opened,1767225600,c\xed\xa0\x80\n" + event_row(2))
    add("surrogate-text.csv", HEADER + b"\\ud800,1767225600,c1\n")
    # --- very long strings ---
    add("long-value.jsonl", event_line(1, note="x" * (3 * MB)) + event_line(2))
    add("long-key.jsonl", b'{"' + b"k" * (3 * MB) + b'": 1}\n' + event_line(2))
    add(
        "long-csv-value.csv",
        HEADER + b'opened,1767225600,"' + b"y" * (3 * MB) + b'"\n' + event_row(2),
    )
    add(
        "over-limit.csv",
        HEADER
        + event_row(1)
        + b"opened,1767225600,"
        + b"z" * (MAX_LINE_BYTES + 10)
        + b"\n"
        + event_row(3),
    )
    add("over-limit-unclosed.jsonl", event_line(1) + b'{"a": "' + b"z" * (MAX_LINE_BYTES + 10))
    # --- BOMs in odd places ---
    add("bom.jsonl", BOM + event_line(1))
    add("bom-twice.jsonl", BOM + BOM + event_line(1) + event_line(2))
    add("bom-mid-file.jsonl", event_line(1) + BOM + event_line(2))
    add("bom-mid-line.jsonl", event_line(1)[:10] + BOM + event_line(1)[10:])
    add("bom-only.jsonl", BOM)
    add("bom-newline.jsonl.gz", BOM + b"\n")
    add("bom.csv", BOM + HEADER + event_row(1))
    add("bom-twice.csv", BOM + BOM + HEADER + event_row(1))
    add("bom-in-header.csv", b"event_text," + BOM + b"event_timestamp,contact_key\n" + event_row(1))
    add("bom-mid-file.csv", HEADER + event_row(1) + BOM + event_row(2))
    add("bom-mid-line.csv.gz", HEADER + b"opened,17672" + BOM + b"25600,c1\n")
    add("bom-only.csv", BOM)
    add("bom-utf16.jsonl", _utf16(event_line(1).decode()))
    add("bom-utf16.csv", _utf16((HEADER + event_row(1)).decode()))
    # --- NUL bytes ---
    add("nuls.jsonl", b"\x00" * 4096)
    add("nuls.csv", b"\x00" * 4096)
    add("nul-line.jsonl", event_line(1) + b"\x00\n" + event_line(3))
    add("nul-value.jsonl", event_line(1)[:20] + b"\x00" + event_line(1)[20:])
    add("nul-escaped-key.jsonl", event_line(1)[:-2] + b', "\\u0000": 1}\n')
    add("nul-header.csv", b"event_text,event\x00_timestamp,contact_key\n" + event_row(1))
    add("nul-field.csv", HEADER + b"op\x00ened,1767225600,c1\n")
    add("nuls-after-header.csv", HEADER + b"\x00" * 100)
    # --- invalid UTF-8 in every position ---
    for label, bad in (("ff", b"\xff"), ("cont", b"\x80"), ("overlong", b"\xc0\xaf"),
                       ("cut2", b"\xc3"), ("cut3", b"\xe2\x82"), ("cut4", b"\xf0\x9f\x98"),
                       ("fivebyte", b"\xf8\x88\x80\x80\x80")):  # fmt: skip
        add(f"utf8-start-{label}.jsonl", bad + event_line(1) + event_line(2))
        add(
            f"utf8-key-{label}.jsonl",
            b'{"eve' + bad + b'nt_text": "x", "event_timestamp": 1767225600, "contact_key": "c"}\n',
        )
        add(
            f"utf8-value-{label}.jsonl",
            b'{"event_text": "x'
            + bad
            + b'", "event_timestamp": 1767225600, "contact_key": "c"}\n'
            + event_line(2),
        )
        add(
            f"utf8-header-{label}.csv",
            b"event_text,event_" + bad + b"timestamp,contact_key\n" + event_row(1),
        )
        add(
            f"utf8-field-{label}.csv", HEADER + b"open" + bad + b"ed,1767225600,c1\n" + event_row(2)
        )
    add("utf8-start.csv", b"\xff" + HEADER + event_row(1))
    add("utf8-end.jsonl", event_line(1) + b"\xf0\x9f")
    add("utf8-end.csv", HEADER + event_row(1) + b"\xf0\x9f")
    # --- chunk boundaries (reading.READ_BYTES): characters and line ends cut in two ---
    add("chunk-char.jsonl", _straddling("😀".encode()))
    add("chunk-char-cut.jsonl", _straddling(b"\xf0\x9f"))
    add("chunk-char.csv", _straddling("😀".encode(), csv=True))
    add("chunk-char-cut.csv", _straddling(b"\xe2\x82", csv=True))
    add("chunk-crlf.jsonl", _padded_to(b"", READ_BYTES - 1 + 2, b"\r\n") + event_line(2))
    add(
        "chunk-crlf-mixed.csv",
        HEADER
        + _padded_to(b"opened,1767225600,c", READ_BYTES - len(HEADER) + 1, b"\r\n")
        + event_row(2)
        + b"opened,1767225602,c3\r\n",
    )
    add(
        "chunk-blank-line.csv",
        HEADER
        + _padded_to(b"opened,1767225600,c", READ_BYTES - len(HEADER))
        + b"\n"
        + event_row(2),
    )
    add("chunk-bom.jsonl", _padded_to(b"", READ_BYTES - 1) + BOM + event_line(2))
    # an escaped quote cut by the chunk boundary of the scan for the quote's end (it starts
    # after the opening quote)
    add(
        "chunk-quote-pair.csv",
        HEADER + b'opened,1767225600,"' + b"q" * (READ_BYTES - 1) + b'""x\n' + event_row(2),
    )
    add("chunk-char.jsonl.gz", _noisy(4 * MB, seed=1))
    add("chunk-char.csv.gzip", _noisy(4 * MB, seed=2, csv=True))
    add("chunk-char-cut.jsonl.gz", _noisy(4 * MB, seed=3).replace("😀".encode(), b"\xf0\x9f"))
    # --- line ends: CRLF, LF, CR and their mixes ---
    for label, ends in (("crlf", [b"\r\n"]), ("cr", [b"\r"]), ("lf-crlf", [b"\n", b"\r\n"]),
                        ("lf-cr", [b"\n", b"\r"]), ("all", [b"\r\n", b"\n", b"\r"])):  # fmt: skip
        rows = [event_row(i).rstrip(b"\n") for i in range(1, 7)]
        lines = [event_line(i).rstrip(b"\n") for i in range(1, 7)]
        add(
            f"ends-{label}.csv",
            b"event_text,event_timestamp,contact_key"
            + b"".join(ends[i % len(ends)] + r for i, r in enumerate(rows))
            + ends[0],
        )
        add(
            f"ends-{label}.jsonl",
            b"".join(line + ends[i % len(ends)] for i, line in enumerate(lines)),
        )
    add("cr-in-row.csv", HEADER + b"open\red,1767225600,c1\n" + event_row(2))
    add("cr-at-end.csv", HEADER + event_row(1) + b"opened,1767225601,c2\r")
    add("cr-in-header.csv", b"event_text\r,event_timestamp,contact_key\n" + event_row(1))
    add("cr-in-quotes.csv", HEADER + b'"open\red",1767225600,c1\n' + event_row(2))
    add("no-final-newline.csv", HEADER + event_row(1).rstrip(b"\n"))
    add("no-final-newline.jsonl", event_line(1).rstrip(b"\n"))
    # --- empty, header only, blank lines ---
    add("empty.jsonl", b"")
    add("empty.csv", b"")
    add("empty.csv.gz", b"")
    add("newline.jsonl", b"\n")
    add("newline.csv", b"\n")
    add("crlf.csv", b"\r\n")
    add("header-only.csv", HEADER)
    add("header-only-no-newline.csv", HEADER.rstrip(b"\n"))
    add("header-then-blank.csv", HEADER + b"\n\n\r\n")
    add("blank-before-header.csv", b"\n" + HEADER + event_row(1))
    add("blank-lines.jsonl", b"\n\n" + event_line(3) + b"\n \n")
    add("blank-lines.csv", HEADER + b"\n" + event_row(1) + b"\n\n" + event_row(2))
    # --- wide and long headers ---
    wide = b",".join(b"c%d" % i for i in range(10_000))
    add(
        "cols-10000.csv",
        b"event_text,event_timestamp,contact_key,"
        + wide
        + b"\n"
        + b"opened,1767225600,c1"
        + b"," * 10_000
        + b"\n",
    )
    add(
        "cols-max.csv",
        b",".join(b"c%d" % i for i in range(MAX_CSV_COLUMNS))
        + b"\n"
        + b"1," * (MAX_CSV_COLUMNS - 1)
        + b"1\n",
    )
    add("header-200k-name.csv", b"n" * 200_000 + b"\n1\n")
    add("header-over-limit.csv", b"n" * (MAX_HEADER_BYTES + 10) + b"\n1\n")
    add("header-no-line-end.csv.gz", b"h" * (2 * MB))
    add(
        "header-case-duplicates.csv",
        b"event_text,Event_Text,event_timestamp,contact_key\nopened,x,1767225600,c1\n",
    )
    add("header-duplicates.csv", b"a,b,a\n1,2,3\n")
    add("header-blank-name.csv", b"a,,b\n1,2,3\n")
    add(
        "header-odd-names.csv",
        b'event_text,event_timestamp,contact_key,"we""ird",\'q\',$.a,"a\nb",x\x01\n'
        + b"opened,1767225600,c1,1,2,3,4,5\n",
    )
    # --- quotes ---
    add(
        "quote-unterminated.csv",
        HEADER + event_row(1) + b'clicked,"1700000001,b\n' + event_row(3) + event_row(4),
    )
    add(
        "quote-unterminated-crlf.csv.gz",
        (HEADER + event_row(1) + b'clicked,"1700000001,b\n' + event_row(3)).replace(b"\n", b"\r\n"),
    )
    add("quote-two.csv", HEADER + b'a,"1\n' + event_row(2) + b'"b,1,c\n' + event_row(4))
    add("quote-every-line.csv", HEADER + b'a,"1,c\n' * 300)
    add(
        "quote-header-unterminated.csv", b'"event_text,event_timestamp,contact_key\n' + event_row(1)
    )
    add("quote-header-junk.csv", b'"event_text"x,event_timestamp,contact_key\n' + event_row(1))
    add("quote-header-multiline.csv", b'"event\ntext",event_timestamp,contact_key\n' + event_row(1))
    add("quote-closed-multiline.csv", HEADER + b'"open\ned",1767225600,c1\n' + event_row(2))
    add("quote-junk.csv", HEADER + b'"ab"c,1767225600,c1\n' + event_row(2))
    add("quote-backslash.csv", HEADER + b'"a\\"b",1767225600,c1\n' + b'"x,1,c\n' + event_row(3))
    add("quote-last-line.csv", HEADER + event_row(1) + b'x,"1,c')
    add("quote-only.csv", b'"')
    add("quote-at-header-end.csv", b'a,b,"')
    # --- gzip ---
    ok = event_line(1) + event_line(2)
    add("not-gzip.jsonl.gz", ok, raw_body=True)
    add("not-gzip.csv.gz", HEADER + event_row(1), raw_body=True)
    add("gzip-empty.jsonl.gz", gzip.compress(b""), raw_body=True)
    add("gzip-magic-only.csv.gz", b"\x1f\x8b", raw_body=True)
    add("gzip-cut-header.csv.gz", gzip.compress(HEADER + event_row(1))[:16], raw_body=True)
    add("gzip-cut.jsonl.gz", gzip.compress(ok * 50)[:-20], raw_body=True)
    crc = bytearray(gzip.compress(ok))
    crc[-6] ^= 0xFF
    add("gzip-bad-crc.jsonl.gz", bytes(crc), raw_body=True)
    add(
        "gzip-members.ndjson.gz",
        gzip.compress(ok) + gzip.compress(ok) + b"\x00" * 64,
        raw_body=True,
    )
    add(
        "gzip-member-then-junk.csv.gz",
        gzip.compress(HEADER + event_row(1)) + b"junk",
        raw_body=True,
    )
    add("gzip-twice.jsonl.gz", gzip.compress(gzip.compress(ok)), raw_body=True)
    # --- JSON shapes ---
    add("array.json", json.dumps([EVENT, EVENT], indent=1).encode())
    add("pretty.json", json.dumps(EVENT, indent=2).encode())
    add("scalars.jsonl", b'1\n"s"\ntrue\nnull\n[]\n' + event_line(6))
    add(
        "nan.jsonl",
        event_line(1)[:-2] + b', "n": NaN}\n' + event_line(2)[:-2] + b', "n": -Infinity}\n',
    )
    add("field-types.jsonl", b"".join((json.dumps({**EVENT, "event_text": v}) + "\n").encode()
                                       for v in ({"a": 1}, [1], 1, True, None, "", " ")))  # fmt: skip
    add(
        "odd-keys.jsonl",
        (json.dumps({**EVENT, "": 1, 'we"ird': 2, "$.a": 3, "a.b": 4, "\\": 5}) + "\n").encode(),
    )
    add(
        "duplicate-keys.jsonl",
        b'{"event_text": "a", "event_text": "b", "event_timestamp": 1767225600, "contact_key": "c"}\n',
    )
    add("delimiter-bytes.jsonl", event_line(1)[:-1] + b"\x1f\x1e\x1d\x1c" + event_line(2))
    for feed in ("identify", "group", "crm"):
        good = (json.dumps(GOOD[feed]) + "\n").encode()
        add(f"{feed}-mixed.jsonl", good + b"{bad\n" + good.replace(b'"', b"'"), feed=feed)
        add(
            f"{feed}-mixed.csv",
            (",".join(GOOD[feed]) + "\n").encode() + b",,,\n" + b'"\n',
            feed=feed,
        )
    return t


SEEDS = seeds()

# ================================================================================================
# Strategies
# ================================================================================================

HOSTILE_TOKENS = [
    BOM, b"\x00", b"\r", b"\n", b"\r\n", b'"', b'""', b"\\", b'\\"', b",", b"[" * 64, b"]",
    b"{" * 64, b"}", b'{"a":' * 64, b"\\ud800", b'"\\udc00"', b"\xff", b"\x80", b"\xc3",
    b"\xe2\x82", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"1" + b"0" * 400, b"NaN", b"-Infinity",
    b"1e999", b"\x1f\x1e\x1d\x1c", b"\t", b" ", b"null", b"'", b":", "é😀".encode(),
]  # fmt: skip


def _json_value() -> st.SearchStrategy[object]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**30), 10**30),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    )


@st.composite
def valid_content(draw: st.DrawFn, feed: str, csv: bool) -> bytes:
    """A small valid file of the feed: declared fields (sometimes spoilt) and extras."""
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row: dict[str, object] = dict(GOOD[feed])
        if draw(st.booleans()):
            row[draw(st.sampled_from(sorted(row)))] = draw(_json_value())
        for key in draw(
            st.lists(st.sampled_from(["plan", "n", "note", "tags"]), max_size=2, unique=True)
        ):
            row[key] = draw(_json_value())
        rows.append(row)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    if not csv:
        return "".join(
            json.dumps(r, ensure_ascii=draw(st.booleans())) + newline for r in rows
        ).encode()
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def field(value: object) -> str:
        text = "" if value is None else value if isinstance(value, str) else json.dumps(value)
        if any(c in text for c in ',"\r\n') or draw(st.integers(0, 5)) == 0:
            return '"' + text.replace('"', '""') + '"'
        return text

    lines = [",".join(columns)] + [",".join(field(r.get(c)) for c in columns) for r in rows]
    return (newline.join(lines) + newline).encode()


@st.composite
def mutated(draw: st.DrawFn, content: bytes) -> bytes:
    """The content with a few mutations: bits flipped, hostile tokens inserted, bytes deleted,
    a piece duplicated, the end cut off."""
    data = bytearray(content)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "insert", "delete", "duplicate", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            token = draw(st.sampled_from(HOSTILE_TOKENS) | st.binary(min_size=1, max_size=8))
            data[at:at] = token * draw(st.sampled_from([1, 1, 2, 50]))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    fmt = draw(st.sampled_from(FORMATS))
    compression = draw(st.sampled_from(COMPRESSIONS))
    feed = draw(st.sampled_from(sorted(FEEDS)))
    name = f"f{fmt}{compression}"
    kind = draw(st.sampled_from(["random", "mutated", "mutated", "mutated", "valid"]))
    if kind == "random":
        content = draw(st.binary(max_size=400))
    else:
        content = draw(valid_content(feed, fmt == ".csv"))
        if kind == "mutated":
            content = draw(mutated(content))
    if not compression:
        return Case(name, feed, content)
    damage = draw(st.sampled_from(["none", "none", "none", "cut", "flip", "raw"]))
    if damage == "none":
        return Case(name, feed, content)
    if damage == "raw":  # content that is not gzip, or random bytes after the magic
        prefix = draw(st.sampled_from([b"", b"\x1f\x8b", b"\x1f\x8b\x08\x00"]))
        return Case(name, feed, prefix + content, raw_body=True)
    body = bytearray(gzip.compress(content, mtime=0))
    if damage == "cut":
        del body[draw(st.integers(2, len(body) - 1)) :]
    else:
        body[draw(st.integers(10, len(body) - 1))] ^= 1 << draw(st.integers(0, 7))
    return Case(name, feed, bytes(body), raw_body=True)


def _with_seeds(test: Callable) -> Callable:
    for seed in reversed(SEEDS):
        test = example(case=seed)(test)
    return test


SETTINGS = dict(
    deadline=None,
    database=None,  # no .hypothesis folder in the repository; failures print their example
    suppress_health_check=list(HealthCheck),
    # Shrinking through DuckDB is slow; FUZZ_SHRINK=1 gives the smallest failing file.
    phases=[Phase.explicit, Phase.generate]
    + ([Phase.shrink] if os.environ.get("FUZZ_SHRINK") else []),
)
GENERATED = 40 * int(os.environ.get("FUZZ_EXAMPLES", "1"))


@settings(max_examples=GENERATED, **SETTINGS)
@_with_seeds
@given(case=cases())
def test_any_bytes_are_read_or_refused_never_a_crash(case: Case) -> None:
    check_case(case)


# ================================================================================================
# Regression tests: the crashes the fuzzer found, with the smallest bytes that showed them
# ================================================================================================


def _read(tmp_path: Path, name: str, content: bytes, feed: str = "track") -> FileReport:
    """The file through process_file, checked against the property; its report."""
    return check_case(Case(name, feed, content), tmp_path)


def _reasons(report: FileReport) -> dict[int, str]:
    return {r["line_number"]: r["reason"] for r in report.rejects.to_pylist()}


# --- NDJSON: the invalid-JSON describer ran Python's recursive decoder on the raw line ----------


def test_a_line_of_100k_open_brackets_is_quarantined_not_a_recursion_error(tmp_path: Path) -> None:
    """Was: RecursionError out of process_file (describe_invalid_json -> json.loads)."""
    report = _read(tmp_path, "deep.jsonl", event_line(1) + b"[" * DEEP + b"\n" + event_line(3))
    assert (report.status, report.rows_read, report.rows_valid) == ("parsed", 3, 2)
    assert "nested too deeply" in _reasons(report)[2]


def test_a_line_of_100k_unclosed_objects_is_quarantined_not_a_recursion_error(
    tmp_path: Path,
) -> None:
    """Was: RecursionError ("while decoding a JSON object")."""
    report = _read(tmp_path, "deep.ndjson", b'{"a":' * DEEP + b"\n" + event_line(2))
    assert (report.status, report.rows_valid) == ("parsed", 1)
    assert _reasons(report)[1].startswith("invalid JSON: arrays/objects are nested too deeply")


def test_an_integer_of_5000_digits_does_not_hide_where_the_line_breaks(tmp_path: Path) -> None:
    """Was: "invalid JSON at column None: Exceeds the limit (4300 digits) for integer string
    conversion..." (Python's int limit, not the line's error)."""
    line = b'{"event_text":"x","n":1' + b"0" * 5000 + b",,}\n"
    report = _read(tmp_path, "big.jsonl", line)
    assert _reasons(report)[1].startswith("invalid JSON at column 5025: Expecting property name")


def test_a_lone_surrogate_escape_is_named(tmp_path: Path) -> None:
    """Was: the general "not a valid JSON document" (DuckDB refuses it, Python takes it)."""
    body = event_line(1)[:-2] + b', "\\udc00": "a\\ud800b"}\n'
    reason = _reasons(_read(tmp_path, "s.jsonl", body))[1]
    assert reason.startswith(
        "invalid JSON at column 79: \\udc00 is half of a UTF-16 surrogate pair"
    )


def test_nan_and_infinity_are_not_json(tmp_path: Path) -> None:
    """Was: loaded - DuckDB's JSON reader takes NaN/Infinity, and the event's properties in the
    warehouse held {"n":NaN}, which is not JSON. A NaN inside a string is text and loads."""
    body = (
        event_line(1)[:-2] + b', "n": NaN}\n'
        + event_line(2)[:-2] + b', "m": [1, -inf]}\n'
        + event_line(3, note="NaN, Infinity: strings")
    )  # fmt: skip
    report = _read(tmp_path, "nan.jsonl", body)
    assert (report.rows_read, report.rows_valid) == (3, 1)
    assert set(_reasons(report)) == {1, 2}
    assert all("NaN and Infinity are not JSON values" in r for r in _reasons(report).values())


def test_nan_and_infinity_text_is_not_a_number_or_a_time(tmp_path: Path) -> None:
    """Was: 'NaN' and 'inf' seconds "look like milliseconds", and a CRM lead with created_at
    'infinity' and amount 'inf' loaded (DuckDB's casts take them)."""
    track = _read(tmp_path, "t.csv", HEADER + b"opened,NaN,c1\nopened,inf,c2\n")
    assert set(_reasons(track).values()) == {
        "field 'event_timestamp' must be Unix seconds (a number), got 'NaN'",
        "field 'event_timestamp' must be Unix seconds (a number), got 'inf'",
    }
    crm = _read(
        tmp_path,
        "c.csv",
        b"email,account,created_at,is_worked,is_converted,amount\n"
        b"a@b.co,Acme,infinity,true,false,inf\n",
        feed="crm",
    )
    assert _reasons(crm)[2] == (
        "field 'created_at' must be a timestamp (ISO 8601 or Unix seconds), got 'infinity'; "
        "field 'amount' must be a number, got 'inf'"
    )


# --- CSV: the header read with Python's csv module ------------------------------------------------


def test_a_csv_header_longer_than_pythons_csv_field_limit(tmp_path: Path) -> None:
    """Was: _csv.Error "field larger than field limit (131072)" out of process_file."""
    report = _read(tmp_path, "long.csv", b"n" * 200_000 + b"\n1\n")
    assert (report.status, report.rows_read) == ("parsed", 1)
    assert "missing required field 'event_text'" in _reasons(report)[2]


def test_a_csv_header_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    report = _read(tmp_path, "longer.csv", b"n" * (MAX_HEADER_BYTES + 1) + b"\n1\n")
    assert report.status == "failed"
    assert (report.error or "").startswith(
        f"the CSV header row is longer than {MAX_HEADER_BYTES} bytes"
    )


def test_a_csv_file_with_cr_line_ends(tmp_path: Path) -> None:
    """Was: _csv.Error "new-line character seen in unquoted field" (the header was read up to
    the first LF, here the whole file)."""
    report = _read(
        tmp_path, "mac.csv", HEADER.replace(b"\n", b"\r") + event_row(1).replace(b"\n", b"\r")
    )
    assert (report.status, report.rows_read, report.rows_valid) == ("parsed", 1, 1)


def test_a_lone_cr_in_the_header_of_an_lf_file(tmp_path: Path) -> None:
    """Was: _csv.Error "new-line character seen in unquoted field"."""
    report = _read(tmp_path, "cr.csv", b"event_text\r,event_timestamp,contact_key\n" + event_row(1))
    assert (report.status, report.rows_read, report.rows_rejected) == ("parsed", 2, 2)
    assert "more fields than the header (3 instead of 1)" in _reasons(report)[2]


def test_header_names_equal_but_for_case(tmp_path: Path) -> None:
    """Was: failed with DuckDB's "Binder Error: Duplicate named argument" (its column names
    are case-insensitive); the columns are now read by position."""
    body = (
        b'event_text,Event_Text,event_timestamp,contact_key,"we""ird"\nopened,x,1767225600,c1,y\n'
    )
    report = _read(tmp_path, "case.csv", body)
    assert (report.status, report.rows_valid) == ("parsed", 1)
    extras = pq.read_table(report.bronze_path)["properties"].to_pylist()
    assert [json.loads(e) for e in extras] == [{"Event_Text": "x", 'we"ird': "y"}]


def test_a_header_of_10000_columns_is_refused_clearly(tmp_path: Path) -> None:
    """Was: failed with DuckDB's "Out of Memory Error: could not allocate block"."""
    header = b"event_text,event_timestamp,contact_key," + b",".join(
        b"c%d" % i for i in range(9_997)
    )
    report = _read(
        tmp_path, "wide.csv", header + b"\n" + b"opened,1767225600,c1" + b"," * 9_997 + b"\n"
    )
    assert report.status == "failed"
    assert report.error == (
        f"the CSV header has 10000 columns, more than the {MAX_CSV_COLUMNS} the reader takes: "
        "split the file into files with fewer columns"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'"event_text,event_timestamp,contact_key\n' + event_row(1), "has an unterminated quote"),
        (
            b'"event_text"x,event_timestamp,contact_key\n' + event_row(1),
            "text after the closing quote",
        ),
        (b"\n" + HEADER + event_row(1), "starts with a blank line"),
        (b"event_text,event_\xfftimestamp,contact_key\n" + event_row(1), "is not valid UTF-8"),
        (b"event\x00_text,event_timestamp,contact_key\n" + event_row(1), "holds NUL bytes"),
        (b"\x00" * 4096, "only NUL bytes"),
        ((HEADER + event_row(1)).decode().encode("utf-16"), "UTF-16"),
    ],
    ids=[
        "unterminated-quote",
        "text-after-quote",
        "blank-first-line",
        "not-utf8",
        "nul",
        "only-nuls",
        "utf16",
    ],
)
def test_a_csv_header_that_cannot_be_read_refuses_the_file_with_the_reason(
    tmp_path: Path, body: bytes, expected: str
) -> None:
    """Were: "found zero data rows" (DuckDB skipped the whole file as the header record) while
    the file has data lines; "the CSV file is empty" for a blank first line; every row rejected
    as missing a field it has, for a header that is not UTF-8 or holds NULs."""
    report = _read(tmp_path, "h.csv", body)
    assert report.status == "failed"
    assert expected in (report.error or ""), report.error


def test_two_byte_order_marks_before_the_header(tmp_path: Path) -> None:
    """Was: the first column named '\\ufeffevent_text', so every row "missing event_text"."""
    report = _read(tmp_path, "bom.csv", BOM + BOM + HEADER + event_row(1))
    assert (report.status, report.rows_valid) == ("parsed", 1)


# --- CSV: line ends DuckDB's strict mode refuses --------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        HEADER + b"open\red,1767225600,c1\n" + event_row(2),
        HEADER + event_row(1) + b"opened,1767225602,c2\r",
    ],
    ids=["cr-in-a-row", "cr-at-the-end"],
)
def test_a_lone_cr_in_an_lf_csv(tmp_path: Path, body: bytes) -> None:
    """Was: failed with DuckDB's "The CSV Parser state machine reached an invalid state" (only a
    CRLF/LF mix was handled). A lone CR now ends a line, as in Python's csv module."""
    report = _read(tmp_path, "cr.csv", body)
    assert report.status == "parsed" and report.rows_valid == 2


# --- CSV: DuckDB losing its place after text that follows a closing quote ----------------------


def test_text_with_quotes_after_a_closing_quote_is_one_rejected_record(tmp_path: Path) -> None:
    """Found by the fuzzer (shrunk by hand). Was: DuckDB rejected line 3 with line 2's text as
    its raw text and read the rest of line 3 as another, "good" record: 4 records read from a
    file of 3, a row of garbage loaded, and the next record's line number (5) past the end of
    the file. The record is now cut where the file says it ends and the rest read again."""
    body = b'contact_key,account_key\nc1,a1\n"x"y, ""z"",a1\nc3,a3\n'
    report = _read(tmp_path, "g.csv", body, feed="group")
    assert (report.status, report.rows_read, report.rows_valid) == ("parsed", 3, 2)
    assert report.rejects.to_pylist() == [
        {
            "line_number": 3,
            "raw": '"x"y, ""z"",a1',
            "reason": "CSV record has an unescaped or unterminated quote: close the quoted "
            'field, or escape a quote inside it as "" or \\"',
        }
    ]
    loaded = pq.read_table(report.bronze_path, columns=["line_number", "contact_key"])
    assert sorted(loaded.to_pylist(), key=lambda r: r["line_number"]) == [
        {"line_number": 2, "contact_key": "c1"},
        {"line_number": 4, "contact_key": "c3"},
    ]


def test_a_blank_line_in_a_one_column_csv_is_a_record_with_its_own_line_number(
    tmp_path: Path,
) -> None:
    """Found by the fuzzer. Was: DuckDB reads the blank line of a one-column file as a record
    (one empty field) while the line numbering also skipped it as a blank line: the blank record
    was numbered 6, in a file of 5 lines."""
    report = _read(tmp_path, "one.csv", b"email\n\nil,a\n1,2\n3,4\n", feed="crm")
    assert (report.rows_read, report.rows_rejected) == (4, 4)
    reasons = _reasons(report)
    assert sorted(reasons) == [2, 3, 4, 5]
    assert reasons[2].startswith("missing required field 'email'")
    assert all("more fields than the header (2 instead of 1)" in reasons[n] for n in (3, 4, 5))


def test_a_wide_csv_row_that_breaks_a_rule_keeps_its_text(tmp_path: Path) -> None:
    """Found by atheris: a 10 KB file of 1,047 columns whose lines each open a quote took 72 s
    (21 reads of the file, each binding a CASE per column to rebuild the records' text). Wide
    files get fewer cuts (parsing.QUOTE_SPLIT_CELLS: 10 s), and from WIDE_RECORD_TEXT columns on
    the text is built by one lambda over the fields: the same text as the CASE per column."""
    from ingest_pipeline.parsing import WIDE_RECORD_TEXT

    n = WIDE_RECORD_TEXT + 36
    header = b"event_text,event_timestamp,contact_key," + b",".join(b"x%d" % i for i in range(n))
    fields = [b"%d" % i for i in range(n)]
    fields[3], fields[7] = b'"a,""b"""', b""
    row = b"opened,soon,c1," + b",".join(fields)
    report = _read(tmp_path, "wide.csv", header + b"\n" + row + b"\n")
    (reject,) = report.rejects.to_pylist()
    assert reject["raw"] == row.decode()
    assert reject["reason"] == "field 'event_timestamp' must be Unix seconds (a number), got 'soon'"


def test_duckdb_losing_its_place_where_the_error_is_not_at_a_quote(tmp_path: Path) -> None:
    """Found by scripts/fuzz_reader.py (hypothesis engine). Was: as above, but DuckDB's error
    position is the space before an unquoted field full of quotes, not a quote: 4 records read
    from a file of 3, the garbage row '"0"": null}' loaded, the raw text line 2's."""
    body = (
        b"contact_key,account_key,tags,n,plan,note\r\nc1,a1,,,,\r\n"
        b'"{""0"": """, """": null, ""0"": null}","a1","","","",""\r\nc3,a1,,,,\r\n'
    )
    report = _read(tmp_path, "g.csv", body, feed="group")
    assert (report.rows_read, report.rows_valid) == (3, 2)
    (reject,) = report.rejects.to_pylist()
    assert reject["line_number"] == 3
    assert reject["raw"] == '"{""0"": """, """": null, ""0"": null}","a1","","","",""'
    loaded = pq.read_table(report.bronze_path, columns=["line_number", "contact_key"])
    assert sorted(loaded.to_pylist(), key=lambda r: r["line_number"]) == [
        {"line_number": 2, "contact_key": "c1"},
        {"line_number": 4, "contact_key": "c3"},
    ]
