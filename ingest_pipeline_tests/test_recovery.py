"""Issue #7: no file is ever lost. A file whose handling raises fails alone; transient S3 faults
(a fault-injecting proxy in front of the moto server) are retried with backoff until they heal or
the attempts run out; runs that failed, died or never started have their files taken again by the
sensor's reconciliation; parsed files are merged with no new file; stuck files are visible in the
asset check and `ingest-pipeline status`."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest

from ingest_pipeline import ledger, pipeline, warehouse
from ingest_pipeline.bronze import SourceFile
from ingest_pipeline.definitions import RESOURCES, defs
from ingest_pipeline.defs.ingestion.assets import all_feed_assets, feed_checks
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import LandingZone, LocalLanding, S3Landing
from ingest_pipeline.ledger import LedgerFile
from ingest_pipeline.pipeline import RetryPolicy
from ingest_pipeline.recovery import RunInfo, plan_recovery
from ingest_pipeline_tests.faulty_s3 import FaultyS3, faulty_s3

TRACK = FEEDS["track"]
BIN = Path(sys.executable).parent
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def track_file(tag: str, rows: int = 20) -> bytes:
    return b"".join(
        json.dumps(
            {
                "event_text": "opened",
                "event_timestamp": 1_767_225_600 + i,
                "contact_key": f"{tag}-{i}",
            }
        ).encode()
        + b"\n"
        for i in range(rows)
    )


# --- the reconciliation rules, state by state (no Dagster, no warehouse) -------------------------


def ledger_file(status: str, **kw: Any) -> LedgerFile:
    base: dict[str, Any] = dict(
        source_uri=f"s3://b/track/{status}-{kw.get('tag', 'x')}.jsonl",
        etag="e",
        tenant_id="default",
        feed="track",
        landing_key=f"track/{status}.jsonl",
        landed_at=NOW - timedelta(hours=1),
        size_bytes=10,
        status=status,
        attempts=0,
        requests=1,
        run_id=None,
        request_key="k1",
        queued_at=NOW - timedelta(minutes=10),
        started_at=None,
        retry_at=None,
        finished_at=None,
        error=None,
    )
    kw.pop("tag", None)
    return LedgerFile(**{**base, **kw})


def plan(files: list[LedgerFile], state: str = "ended", *, busy: bool = False, **kw: Any):
    args: dict[str, Any] = dict(
        feed="track",
        now=NOW,
        run_info=lambda f: RunInfo(state, "run abc (FAILURE)"),  # type: ignore[arg-type]
        feed_busy=busy,
        retry=RetryPolicy(max_attempts=3, delay_seconds=30),
        grace=timedelta(minutes=2),
        stuck_after=timedelta(minutes=30),
        max_files_per_run=100,
        salt="tick",
    )
    return plan_recovery(files, **{**args, **kw})


def test_a_queued_file_whose_run_ended_without_reading_it_is_requested_again() -> None:
    f = ledger_file("queued", run_id="r1")
    p = plan([f])
    assert [r.files for r in p.requests] == [[f]] and not p.requests[0].isolate
    assert not p.fail


def test_a_queued_file_of_a_live_run_is_left_alone_but_reported_when_stuck() -> None:
    fresh = ledger_file("queued", tag="a", run_id="r1")
    old = ledger_file("queued", tag="b", run_id="r1", queued_at=NOW - timedelta(hours=2))
    p = plan([fresh, old], state="active")
    assert not p.requests and not p.fail
    assert p.stuck == [old]


def test_a_request_that_never_became_a_run_is_requested_again_after_the_grace() -> None:
    young = ledger_file("queued", tag="a", queued_at=NOW - timedelta(seconds=30))
    lost = ledger_file("queued", tag="b", queued_at=NOW - timedelta(minutes=5))
    p = plan([young, lost], state="unknown")
    assert [r.files for r in p.requests] == [[lost]]


def test_requests_again_wait_longer_each_time() -> None:
    # Requested three times already; the runs keep ending before reaching it: wait 30 s * 2^2.
    f = ledger_file("queued", run_id="r3", requests=3, queued_at=NOW - timedelta(seconds=60))
    p = plan([f])
    assert not p.requests
    ((postponed, why, when),) = p.postpone
    assert postponed == f and when == f.queued_at + timedelta(seconds=120)
    assert "ended before reading the file" in why


def test_a_file_being_read_when_its_run_died_is_requested_alone_then_failed() -> None:
    suspect = ledger_file("parsing", run_id="r1", attempts=1, started_at=NOW - timedelta(minutes=5))
    p = plan([suspect])
    assert [r.files for r in p.requests] == [[suspect]] and p.requests[0].isolate
    spent = ledger_file("parsing", run_id="r1", attempts=3, started_at=NOW - timedelta(minutes=5))
    p = plan([spent])
    assert not p.requests
    ((failed, reason),) = p.fail
    assert failed == spent
    assert "ended without recording a result" in reason and "3 attempts" in reason


def test_a_retrying_file_is_requested_when_its_time_comes() -> None:
    due = ledger_file("retrying", tag="a", retry_at=NOW - timedelta(seconds=1))
    later = ledger_file("retrying", tag="b", retry_at=NOW + timedelta(seconds=10))
    p = plan([due, later], state="active")
    assert [r.files for r in p.requests] == [[due]]


def test_parsed_files_ask_for_a_merge_unless_the_feed_is_busy() -> None:
    parsed = ledger_file("parsed", started_at=NOW - timedelta(minutes=5))
    assert plan([parsed]).merge_needed
    assert not plan([parsed], busy=True).merge_needed


def test_request_keys_differ_per_tick_and_split_by_run_size() -> None:
    files = [ledger_file("retrying", tag=str(i), retry_at=NOW) for i in range(5)]
    a = plan(files, max_files_per_run=2)
    b = plan(files, max_files_per_run=2, salt="next tick")
    assert [len(r.files) for r in a.requests] == [2, 2, 1]
    assert {r.request_key for r in a.requests}.isdisjoint({r.request_key for r in b.requests})


# --- the pipeline: one file fails alone ----------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Any]:
    return {
        "landing": LocalLanding(tmp_path / "landing"),
        "lake": LocalLanding(tmp_path / "lake"),
        "wh": tmp_path / "warehouse.duckdb",
    }


def bronze(site: dict[str, Any], objects, **kw: Any) -> pipeline.BronzeOutcome:
    return pipeline.ingest_to_bronze(
        objects,
        TRACK,
        landing=site["landing"],
        lake=site["lake"],
        warehouse_path=site["wh"],
        tenant_id="default",
        run_id=kw.pop("run_id", "run-1"),
        **kw,
    )


def time_passes(wh: Path, seconds: float) -> None:
    """Move the ledger's clock marks `seconds` into the past, as if that much time had passed
    (the tests do not depend on how fast a loaded machine runs them)."""
    with warehouse.connect(wh) as con:
        for column in ("queued_at", "started_at", "retry_at", "finished_at"):
            con.execute(
                f"UPDATE ingested_files SET {column} = {column} - to_microseconds(?)",
                [int(seconds * 1e6)],
            )


def statuses(wh: Path) -> dict[str, tuple[str, str | None]]:
    with warehouse.connect(wh) as con:
        rows = con.execute("SELECT landing_key, status, error FROM ingested_files").fetchall()
    return {k: (s, e) for k, s, e in rows}


def test_an_exception_while_reading_one_file_fails_it_alone(site, monkeypatch) -> None:
    objects = [site["landing"].put(f"track/{t}.jsonl", track_file(t)) for t in "abc"]
    real_file, real_pass = pipeline.process_file, pipeline.process_pass

    def decode(key: str) -> None:
        if key == "track/b.jsonl":
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")

    def process_file(local, source, feed, work, policy=None, con=None, **kwargs):
        decode(source.key)
        return real_file(local, source, feed, work, policy=policy, con=con, **kwargs)

    def process_pass(inputs, feed, work, policy, con):
        # The three small files are read in one pass: b raises there, then alone.
        for _, source in inputs:
            decode(source.key)
        return real_pass(inputs, feed, work, policy, con)

    monkeypatch.setattr(pipeline, "process_file", process_file)
    monkeypatch.setattr(pipeline, "process_pass", process_pass)
    outcome = bronze(site, objects)
    pipeline.merge_pending(TRACK, lake=site["lake"], warehouse_path=site["wh"])
    got = statuses(site["wh"])
    assert got["track/a.jsonl"][0] == got["track/c.jsonl"][0] == "ingested"
    status, error = got["track/b.jsonl"]
    assert status == "failed"
    assert error.startswith(f"reading {objects[1].uri} failed: RecursionError: maximum recursion")
    assert "check its content" in error
    assert outcome.unreadable == {objects[1].uri: error}
    with warehouse.connect(site["wh"]) as con:
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(40,)]


def test_the_run_fails_when_its_machinery_fails_and_the_pass_goes_back_to_queued(
    site, monkeypatch
) -> None:
    objects = [site["landing"].put(f"track/{t}.jsonl", track_file(t)) for t in "ab"]

    def disk_full(key, body):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(site["lake"], "put", disk_full)
    with pytest.raises(OSError, match="No space left"):
        bronze(site, objects)
    with warehouse.connect(site["wh"]) as con:
        rows = con.execute("SELECT status, attempts, run_id FROM ingested_files").fetchall()
    # Known to the ledger, not suspects: the reconciliation requests them again without using
    # up an attempt.
    assert rows == [("queued", 0, "run-1")] * 2


def test_a_bronze_file_gone_from_the_lake_is_read_again_and_an_unmergeable_one_fails_alone(
    site,
) -> None:
    objects = [site["landing"].put(f"track/{t}.jsonl", track_file(t)) for t in "abc"]
    for i, one in enumerate(objects):  # runs of one file each: a bronze file each
        bronze(site, [one], run_id=f"run-1{i}")
    with warehouse.connect(site["wh"]) as con:
        uris = dict(con.execute("SELECT landing_key, bronze_uri FROM ingested_files").fetchall())
    (site["lake"].root / uris["track/a.jsonl"]).unlink()
    (site["lake"].root / uris["track/b.jsonl"]).write_bytes(b"PAR1 not parquet PAR1")
    outcome = pipeline.merge_pending(TRACK, lake=site["lake"], warehouse_path=site["wh"])
    assert [p.source_uri for p in outcome.files] == [objects[2].uri]
    got = statuses(site["wh"])
    assert got["track/c.jsonl"][0] == "ingested"
    for key, what in (("track/a.jsonl", "missing"), ("track/b.jsonl", "unreadable")):
        status, error = got[key]
        assert status == "retrying" and what in error and "read again" in error, got[key]
    # Read again (the reconciliation would request them), they merge.
    bronze(site, objects[:2], run_id="run-2")
    pipeline.merge_pending(TRACK, lake=site["lake"], warehouse_path=site["wh"])
    assert {s for s, _ in statuses(site["wh"]).values()} == {"ingested"}


def test_a_file_whose_rows_cannot_merge_fails_alone_with_its_rows_quarantined(site) -> None:
    objects = [site["landing"].put(f"track/{t}.jsonl", track_file(t)) for t in "ab"]
    bronze(site, objects)
    with warehouse.connect(site["wh"]) as con:
        uri = con.execute(
            "SELECT bronze_uri FROM ingested_files WHERE landing_key = 'track/b.jsonl'"
        ).fetchall()[0][0]
        # A bronze file whose properties are not JSON for b's rows (a and b were read in one
        # pass and share it): b's rows do not fit `events`, a's do.
        path = site["lake"].root / uri
        con.execute(
            f"COPY (SELECT * REPLACE (CASE WHEN source_uri = '{objects[1].uri}' THEN '{{not json'"
            f" ELSE properties::VARCHAR END AS properties) FROM read_parquet('{path}'))"
            f" TO '{path}.new' (FORMAT parquet)"
        )
    os.replace(f"{path}.new", path)
    outcome = pipeline.merge_pending(TRACK, lake=site["lake"], warehouse_path=site["wh"])
    got = statuses(site["wh"])
    assert got["track/a.jsonl"][0] == "ingested"
    status, error = got["track/b.jsonl"]
    assert status == "failed" and error.startswith("merging into the warehouse failed")
    assert list(outcome.failed) == [objects[1].uri]
    with warehouse.connect(site["wh"]) as con:
        row = con.execute(
            "SELECT rows_read, rows_loaded, rows_duplicate, rows_rejected FROM ingested_files "
            "WHERE landing_key = 'track/b.jsonl'"
        ).fetchall()[0]
        quarantined = con.execute(
            "SELECT count(*), min(reason) FROM rejected_rows WHERE source_uri = ?",
            [objects[1].uri],
        ).fetchall()[0]
    assert row == (20, 0, 0, 20)
    assert quarantined == (20, error)


# --- transient S3 faults, through a fault-injecting proxy in front of the moto server ---------


@pytest.fixture
def proxied(s3_bucket, moto_endpoint, tmp_path, monkeypatch) -> Iterator[dict[str, Any]]:
    _client, bucket = s3_bucket
    with faulty_s3(moto_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("INGEST_LANDING_URL", f"s3://{bucket}/drop")
        monkeypatch.setenv("INGEST_LAKE_URL", str(tmp_path / "lake"))
        monkeypatch.setenv("INGEST_WAREHOUSE_PATH", str(tmp_path / "warehouse.duckdb"))
        monkeypatch.setenv("INGEST_TENANT", "default")
        monkeypatch.setenv("INGEST_RETRY_DELAY_SECONDS", "1")
        monkeypatch.setenv("INGEST_MAX_ATTEMPTS", "3")
        monkeypatch.setenv("INGEST_REQUEST_GRACE_SECONDS", "1")
        client = boto3.client("s3", endpoint_url=proxy.endpoint)
        landing = S3Landing(f"s3://{bucket}/drop", client=client)
        yield {"proxy": proxy, "landing": landing, "wh": tmp_path / "warehouse.duckdb"}


class Sensor:
    """The track sensor ticked by hand against a test instance; its requests executed."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.cursor: str | None = None
        self.sensor = defs.get_sensor_def("track_landing_sensor")
        self.job = defs.resolve_job_def("ingest_track")

    def tick(self) -> list[dg.RunRequest]:
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=RESOURCES, definitions=defs
        ) as context:
            result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def run(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        return self.job.execute_in_process(
            run_config=request.run_config or {},
            partition_key=request.partition_key,
            instance=self.instance,
            tags={**request.tags, "dagster/run_key": request.run_key or ""},
            asset_selection=request.asset_selection,
            raise_on_error=False,
        )

    def tick_and_run(self) -> int:
        requests = self.tick()
        for request in requests:
            assert self.run(request).success
        return len(requests)


FAULTS = {
    "HTTP 500": lambda proxy, key: proxy.fail(key, 500, "InternalError"),
    "HTTP 503 throttling": lambda proxy, key: proxy.throttle(key),
    "connection reset": lambda proxy, key: proxy.reset(key),
    "reset mid-body": lambda proxy, key: proxy.reset(key, after_fraction=0.3),
    "truncated body": lambda proxy, key: proxy.truncate(key, 0.5),
    "checksum mismatch": lambda proxy, key: proxy.corrupt_checksum(key),
}
EXPECTED_ERROR = {
    "HTTP 500": "HTTP 500 InternalError",
    "HTTP 503 throttling": "HTTP 503 SlowDown",
    "connection reset": "ConnectionClosedError",
    "reset mid-body": "ResponseStreamingError",
    "truncated body": "IncompleteReadError",
    "checksum mismatch": "FlexibleChecksumError",
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_file_s3_fails_to_deliver_is_retried_and_ingested_once_the_fault_is_lifted(
    proxied: dict[str, Any], fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_RETRY_DELAY_SECONDS", "600")
    landing: LandingZone = proxied["landing"]
    proxy: FaultyS3 = proxied["proxy"]
    for tag in "abcd":
        landing.put(f"track/{tag}.jsonl", track_file(tag, 200))
    FAULTS[fault](proxy, "track/b.jsonl")
    with dg.instance_for_test() as instance:
        sensor = Sensor(instance)
        assert sensor.tick_and_run() == 1
        got = statuses(proxied["wh"])
        assert {k: s for k, (s, _) in got.items()} == {
            "track/a.jsonl": "ingested",
            "track/b.jsonl": "retrying",
            "track/c.jsonl": "ingested",
            "track/d.jsonl": "ingested",
        }
        error = got["track/b.jsonl"][1]
        assert f"downloading s3://{landing.bucket}/drop/track/b.jsonl failed" in error
        assert EXPECTED_ERROR[fault] in error and "attempt 1 of 3" in error
        # Not yet due (in 10 min): nothing is requested. Once it is, it is.
        assert sensor.tick() == []
        proxy.clear()
        time_passes(proxied["wh"], 601)
        fetched = proxy.count("drop/track/b.jsonl")
        assert sensor.tick_and_run() == 1
        assert proxy.count("drop/track/b.jsonl") > fetched
    got = statuses(proxied["wh"])
    assert {s for s, _ in got.values()} == {"ingested"}
    with warehouse.connect(proxied["wh"]) as con:
        assert con.execute(
            "SELECT count(*), count(DISTINCT source_uri) FROM events"
        ).fetchall() == [(800, 4)]
        assert con.execute(
            "SELECT attempts FROM ingested_files WHERE landing_key = 'track/b.jsonl'"
        ).fetchall() == [(2,)]


def test_a_file_s3_never_delivers_ends_failed_after_its_retries(proxied: dict[str, Any]) -> None:
    landing: LandingZone = proxied["landing"]
    proxy: FaultyS3 = proxied["proxy"]
    for tag in "ab":
        landing.put(f"track/{tag}.jsonl", track_file(tag))
    proxy.fail("track/b.jsonl", 503, "ServiceUnavailable")
    with dg.instance_for_test() as instance:
        sensor = Sensor(instance)
        runs = 0
        deadline = time.monotonic() + 60
        while statuses(proxied["wh"]).get("track/b.jsonl", ("",))[0] != "failed":
            assert time.monotonic() < deadline, statuses(proxied["wh"])
            runs += sensor.tick_and_run()
            time.sleep(0.5)
        # 3 attempts (1 s, then 2 s apart), then failed for good: no more requests.
        assert runs == 3
        time.sleep(4.5)
        assert sensor.tick() == []
    status, error = statuses(proxied["wh"])["track/b.jsonl"]
    assert status == "failed"
    assert "HTTP 503 ServiceUnavailable" in error and "gave up after 3 attempts" in error
    assert "re-ingest the file" in error
    assert statuses(proxied["wh"])["track/a.jsonl"][0] == "ingested"
    assert proxy.count("drop/track/b.jsonl") >= 3


# --- runs that fail, die or never start, through the sensor's reconciliation -------------------


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("INGEST_LANDING_URL", str(tmp_path / "landing"))
    monkeypatch.setenv("INGEST_LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("INGEST_WAREHOUSE_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("INGEST_TENANT", "default")
    monkeypatch.setenv("INGEST_RETRY_DELAY_SECONDS", "60")
    monkeypatch.setenv("INGEST_REQUEST_GRACE_SECONDS", "120")
    return {
        "landing": LocalLanding(tmp_path / "landing"),
        "lake": LocalLanding(tmp_path / "lake"),
        "wh": tmp_path / "warehouse.duckdb",
    }


def test_the_ledger_knows_a_file_from_its_request_and_a_lost_request_is_made_again(
    local_env,
) -> None:
    local_env["landing"].put("track/a.jsonl", track_file("a"))
    with dg.instance_for_test() as instance:
        sensor = Sensor(instance)
        (request,) = sensor.tick()  # requested, but the run is never launched
        ((status, _),) = statuses(local_env["wh"]).values()
        assert status == "queued"
        with warehouse.connect(local_env["wh"]) as con:
            assert con.execute("SELECT request_key FROM ingested_files").fetchall() == [
                (request.run_key,)
            ]
        assert sensor.tick() == []  # within the grace period
        time_passes(local_env["wh"], 121)
        (again,) = sensor.tick()
        assert again.run_key != request.run_key
        # the same file, under the new request
        config = again.run_config["ops"]["track_bronze"]["config"]
        assert config["request"] == again.run_key
        with warehouse.connect(local_env["wh"]) as con:
            assert [f.landing_key for f in ledger.requested_files(con, again.run_key)] == [
                "track/a.jsonl"
            ]
        assert sensor.run(again).success
    assert statuses(local_env["wh"])["track/a.jsonl"][0] == "ingested"


def test_files_of_a_failed_run_are_taken_again(local_env, monkeypatch) -> None:
    for tag in "ab":
        local_env["landing"].put(f"track/{tag}.jsonl", track_file(tag))

    def lake_down(key, body):
        raise OSError(errno.EIO, "lake unreachable")

    with dg.instance_for_test() as instance:
        sensor = Sensor(instance)
        (request,) = sensor.tick()
        with monkeypatch.context() as m:
            m.setattr(LocalLanding, "put", lambda self, key, body: lake_down(key, body))
            assert not sensor.run(request).success
        assert {s for s, _ in statuses(local_env["wh"]).values()} == {"queued"}
        assert sensor.tick() == []  # the run ended a moment ago: wait (60 s) first
        time_passes(local_env["wh"], 61)
        assert sensor.tick_and_run() == 1
    assert {s for s, _ in statuses(local_env["wh"]).values()} == {"ingested"}


def test_a_run_that_died_while_reading_has_its_pass_read_again_file_by_file(local_env) -> None:
    objects = [local_env["landing"].put(f"track/{t}.jsonl", track_file(t)) for t in "abc"]
    sources = [SourceFile.of(o, "default") for o in objects]
    with warehouse.connect(local_env["wh"]) as con, warehouse.transaction(con):
        ledger.claim(con, sources, "track", run_id="dead-run", force=False, at=pipeline.now())
        ledger.mark_parsing(con, sources, run_id="dead-run", at=pipeline.now())
    with dg.instance_for_test() as instance:
        sensor = Sensor(instance)
        assert sensor.tick() == []  # the dead run's id is unknown: within the grace period
        time_passes(local_env["wh"], 121)
        (request,) = sensor.tick()
        config = request.run_config["ops"]["track_bronze"]["config"]
        assert config["isolate"] is True
        with warehouse.connect(local_env["wh"]) as con:
            requested = ledger.requested_files(con, config["request"])
        assert sorted(f.landing_key for f in requested) == [o.key for o in objects]
        assert request.tags["ingest/why"] == "isolated retry"
        assert sensor.run(request).success
    assert {s for s, _ in statuses(local_env["wh"]).values()} == {"ingested"}


def test_parsed_files_are_merged_when_no_new_file_arrives(local_env) -> None:
    objects = [local_env["landing"].put(f"track/{t}.jsonl", track_file(t)) for t in "ab"]
    with dg.instance_for_test() as instance:
        sensor = Sensor(instance)
        sensor.tick()  # the files are requested; the run parses them, the merge never runs
        bronze(local_env, objects)
        assert {s for s, _ in statuses(local_env["wh"]).values()} == {"parsed"}
        assert sensor.tick() == []  # a merge may still be on its way
        time_passes(local_env["wh"], 121)
        (merge,) = sensor.tick()
        assert merge.asset_selection == [dg.AssetKey("track_warehouse")]
        assert sensor.run(merge).success
    assert {s for s, _ in statuses(local_env["wh"]).values()} == {"ingested"}


# --- visible when stuck --------------------------------------------------------------------------


def test_stuck_and_failed_files_show_in_the_asset_check_and_the_status_command(
    local_env, monkeypatch
) -> None:
    objects = [local_env["landing"].put(f"track/{t}.jsonl", track_file(t)) for t in "ab"]
    objects.append(local_env["landing"].put("track/c.txt", b"not a feed file"))
    sources = [SourceFile.of(o, "default") for o in objects]
    long_ago = pipeline.now() - timedelta(hours=2)
    with warehouse.connect(local_env["wh"]) as con, warehouse.transaction(con):
        ledger.queue(con, sources[:1], "track", at=long_ago, request_key="old-request")
    bronze(local_env, objects[1:])
    pipeline.merge_pending(TRACK, lake=local_env["lake"], warehouse_path=local_env["wh"])
    monkeypatch.setenv("INGEST_STUCK_AFTER_SECONDS", "3600")

    check = dg.AssetCheckKey(dg.AssetKey("track_bronze"), "files_reach_a_final_status")

    def run_check() -> dg.AssetCheckEvaluation:
        with dg.instance_for_test() as instance:
            outcome = dg.materialize(
                [*all_feed_assets, *feed_checks],
                selection=dg.AssetSelection.checks(check),
                resources=RESOURCES,
                instance=instance,
            )
        (evaluation,) = outcome.get_asset_check_evaluations()
        return evaluation

    evaluation = run_check()
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["files_stuck"].value == 1
    assert objects[0].uri in evaluation.metadata["stuck_files"].value
    failed_md = evaluation.metadata["failed_files_recent"].value
    assert objects[2].uri in failed_md and "unsupported file extension" in failed_md

    env = dict(os.environ)
    cli = subprocess.run(
        [str(BIN / "ingest-pipeline"), "status"], capture_output=True, text=True, env=env
    )
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "STUCK queued   track     for" in cli.stdout
    assert objects[0].uri in cli.stdout and objects[2].uri in cli.stdout
    assert "unsupported file extension" in cli.stdout
    # Once the stuck file is final, the check passes and the command exits 0.
    bronze(local_env, objects[:1])
    pipeline.merge_pending(TRACK, lake=local_env["lake"], warehouse_path=local_env["wh"])
    assert run_check().passed
    piped = subprocess.run(
        f"{BIN / 'ingest-pipeline'} status | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
    )
    assert piped.stdout.startswith("warehouse:") and "Traceback" not in piped.stderr
