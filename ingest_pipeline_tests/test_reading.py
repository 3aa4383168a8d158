"""reading.py on its own: line splitting across chunk boundaries, over-long lines, gzip damage."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_pipeline import reading
from ingest_pipeline.reading import FileBytes, UnsupportedFile, ndjson_lines


def split(path: Path, compression: str = "none", **limits: int) -> tuple[list, FileBytes]:
    content = FileBytes(path, compression)
    limits = {"max_line_bytes": 1 << 20, "keep_bytes": 1 << 20, **limits}
    rows = [row for batch in ndjson_lines(content, **limits) for row in batch.to_pylist()]
    return rows, content


def expected_lines(body: bytes) -> list[bytes]:
    """LF-terminated lines, each with its LF; a last line without LF as it is; a UTF-8 byte
    order mark opening the file is not part of the first line."""
    body = body.removeprefix(reading.UTF8_BOM)
    pieces = body.split(b"\n")
    lines = [p + b"\n" for p in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    return lines


@settings(max_examples=60, deadline=None)
@given(
    body=st.lists(st.binary(max_size=12).filter(lambda b: b"\n" not in b), max_size=12).map(
        lambda parts: b"\n".join(parts)
    ),
    trailing_newline=st.booleans(),
    read_bytes=st.integers(1, 9),
)
def test_lines_are_split_at_lf_only_whatever_the_chunk_boundaries(
    tmp_path_factory: pytest.TempPathFactory, body: bytes, trailing_newline: bool, read_bytes: int
) -> None:
    path = tmp_path_factory.mktemp("split") / "f.jsonl"
    path.write_bytes(body + (b"\n" if trailing_newline else b""))
    original = reading.READ_BYTES
    reading.READ_BYTES = read_bytes  # every line crosses chunk boundaries
    try:
        rows, _ = split(path)
    finally:
        reading.READ_BYTES = original
    want = expected_lines(path.read_bytes())
    assert [r["raw"] for r in rows] == want
    assert [r["line_number"] for r in rows] == list(range(1, len(want) + 1))
    assert all(r["overlong_bytes"] is None for r in rows)


def test_a_lone_cr_and_any_other_byte_stay_inside_their_line(tmp_path: Path) -> None:
    body = b'{"a": "x\ry"}\r\n\x1f\x1e\x1d\x1c\x00\xff\n{"b": 1}'
    path = tmp_path / "f.jsonl"
    path.write_bytes(body)
    rows, _ = split(path)
    assert [r["raw"] for r in rows] == [
        b'{"a": "x\ry"}\r\n',
        b"\x1f\x1e\x1d\x1c\x00\xff\n",
        b'{"b": 1}',
    ]


@pytest.mark.parametrize("read_bytes", [1, 2, 1 << 20])
def test_a_byte_order_mark_is_not_part_of_the_first_line(
    tmp_path: Path, read_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reading, "READ_BYTES", read_bytes)
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\xef\xbb\xbf{\xc0\xaf}\n\xef\xbb\xbf{}\n")  # first line not UTF-8 either
    rows, _ = split(path)
    # only the mark that opens the file goes; one inside the file is the record's own bytes
    assert [r["raw"] for r in rows] == [b"{\xc0\xaf}\n", b"\xef\xbb\xbf{}\n"]


@pytest.mark.parametrize("read_bytes", [3, 1 << 20])
def test_an_overlong_line_is_cut_and_the_lines_after_it_keep_their_numbers(
    tmp_path: Path, read_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reading, "READ_BYTES", read_bytes)
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"short\n" + b"x" * 50 + b"\n" + b"ok\n" + b"y" * 40)
    rows, _ = split(path, max_line_bytes=20, keep_bytes=4)
    assert [(r["line_number"], r["raw"], r["overlong_bytes"]) for r in rows] == [
        (1, b"short\n", None),
        (2, b"xxxx", 51),  # the line with its LF
        (3, b"ok\n", None),
        (4, b"yyyy", 40),  # the last line, without LF, never ends within the limit
    ]


def test_concatenated_gzip_members_and_zero_padding_read_as_one_file(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(b"a\nb\n") + gzip.compress(b"c\n") + b"\x00" * 64)
    rows, content = split(path, "gzip")
    assert [r["raw"] for r in rows] == [b"a\n", b"b\n", b"c\n"]
    assert content.damage is None


def test_truncated_gzip_keeps_complete_lines_and_reports_the_damage(tmp_path: Path) -> None:
    body = b"".join(b"line %d\n" % i for i in range(5000))
    data = gzip.compress(body)
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    rows, content = split(path, "gzip")
    assert content.damage is not None and "truncated" in content.damage
    readable = zlib.decompressobj(wbits=31).decompress(data[: len(data) // 2])
    complete = readable[: readable.rfind(b"\n") + 1]
    # the partial last line belongs to the damage: only complete lines are yielded
    assert b"".join(r["raw"] for r in rows) == complete


def test_a_bad_crc_is_damage_not_silence(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(b"a\nb\n"))
    data[-8] ^= 0xFF  # CRC-32 of the trailer
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(bytes(data))
    _, content = split(path, "gzip")
    assert content.damage is not None and "corrupt" in content.damage


def test_content_that_is_not_gzip_is_a_whole_file_error(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(b'{"a": 1}\n')
    with pytest.raises(UnsupportedFile, match="not gzip data"):
        split(path, "gzip")
