"""Every corruption a client can send gets its own reason (file, line, raw text); whole-file
problems end the file with a status and a message; error policies; validate / preview CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from ingest_pipeline import warehouse
from ingest_pipeline.bronze import FileReport, SourceFile, process_file
from ingest_pipeline.config import ConfigError, FeedPolicy, load_config
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.parsing import MAX_LINE_BYTES

BIN = Path(sys.executable).parent


def event(i: int, **extra: object) -> dict:
    return {
        "event_text": "opened",
        "event_timestamp": 1_767_225_600 + i,
        "contact_key": f"c{i}",
        **extra,
    }


def line(i: int, **extra: object) -> bytes:
    return (json.dumps(event(i, **extra)) + "\n").encode()


def run(
    tmp_path: Path, name: str, body: bytes, feed: str = "track", policy: FeedPolicy | None = None
) -> FileReport:
    path = tmp_path / name
    path.write_bytes(body)
    source = SourceFile(
        uri=str(path),
        etag="e1",
        key=f"{feed}/{name}",
        landed_at=datetime(2026, 11, 1, tzinfo=UTC),
        size=len(body),
        tenant_id="default",
    )
    return process_file(path, source, FEEDS[feed], tmp_path / "work", policy=policy)


def reasons(report: FileReport) -> dict[int, str]:
    return {r["line_number"]: r["reason"] for r in report.rejects.to_pylist()}


def raws(report: FileReport) -> dict[int, str]:
    return {r["line_number"]: r["raw"] for r in report.rejects.to_pylist()}


def assert_accounted(report: FileReport) -> None:
    assert report.rows_read == report.rows_valid + report.rows_duplicate + report.rows_rejected


# ---- one reason per corruption, NDJSON ---------------------------------------------------------

NDJSON_CORRUPTIONS = [
    (
        b'{"event_text": "x", "event_timestamp": 1767225600, "contact_key": "c"\n',
        "invalid JSON at column",
    ),
    (b"[1, 2, 3]\n", "not an object (it is array)"),
    (b'"just a string"\n', "not an object (it is varchar)"),
    (
        b'{"event_text": "\xff\xfe", "event_timestamp": 1767225600, "contact_key": "c"}\n',
        "not valid UTF-8",
    ),
    (b'{"event_text": "a\x00b", "event_timestamp": 1767225600, "contact_key": "c"}\n', "NUL bytes"),
    (b"\n", "empty line"),
    (
        b'{"event_timestamp": 1767225600, "contact_key": "c"}\n',
        "missing required field 'event_text'",
    ),
    (
        b'{"event_text": "  ", "event_timestamp": 1767225600, "contact_key": "c"}\n',
        "missing required field 'event_text'",
    ),
    (
        b'{"event_text": "x", "event_timestamp": "soon", "contact_key": "c"}\n',
        "must be Unix seconds (a number), got 'soon'",
    ),
    (
        b'{"event_text": "x", "event_timestamp": 1767225600000, "contact_key": "c"}\n',
        "looks like milliseconds",
    ),
    (b'{"event_text": "x", "event_timestamp": -5, "contact_key": "c"}\n', "out of range"),
]


@pytest.mark.parametrize(
    ("bad", "expected"), NDJSON_CORRUPTIONS, ids=[e for _, e in NDJSON_CORRUPTIONS]
)
def test_each_ndjson_corruption_is_quarantined_with_its_reason(
    tmp_path: Path, bad: bytes, expected: str
) -> None:
    report = run(tmp_path, "f.jsonl", line(1) + bad + line(3))
    assert report.status == "parsed"
    assert report.rows_read == 3 and report.rows_valid == 2 and report.rows_rejected == 1
    assert expected in reasons(report)[2]
    assert raws(report)[2] is not None
    assert_accounted(report)


def test_a_line_that_is_not_utf8_keeps_every_byte_readable(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are shown as \\xNN; everything else as it is in the file (quotes,
    backslashes, a trailing 'A' or '0' that a careless strip of '\\x0A' would eat); the CRLF
    line end is not part of the record."""
    bad = b'{"event_text": "caf\xe9 \\"DATA\\"", "contact_key": "it\'s"} 0A\r\n'
    report = run(tmp_path, "f.jsonl", line(1) + bad + line(3))
    assert raws(report)[2] == '{"event_text": "caf\\xE9 \\"DATA\\"", "contact_key": "it\'s"} 0A'
    assert "not valid UTF-8" in reasons(report)[2]
    assert_accounted(report)


@pytest.mark.parametrize("name", ["f.jsonl.gz", "f.csv.gz"])
def test_a_gz_name_on_content_that_is_not_gzip_fails_with_a_plain_reason(
    tmp_path: Path, name: str
) -> None:
    """Refused when the file is opened: for NDJSON the check used to fire inside the stream
    DuckDB reads, and the ledger got DuckDB's wrapper message with a Python traceback."""
    report = run(tmp_path, name, line(1))
    assert report.status == "failed"
    assert report.error is not None
    assert report.error.startswith("the file name ends in .gz/.gzip but its content is not gzip")
    assert "Traceback" not in report.error and "ndjson_lines" not in report.error


def test_invalid_json_says_where(tmp_path: Path) -> None:
    report = run(tmp_path, "f.jsonl", line(1) + b'{"event_text": "x",, "contact_key": "c"}\n')
    assert reasons(report)[2].startswith("invalid JSON at column 20: Expecting property name")


def test_bad_email_is_named(tmp_path: Path) -> None:
    body = b'{"contact_key": "k1", "email": "a@b.co"}\n{"contact_key": "k2", "email": "not-an-email"}\n'
    report = run(tmp_path, "f.jsonl", body, feed="identify")
    assert reasons(report) == {2: "field 'email' is not an email address, got 'not-an-email'"}


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    body = b"\xef\xbb\xbf" + line(1).replace(b"\n", b"\r\n") + line(2).replace(b"\n", b"\r\n")
    report = run(tmp_path, "f.jsonl", body)
    assert (report.rows_read, report.rows_valid, report.rows_rejected) == (2, 2, 0)
    csv_body = b"\xef\xbb\xbfevent_text,event_timestamp,contact_key\r\na,1767225600,c1\r\nb,1767225601,c2\r\n"
    report = run(tmp_path, "f.csv", csv_body)
    assert (report.rows_read, report.rows_valid, report.rows_rejected) == (2, 2, 0)


def test_line_over_the_parser_limit_is_quarantined_not_a_crash(tmp_path: Path) -> None:
    huge = json.dumps(event(2, blob="x" * (MAX_LINE_BYTES + 10))).encode() + b"\n"
    report = run(tmp_path, "f.jsonl.gz", gzip.compress(line(1) + huge + line(3), compresslevel=1))
    assert report.status == "parsed"
    assert report.rows_valid == 2
    assert "longer than the parser's limit" in reasons(report)[2]
    assert len(raws(report)[2]) <= 65_536  # the quarantine keeps a bounded prefix


# ---- one reason per corruption, CSV ------------------------------------------------------------

HEADER = b"event_text,event_timestamp,contact_key\n"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (b"a,1767225600,c,extra\n", "more fields than the header (4 instead of 3)"),
        (b"a,1767225600\n", "fewer fields than the header (2 instead of 3)"),
        (b'"a,1767225600,c\n', "unescaped or unterminated quote"),
        (b"a\xff,1767225600,c\n", "not valid UTF-8"),
        (b",1767225600,c\n", "missing required field 'event_text'"),
        (b"a,notatime,c\n", "must be Unix seconds"),
    ],
)
def test_each_csv_corruption_is_quarantined_with_its_reason(
    tmp_path: Path, bad: bytes, expected: str
) -> None:
    body = HEADER + b"a,1767225601,c1\n" + bad + b"b,1767225602,c2\n"
    report = run(tmp_path, "f.csv", body)
    assert expected in reasons(report)[3], reasons(report)
    assert 3 in raws(report)
    assert_accounted(report)


def test_stray_line_break_splitting_a_csv_record(tmp_path: Path) -> None:
    body = HEADER + b"a,1767225601,c1\nb,17672\n25602,c2\nc,1767225603,c3\n"
    report = run(tmp_path, "f.csv", body)
    assert report.rows_read == 4 and report.rows_valid == 2
    assert all("line break outside quotes splits the record" in r for r in reasons(report).values())


# ---- whole-file problems -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("empty.jsonl", b"", "found zero data rows"),
        ("header_only.csv", HEADER, "found zero data rows"),
        ("events.xlsx", b"PK\x03\x04", "unsupported file extension"),
        ("array.json", json.dumps([event(1), event(2)], indent=1).encode(), "one JSON array"),
        ("pretty.json", json.dumps(event(1), indent=2).encode(), "pretty-printed"),
        ("nuls.jsonl", b"\x00" * 4096, "only NUL bytes"),
    ],
)
def test_whole_file_problems_end_the_file_with_a_message(
    tmp_path: Path, name: str, body: bytes, expected: str
) -> None:
    report = run(tmp_path, name, body)
    assert report.status == "failed"
    assert expected in (report.error or "")
    assert report.bronze_path is None
    # nothing is lost: the file's records (if any) are all quarantined with the file's reason
    assert report.rows_rejected == report.rows_read
    assert all(expected in r for r in reasons(report).values())


def test_truncated_gzip_keeps_the_rows_before_the_damage(tmp_path: Path) -> None:
    rows = b"".join(line(i) for i in range(20_000))
    data = gzip.compress(rows)
    report = run(tmp_path, "cut.jsonl.gz", data[: len(data) // 2])
    assert report.status == "parsed"
    assert "truncated" in (report.error or "")
    assert 1_000 < report.rows_valid < 20_000
    last = max(reasons(report))
    assert report.rows_read == last and "truncated" in reasons(report)[last]
    assert_accounted(report)


def test_corrupt_gzip_is_reported(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(b"".join(line(i) for i in range(20_000))))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    report = run(tmp_path, "bad.jsonl.gz", bytes(data))
    assert report.error and ("corrupt" in report.error or "truncated" in report.error)
    assert_accounted(report)


# ---- error policies ----------------------------------------------------------------------------


def test_policy_continue_loads_good_rows(tmp_path: Path) -> None:
    report = run(tmp_path, "f.jsonl", line(1) + b"oops\n" + line(3), policy=FeedPolicy())
    assert (report.status, report.rows_valid, report.rows_rejected) == ("parsed", 2, 1)


def test_policy_skip_file_above_threshold_merges_nothing_and_keeps_everything(
    tmp_path: Path,
) -> None:
    policy = FeedPolicy(on_error="skip_file", max_rejected_fraction=0.2)
    report = run(tmp_path, "f.jsonl", line(1) + b"oops\n" + line(3), policy=policy)
    assert report.status == "skipped" and report.bronze_path is None
    assert "max_rejected_fraction 0.2" in (report.error or "")
    assert report.rows_rejected == 3  # the bad row, and the good rows "not loaded"
    assert reasons(report)[1].startswith("not loaded: file skipped")
    assert "invalid JSON" in reasons(report)[2]
    below = run(
        tmp_path,
        "g.jsonl",
        line(1) + b"oops\n" + b"".join(line(i) for i in range(3, 12)),
        policy=policy,
    )
    assert below.status == "parsed" and below.rows_valid == 10


def test_invalid_policy_configuration_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "ingest.yaml"
    path.write_text("feeds:\n  track: {on_error: retry}\n")
    with pytest.raises(
        ConfigError, match=r"feeds\.track\.on_error: must be one of continue, skip_file, abort"
    ):
        load_config(path)
    path.write_text("feeds:\n  track: {on_error: skip_file, max_rejected_fraction: 2}\n")
    with pytest.raises(ConfigError, match=r"feeds\.track\.max_rejected_fraction"):
        load_config(path)
    path.write_text("feeds:\n  trak: {on_error: abort}\n")
    with pytest.raises(ConfigError, match=r"feeds\.trak: unknown feed"):
        load_config(path)


def _landed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], config: str
) -> None:
    landing = tmp_path / "landing"
    for key, body in files.items():
        (landing / key).parent.mkdir(parents=True, exist_ok=True)
        (landing / key).write_bytes(body)
    (tmp_path / "ingest.yaml").write_text(config)
    monkeypatch.setenv("INGEST_LANDING_URL", str(landing))
    monkeypatch.setenv("INGEST_LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("INGEST_WAREHOUSE_PATH", str(tmp_path / "wh.duckdb"))
    monkeypatch.setenv("INGEST_CONFIG", str(tmp_path / "ingest.yaml"))


def _run_feed_job(day: str, keys: list[str]) -> dg.ExecuteInProcessResult:
    from ingest_pipeline.definitions import defs

    with dg.instance_for_test() as instance:
        return defs.resolve_job_def("ingest_track").execute_in_process(
            run_config={"ops": {"track_bronze": {"config": {"keys": keys}}}},
            partition_key=day,
            instance=instance,
            raise_on_error=False,
        )


def test_policy_abort_fails_the_run_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _landed(
        tmp_path,
        monkeypatch,
        {"track/good.jsonl": line(1), "track/bad.jsonl": line(2) + b"oops\n"},
        "feeds:\n  track: {on_error: abort}\n",
    )
    day = datetime.now(UTC).date().isoformat()
    result = _run_feed_job(day, ["track/good.jsonl", "track/bad.jsonl"])
    assert not result.success
    failure = result.failure_data_for_node("track_bronze")
    assert failure is not None and "import aborted (on_error: abort)" in failure.error.message
    assert "line 2: invalid JSON" in failure.error.message
    with warehouse.connect(tmp_path / "wh.duckdb", read_only=True) as con:
        ledger = dict(con.execute("SELECT landing_key, status FROM ingested_files").fetchall())
        rejected = con.execute("SELECT count(*) FROM rejected_rows").fetchall()[0][0]
        events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    assert ledger == {"track/good.jsonl": "parsed", "track/bad.jsonl": "failed"}
    assert rejected == 2 and events == 0  # the run stopped before the merge


def test_failed_file_does_not_fail_the_batch_and_is_visible_in_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _landed(
        tmp_path,
        monkeypatch,
        {"track/good.jsonl": line(1), "track/empty.jsonl": b"", "track/notes.txt": b"hello"},
        "feeds: {}\n",
    )
    result = _run_feed_job(
        datetime.now(UTC).date().isoformat(),
        ["track/good.jsonl", "track/empty.jsonl", "track/notes.txt"],
    )
    assert result.success
    meta = result.asset_materializations_for_node("track_bronze")[0].metadata
    assert meta["files_failed"].value == 2
    table = meta["failed_files"].value
    assert "found zero data rows" in table and "unsupported file extension" in table
    with warehouse.connect(tmp_path / "wh.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == 1


# ---- validate / preview without loading ---------------------------------------------------------


def test_validate_and_preview_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "track"
    folder.mkdir()
    good = folder / "good.jsonl"
    good.write_bytes(line(1, plan="pro") + line(2))
    bad = folder / "bad.jsonl"
    bad.write_bytes(line(1) + b"oops\n")
    wh = tmp_path / "wh.duckdb"
    env = {"INGEST_WAREHOUSE_PATH": str(wh), "PATH": str(BIN)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "ingest-pipeline"), *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
        )

    ok = cli("validate", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "rows read:   2" in ok.stdout and "rejected:    0" in ok.stdout
    partial = cli("validate", str(bad))
    assert partial.returncode == 0 and "line 2: invalid JSON" in partial.stdout
    (tmp_path / "ingest.yaml").write_text(
        "feeds:\n  track: {on_error: skip_file, max_rejected_fraction: 0.1}\n"
    )
    refused = cli("validate", str(bad))
    assert refused.returncode == 1 and "status:      skipped" in refused.stdout
    assert cli("validate", str(tmp_path / "track" / "missing.jsonl")).returncode != 0
    preview = cli("preview", str(good))
    assert preview.returncode == 0
    lines = preview.stdout.splitlines()
    assert lines[1].split("\t")[:4] == [
        "line_number",
        "event_text",
        "event_timestamp",
        "contact_key",
    ]
    assert lines[2].split("\t")[:4] == ["1", "opened", "1767225601", "c1"]
    assert '"plan":"pro"' in lines[2]
    csv_file = folder / "good.csv.gz"
    csv_file.write_bytes(
        gzip.compress(b"event_text,event_timestamp,contact_key,plan\nopened,1767225601,c1,pro\n")
    )
    csv_preview = cli("preview", str(csv_file)).stdout.splitlines()
    assert csv_preview[0].startswith(f"{csv_file}: csv, compression gzip")
    assert csv_preview[2].split("\t")[:4] == ["2", "opened", "1767225601", "c1"]
    assert '"plan":"pro"' in csv_preview[2]
    assert not wh.exists()  # nothing was written to the warehouse


def test_object_deleted_or_replaced_after_listing(s3_bucket, tmp_path: Path) -> None:
    from ingest_pipeline import pipeline
    from ingest_pipeline.landing import landing_from_url

    client, bucket = s3_bucket
    landing = landing_from_url(f"s3://{bucket}/in", s3_client=client)
    for name in ("keep", "gone", "changed"):
        landing.put(f"track/{name}.jsonl", line(1) + line(2))
    listed = list(landing.list("track/"))
    landing.delete("track/gone.jsonl")
    landing.put("track/changed.jsonl", line(3))  # new content, new ETag
    wh = tmp_path / "wh.duckdb"
    outcome = pipeline.ingest_to_bronze(
        listed,
        FEEDS["track"],
        landing=landing,
        lake=landing_from_url(str(tmp_path / "lake")),
        warehouse_path=wh,
        tenant_id="default",
    )
    assert sorted(u.rsplit("/", 1)[1] for u in outcome.vanished) == ["changed.jsonl", "gone.jsonl"]
    assert [r.source.key for r in outcome.reports] == ["track/keep.jsonl"]
    with warehouse.connect(wh, read_only=True) as con:
        ledger = dict(con.execute("SELECT landing_key, status FROM ingested_files").fetchall())
        errors = con.execute(
            "SELECT error FROM ingested_files WHERE status = 'vanished'"
        ).fetchall()
    assert ledger == {
        "track/keep.jsonl": "parsed",
        "track/gone.jsonl": "vanished",
        "track/changed.jsonl": "vanished",
    }
    assert all("deleted or replaced after it was listed" in e[0] for e in errors)


def test_mixed_crlf_and_lf_line_ends_are_read_record_by_record(tmp_path: Path) -> None:
    """DuckDB's strict CSV mode refuses a file mixing CRLF and LF: both formats still load."""
    ndjson = (
        line(1).replace(b"\n", b"\r\n")
        + line(2)
        + line(3).replace(b"\n", b"\r\n")
        + b"\n"
        + line(5)
    )
    report = run(tmp_path, "mixed.jsonl", ndjson)
    assert (report.rows_read, report.rows_valid) == (5, 4)
    assert reasons(report) == {4: "empty line: each line must be one JSON object"}
    csv_body = (
        HEADER.replace(b"\n", b"\r\n") + b"a,1767225601,c1\nb,1767225602,c2\r\nc,1767225603,c3\n"
    )
    report = run(tmp_path, "mixed.csv.gz", gzip.compress(csv_body))
    assert (report.status, report.rows_read, report.rows_valid, report.rows_rejected) == (
        "parsed",
        3,
        3,
        0,
    )


# ---- a file read in many chunks ------------------------------------------------------------------


def _outcome(report: FileReport) -> tuple:
    import pyarrow.parquet as pq

    bronze = (
        sorted(pq.read_table(report.bronze_path).to_pylist(), key=lambda r: r["line_number"])
        if report.bronze_path is not None
        else None
    )
    counts = (report.status, report.rows_read, report.rows_valid, report.rows_rejected)
    return counts, report.error, report.rejects.to_pylist(), bronze


MANY_CHUNKS = {
    "mixed.jsonl": b"".join(
        line(i) if i % 4 else b'{"event_text": "x",, "contact_key": "c"}\n' for i in range(1, 15)
    )
    + line(15, event_timestamp="soon")
    + line(16),
    "array.jsonl": b"[\n" + b"".join(line(i).replace(b"\n", b",\n") for i in range(8)) + b"]\n",
    "nuls.jsonl": b"\x00\x00\n" * 7,
    "mixed.csv": b"event_text,event_timestamp,contact_key\n"
    + b"".join(b"opened,%d,c%d\n" % (1767225600 + i, i) for i in range(10))
    + b"opened,soon,c11\nopened,1767225612\n"
    + b"".join(b"opened,%d,c%d\n" % (1767225613 + i, i) for i in range(5)),
}


@pytest.mark.parametrize("name", sorted(MANY_CHUNKS))
def test_a_file_read_in_many_chunks_gives_what_one_chunk_gives(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records are validated and written chunk by chunk on a worker thread, in file order:
    three-record chunks give the same counts, quarantine, bronze rows and whole-file verdicts
    as one chunk."""
    from ingest_pipeline import bronze

    body = MANY_CHUNKS[name]
    whole = _outcome(run(tmp_path, name, body))  # read before the next run rewrites the work files
    monkeypatch.setattr(bronze, "CHUNK_ROWS", 3)
    chunked = _outcome(run(tmp_path, name, body))
    assert chunked == whole
    counts, _error, rejects, _bronze = whole
    assert counts[1] > 3 * bronze.CHUNKS_IN_FLIGHT and rejects  # several chunks, some rejects
