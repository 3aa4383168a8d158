"""Issue #8: many small files read in one pass give exactly what each file read alone gives —
counts, statuses, errors, quarantined lines with their reasons, bronze rows — including files
that need a verdict on the whole file (damaged or fake gzip, no records, one JSON document,
an error policy refusing them), which the pass reads again on their own. A pass that raises is
read again file by file, so a corrupt file still fails alone."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_pipeline import bronze, pipeline, warehouse
from ingest_pipeline.bronze import FileReport, process_file, process_pass
from ingest_pipeline.config import FeedPolicy
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import LocalLanding
from ingest_pipeline_tests import chaos
from ingest_pipeline_tests.helpers import T0, Harness, Landed, sorted_rows

TRACK = FEEDS["track"]

GOOD = '{"event_text": "opened", "event_timestamp": %d, "contact_key": "c%d", "plan": "pro"}'
LINES = st.one_of(
    st.integers(0, 50).map(lambda i: GOOD % (1_767_225_600 + i, i)),
    st.just('{"event_text": "x", "event_timestamp": 1700000000000, "contact_key": "m"}'),
    st.just('{"event_text": "x", "contact_key": "no time"}'),
    st.just('{"event_text": "broken", '),
    st.just("[1, 2]"),
    st.just(""),
    st.just("caf\xe9 not json"),
    st.just('{"event_text": "NaN", "event_timestamp": NaN, "contact_key": "n"}'),
)


@st.composite
def small_file(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["jsonl", "jsonl.gz", "truncated.gz", "fake.gz", "array", "nul"]))
    lines = draw(st.lists(LINES, max_size=12))
    body = "".join(line + "\n" for line in lines).encode()
    if kind == "jsonl":
        return "f.jsonl", body
    if kind == "jsonl.gz":
        return "f.jsonl.gz", gzip.compress(body)
    if kind == "truncated.gz":
        packed = gzip.compress(body + GOOD.encode() % (1, 1) * 50)
        return "f.jsonl.gz", packed[: max(12, len(packed) * 2 // 3)]
    if kind == "fake.gz":
        return "f.jsonl.gz", body or b"plain text\n"
    if kind == "array":
        return "f.json", json.dumps([{"event_text": "a"}] * 3, indent=2).encode()
    return "f.jsonl", b"\x00" * draw(st.integers(1, 40))


def _sources(tmp: Path, files: list[tuple[str, bytes]]) -> list[tuple[Path, bronze.SourceFile]]:
    out = []
    for i, (name, body) in enumerate(files):
        path = tmp / f"{i}-{name}"
        path.write_bytes(body)
        key = f"track/{i}-{name}"
        out.append(
            (
                path,
                bronze.SourceFile(
                    uri=f"s3://b/{key}",
                    etag=f"e{i}",
                    key=key,
                    landed_at=T0,
                    size=len(body),
                    tenant_id="acme",
                ),
            )
        )
    return out


def _bronze_rows(report: FileReport) -> list[dict]:
    if report.bronze_path is None:
        return []
    table = pq.read_table(report.bronze_path)
    mine = pc.and_(
        pc.equal(table["source_uri"].cast("string"), report.source.uri),
        pc.equal(table["etag"].cast("string"), report.source.etag),
    )
    rows = table.filter(mine).to_pylist()
    return sorted(rows, key=lambda r: r["line_number"])


def _summary(report: FileReport) -> tuple:
    return (
        report.status,
        report.rows_read,
        report.rows_valid,
        report.rows_rejected,
        report.error,
        report.rejects.to_pylist(),
        _bronze_rows(report),
    )


POLICIES = [None, FeedPolicy(on_error="skip_file", max_rejected_fraction=0.3)]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=st.lists(small_file(), min_size=2, max_size=6), policy=st.sampled_from(POLICIES))
def test_a_pass_of_small_files_gives_what_each_file_alone_gives(
    tmp_path_factory: pytest.TempPathFactory, files: list[tuple[str, bytes]], policy
) -> None:
    tmp = tmp_path_factory.mktemp("pass")
    inputs = _sources(tmp, files)
    together = process_pass(inputs, TRACK, tmp / "together", policy)
    for (path, source), report in zip(inputs, together, strict=True):
        alone = process_file(path, source, TRACK, tmp / "alone" / source.file_id, policy)
        assert _summary(report) == _summary(alone), (
            source.key,
            _summary(report)[:5],
            _summary(alone)[:5],
        )
        assert report.rows_read == report.rows_valid + report.rows_rejected or (
            report.status != "parsed" and report.rows_read == report.rows_rejected
        )


def test_each_file_of_a_pass_has_its_own_budget_of_described_json_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invalid JSON positions are worked out for the first DESCRIBE_JSON_ERRORS lines of each
    file: a file in a pass after others full of broken lines gets them as if read alone."""
    monkeypatch.setattr(bronze, "DESCRIBE_JSON_ERRORS", 2)
    broken = "".join(f'{{"event_text": "x{i}", \n' for i in range(3))
    # more good lines than broken ones: no whole-file verdict, so the files stay in the pass
    good = "".join(GOOD % (1_767_225_600 + i, i) + "\n" for i in range(4))
    body = (broken + good).encode()
    files = [(f"f{i}.jsonl", body) for i in range(3)]
    inputs = _sources(tmp_path, files)
    together = process_pass(inputs, TRACK, tmp_path / "together")
    for (path, source), report in zip(inputs, together, strict=True):
        alone = process_file(path, source, TRACK, tmp_path / "alone" / source.file_id)
        assert report.rejects.to_pylist() == alone.rejects.to_pylist()
        reasons = report.rejects["reason"].to_pylist()
        assert [r.startswith("invalid JSON at column") for r in reasons] == [True, True, False]
    assert {r.bronze_path for r in together} == {together[0].bronze_path}  # read together


def test_the_pass_reads_its_files_in_one_query_and_writes_one_bronze_file(tmp_path: Path) -> None:
    files = [(f"f{i}.jsonl", (GOOD % (1_767_225_600 + i, i) + "\n").encode()) for i in range(30)]
    reports = process_pass(_sources(tmp_path, files), TRACK, tmp_path / "out")
    assert {r.bronze_path for r in reports} == {reports[0].bronze_path}
    assert reports[0].bronze_path.name.startswith("pass-")
    assert pq.read_metadata(reports[0].bronze_path).num_rows == 30
    # the bronze row carries its file's key hash, as the merge computes it
    with duckdb.connect() as con:
        hashed = con.execute(
            f"SELECT count(*) FROM read_parquet('{reports[0].bronze_path}') "
            "WHERE key_hash_hi__events IS NOT NULL AND key_hash_lo__events IS NOT NULL"
        ).fetchall()
    assert hashed == [(30,)]


def test_a_pass_that_raises_is_read_again_file_by_file_and_a_corrupt_file_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    landing = LocalLanding(tmp_path / "landing")
    objects = [
        landing.put(f"track/f{i}.jsonl", (GOOD % (1_767_225_600 + i, i) + "\n").encode())
        for i in range(5)
    ]
    real_process_file = pipeline.process_file

    def pass_breaks(*args, **kwargs):
        raise RecursionError("a decoder hit the recursion limit")

    def one_file_breaks(local, source, feed, work, policy=None, con=None, **kwargs):
        if source.key == "track/f2.jsonl":
            raise RecursionError("a decoder hit the recursion limit")
        return real_process_file(local, source, feed, work, policy, con, **kwargs)

    monkeypatch.setattr(pipeline, "process_pass", pass_breaks)
    monkeypatch.setattr(pipeline, "process_file", one_file_breaks)
    wh = tmp_path / "wh.duckdb"
    lake = LocalLanding(tmp_path / "lake")
    outcome = pipeline.ingest_to_bronze(
        objects, TRACK, landing=landing, lake=lake, warehouse_path=wh, tenant_id="acme"
    )
    pipeline.merge_pending(TRACK, lake=lake, warehouse_path=wh)
    with warehouse.connect(wh) as con:
        status = dict(con.execute("SELECT landing_key, status FROM ingested_files").fetchall())
        events = con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    assert status == {
        **{f"track/f{i}.jsonl": "ingested" for i in (0, 1, 3, 4)},
        "track/f2.jsonl": "failed",
    }
    assert events == 4
    assert "RecursionError" in outcome.unreadable[objects[2].uri]


def test_many_small_files_through_the_pipeline_equal_one_file_at_a_time(tmp_path: Path) -> None:
    landing = LocalLanding(tmp_path / "landing")
    names = [f"r{i:03d}" for i in range(120)]
    objects = chaos.drop(landing, TRACK, names, 40)
    # a few that need a whole-file verdict, among the others
    objects.append(landing.put("track/truncated.jsonl.gz", gzip.compress(b'{"a": 1}\n' * 500)[:60]))
    objects.append(landing.put("track/fake.jsonl.gz", b"not gzip\n"))
    objects.append(
        landing.put("track/array.json", b'[{"event_text": "a"},\n{"event_text": "b"}]\n')
    )
    objects.append(landing.put("track/empty.jsonl", b""))
    wh = tmp_path / "bulk.duckdb"
    pipeline.ingest_to_bronze(
        objects,
        TRACK,
        landing=landing,
        lake=LocalLanding(tmp_path / "lake"),
        warehouse_path=wh,
        tenant_id=chaos.TENANT,
    )
    pipeline.merge_pending(TRACK, lake=LocalLanding(tmp_path / "lake"), warehouse_path=wh)
    # the reference: one run, one pass, one merge per file
    reference = tmp_path / "one-by-one.duckdb"
    ref_lake = LocalLanding(tmp_path / "ref-lake")
    for obj in objects:
        pipeline.ingest_to_bronze(
            [obj],
            TRACK,
            landing=landing,
            lake=ref_lake,
            warehouse_path=reference,
            tenant_id=chaos.TENANT,
        )
        pipeline.merge_pending(TRACK, lake=ref_lake, warehouse_path=reference)
    got, expected = chaos.snapshot(wh), chaos.snapshot(reference)
    for snap in (got, expected):  # which bronze file a file's rows are in differs
        snap["ingested_files"] = sorted_rows(
            [{k: v for k, v in r.items() if k != "bronze_uri"} for r in snap["ingested_files"]]
        )
    assert got == expected
    statuses = {r["landing_key"]: r["status"] for r in got["ingested_files"]}
    assert statuses["track/truncated.jsonl.gz"] == "ingested"  # salvaged up to the damage
    assert statuses["track/fake.jsonl.gz"] == statuses["track/array.json"] == "failed"
    assert statuses["track/empty.jsonl"] == "failed"


def test_a_warehouse_of_the_previous_layout_is_migrated_and_dedupes_against_its_rows(
    tmp_path: Path,
) -> None:
    """Row tables gained `etag` and the key hash: stored rows get their hash, so a batch that
    repeats a stored event finds it."""
    h = Harness(tmp_path / "h")
    first = Landed("track/a.jsonl", (GOOD % (1_767_225_600, 1) + "\n").encode(), T0)
    h.ingest(first)
    with duckdb.connect(str(h.wh_path)) as con:  # as an older version left it
        con.execute("ALTER TABLE events DROP COLUMN key_hash_hi")
        con.execute("ALTER TABLE events DROP COLUMN key_hash_lo")
        con.execute("ALTER TABLE events DROP COLUMN etag")
        con.execute("DELETE FROM warehouse_schema")
    later = Landed(
        "track/b.jsonl", (GOOD % (1_767_225_600, 1) + "\n").encode(), T0.replace(hour=13)
    )
    h.ingest(later)
    rows = h.query("SELECT source_uri, key_hash_hi IS NOT NULL AS hashed FROM events")
    assert rows == [{"source_uri": later.source_uri, "hashed": True}]
