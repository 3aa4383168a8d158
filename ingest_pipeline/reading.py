"""The bytes of a landed file: gzip checked while it streams, and NDJSON split into lines.

Everything here streams in chunks, so memory stays bounded whatever the file size:

* `FileBytes` yields a file's content (decompressed when it is gzip). A gzip stream that is cut
  short or corrupt (including a failed CRC) ends the iteration at the damage and says what is
  wrong in `damage`; content that is not gzip at all is refused when the file is opened.
* `ndjson_lines` splits that content into lines with numpy and Arrow (no Python loop over lines)
  and yields Arrow batches (LINE_SCHEMA) ready for DuckDB. A record ends at LF only: a lone
  CR inside a line belongs to the line (DuckDB's CSV reader would split there). A line longer than
  `max_line_bytes` is cut to its first `keep_bytes` and reported, never buffered whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from zlib_ng import zlib_ng

from ingest_pipeline.arrow import pa

READ_BYTES = 1 << 20  # compressed bytes read at a time
GZIP_WBITS = 31  # gzip header and trailer (CRC-32, size), any window size
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"

LINE_SCHEMA = pa.schema(
    [
        ("line_number", pa.int64()),
        ("raw", pa.large_binary()),  # the line with its LF (and CR) still attached
        ("overlong_bytes", pa.int64()),  # size of a line cut to its first bytes, else NULL
    ]
)


class UnsupportedFile(Exception):
    """The whole file cannot be ingested; the message says what to do about it."""


class FileBytes:
    """A file's content in chunks; for gzip, decompressed and checked as it streams.

    After iteration `damage` says what is wrong with a gzip stream that stopped part way
    ("truncated ...", "corrupt ..."), or is None. `delivered` counts the bytes yielded.
    """

    def __init__(self, path: Path, compression: str) -> None:
        self.path = path
        self.gzip = compression == "gzip"
        self.damage: str | None = None
        self.delivered = 0
        if self.gzip:
            # Checked here, not while streaming: a reader such as DuckDB's Arrow scan would wrap
            # the exception in its own message and traceback.
            with open(path, "rb") as src:
                if src.read(len(GZIP_MAGIC)) != GZIP_MAGIC:
                    raise UnsupportedFile(_not_gzip(path))

    def __iter__(self) -> Iterator[bytes]:
        """The content from the start (each iteration reads the file afresh)."""
        self.damage, self.delivered = None, 0
        with open(self.path, "rb") as src:
            if not self.gzip:
                while chunk := src.read(READ_BYTES):
                    self.delivered += len(chunk)
                    yield chunk
                return
            yield from self._gunzip(src)

    def _gunzip(self, src) -> Iterator[bytes]:  # noqa: ANN001 - a binary file
        decompressor = zlib_ng.decompressobj(wbits=GZIP_WBITS)
        started = False  # inside a gzip member
        while True:
            data = src.read(READ_BYTES)
            if not data:
                break
            while data:
                if not started and not data.strip(b"\x00") and self.delivered:
                    return  # zero padding after the last member, as some writers leave
                started = True
                try:
                    out = decompressor.decompress(data)
                except zlib_ng.error as exc:
                    self.damage = f"corrupt ({exc})"
                    return
                if out:
                    self.delivered += len(out)
                    yield out
                if decompressor.eof:  # a member ended: another may follow (concatenated gzip)
                    data = decompressor.unused_data
                    decompressor = zlib_ng.decompressobj(wbits=GZIP_WBITS)
                    started = False
                else:
                    data = b""
        if started and not decompressor.eof:
            self.damage = "truncated (the file ends in the middle of the gzip stream)"


def _not_gzip(path: Path) -> str:
    with open(path, "rb") as src:
        head = src.read(8)
    return (
        f"the file name ends in .gz/.gzip but its content is not gzip data (it starts with "
        f"{head!r}): compress it with gzip or drop the .gz extension"
    )


def _batch(
    first_line: int, offsets: np.ndarray, data: bytes, overlong: list[int | None]
) -> pa.RecordBatch:
    n = len(offsets) - 1
    raw = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    sizes = pa.array(overlong, pa.int64()) if overlong else pa.nulls(n, pa.int64())
    numbers = pa.array(np.arange(first_line, first_line + n, dtype=np.int64))
    return pa.record_batch([numbers, raw, sizes], schema=LINE_SCHEMA)


def ndjson_lines(
    content: FileBytes, *, max_line_bytes: int, keep_bytes: int
) -> Iterator[pa.RecordBatch]:
    """Arrow batches of (line_number, raw, overlong_bytes), one row per LF-terminated line.

    The last line may lack its LF, unless the gzip stream was damaged: a partial line before
    the damage belongs to the damage. An over-long line is yielded alone, cut to `keep_bytes`,
    with its full size in `overlong_bytes`; the rest of it is skipped as it streams.
    """
    line_number = 1
    carry = b""
    skipping: int | None = None  # bytes seen so far of an over-long line being skipped
    skipped_head = b""
    for chunk in _without_bom(content):
        if skipping is not None:
            cut = chunk.find(b"\n")
            if cut < 0:
                skipping += len(chunk)
                continue
            yield _single(line_number, skipped_head, skipping + cut + 1)
            line_number += 1
            skipping, skipped_head, chunk = None, b"", chunk[cut + 1 :]
        buf = carry + chunk if carry else chunk
        ends = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10)
        if len(ends):
            offsets = np.empty(len(ends) + 1, np.int64)
            offsets[0] = 0
            offsets[1:] = ends + 1
            too_long = np.flatnonzero(np.diff(offsets) > max_line_bytes)
            if len(too_long):  # rare: yield the lines around each over-long one separately
                start = 0
                for i in too_long.tolist():
                    if i > start:
                        yield _slice(line_number, offsets, start, i, buf)
                        line_number += i - start
                    lo, hi = int(offsets[i]), int(offsets[i + 1])
                    yield _single(line_number, buf[lo : lo + keep_bytes], hi - lo)
                    line_number += 1
                    start = i + 1
                if start < len(ends):
                    yield _slice(line_number, offsets, start, len(ends), buf)
                    line_number += len(ends) - start
            else:
                yield _batch(line_number, offsets, buf, [])
                line_number += len(ends)
            carry = buf[int(offsets[-1]) :]
        else:
            carry = buf
        if len(carry) > max_line_bytes:  # a line that does not end within the limit
            skipping, skipped_head, carry = len(carry), carry[:keep_bytes], b""
    if content.damage is not None:
        return
    if skipping is not None:
        yield _single(line_number, skipped_head, skipping)
    elif carry:
        yield _batch(line_number, np.array([0, len(carry)], np.int64), carry, [])


def _slice(
    first_line: int, offsets: np.ndarray, start: int, stop: int, buf: bytes
) -> pa.RecordBatch:
    part = offsets[start : stop + 1]
    return _batch(first_line, part - part[0], buf[int(part[0]) : int(part[-1])], [])


def _single(line_number: int, head: bytes, size: int) -> pa.RecordBatch:
    return _batch(line_number, np.array([0, len(head)], np.int64), head, [size])


def _without_bom(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks without a UTF-8 byte order mark at the very start (it is not part of the
    first record, whether or not that record is valid UTF-8)."""
    head = b""
    stream = iter(chunks)
    for chunk in stream:
        head += chunk
        if len(head) >= len(UTF8_BOM):
            break
    yield head[len(UTF8_BOM) :] if head.startswith(UTF8_BOM) else head
    yield from stream


def write_plain(chunks: Iterable[bytes], dest: Path) -> None:
    """Write the chunks to `dest` (a decompressed copy)."""
    with open(dest, "wb") as out:
        for chunk in chunks:
            out.write(chunk)


def cut_after_last_line(path: Path) -> int:
    """Truncate `path` after its last LF (a partial last line belongs to a gzip damage);
    returns the size kept. Reads only the tail, backwards, in 1 MiB steps."""
    with open(path, "rb+") as f:
        size = f.seek(0, 2)
        end = size
        while end > 0:
            start = max(0, end - READ_BYTES)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                f.truncate(keep)
                return keep
            end = start
        f.truncate(0)
        return 0
