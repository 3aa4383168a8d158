"""The sensor's discovery cursor: every landed file requested exactly once, with a bounded cursor.

Pure tests build LandedObject listings directly; the paging and same-second tests list a real
folder and a real S3 API (moto's server on loopback).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ingest_pipeline.discovery import FileBatch, TickPlan, files_from_config, plan_tick
from ingest_pipeline.landing import LandedObject, LandingZone, S3Landing

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LIMITS = {"max_files_per_run": 200, "max_runs_per_tick": 3, "lookback_seconds": 3600}


def obj(key: str, at: datetime | float, etag: str | None = None) -> LandedObject:
    when = at if isinstance(at, datetime) else T0 + timedelta(seconds=at)
    return LandedObject(
        key=key,
        etag=etag or f"etag-{key}",
        size=10,
        last_modified=when,
        uri=f"s3://bucket/landing/{key}",
    )


def tick(listing: Iterable[LandedObject], cursor: str | None, **overrides: int) -> TickPlan:
    limits = {**LIMITS, **overrides}
    plan = plan_tick(list(listing), cursor, **limits)
    assert len(plan.batches) <= limits["max_runs_per_tick"]
    for batch in plan.batches:
        assert 1 <= len(batch.files) <= limits["max_files_per_run"]
        assert {o.last_modified.strftime("%Y-%m-%d") for o in batch.files} == {batch.partition_key}
    return plan


def drain(
    list_objects: Callable[[], Iterable[LandedObject]], cursor: str | None, **overrides: int
) -> tuple[list[LandedObject], str, int]:
    """Tick until a tick requests nothing: (everything requested, final cursor, ticks that did)."""
    requested: list[LandedObject] = []
    ticks = 0
    while True:
        plan = tick(list_objects(), cursor, **overrides)
        cursor = plan.cursor
        if not plan.batches:
            return requested, cursor, ticks
        ticks += 1
        assert ticks < 1000, "discovery does not converge"
        requested.extend(plan.files)


def assert_exactly_once(requested: list[LandedObject], expected: Iterable[LandedObject]) -> None:
    counts = Counter((o.key, o.etag) for o in requested)
    assert [k for k, n in counts.items() if n > 1] == []
    assert set(counts) == {(o.key, o.etag) for o in expected}


# --- pure plan_tick ---------------------------------------------------------------------------------


def test_first_tick_requests_everything_oldest_first_then_nothing() -> None:
    listing = [obj("track/b.csv", 5), obj("track/a.csv", 5), obj("identify/c.json", 1)]
    first = tick(listing, None)
    assert [o.key for o in first.files] == ["identify/c.json", "track/a.csv", "track/b.csv"]
    assert len(first.batches) == 1 and first.batches[0].partition_key == "2026-03-01"
    assert first.pending == 0

    second = tick(listing, first.cursor)
    assert second.batches == [] and second.pending == 0
    assert json.loads(second.cursor) == json.loads(first.cursor)  # nothing new, nothing changes


def test_batches_split_by_landing_date_and_size() -> None:
    day1 = [obj(f"track/d1-{i:02}.csv", 60 + i) for i in range(5)]
    day2 = [obj(f"track/d2-{i:02}.csv", 86400 + i) for i in range(2)]
    plan = tick(day2 + day1, None, max_files_per_run=2, max_runs_per_tick=10)
    assert [(b.partition_key, len(b.files)) for b in plan.batches] == [
        ("2026-03-01", 2),
        ("2026-03-01", 2),
        ("2026-03-01", 1),
        ("2026-03-02", 2),
    ]
    assert len({b.run_key for b in plan.batches}) == 4


def test_run_keys_are_deterministic_and_change_with_content() -> None:
    listing = [obj("track/a.csv", 1), obj("track/b.csv", 2)]
    (batch,) = tick(listing, None).batches
    (again,) = tick(list(reversed(listing)), None).batches
    assert again.run_key == batch.run_key  # a re-requested batch is deduplicated by Dagster
    (changed,) = tick([listing[0], obj("track/b.csv", 2, etag="new")], None).batches
    assert changed.run_key != batch.run_key


def test_per_tick_limit_defers_the_rest_including_ties_at_the_cut() -> None:
    # 25 files, many sharing one second across the cut between ticks.
    listing = [obj(f"track/{i:02}.csv", 0 if i < 3 else 7) for i in range(25)]
    first = tick(listing, None, max_files_per_run=4, max_runs_per_tick=2)
    assert len(first.files) == 8 and first.pending == 17
    requested, _, ticks = drain(
        lambda: listing, first.cursor, max_files_per_run=4, max_runs_per_tick=2
    )
    assert ticks == 3
    assert_exactly_once(first.files + requested, listing)


def test_runs_per_tick_are_bounded_even_when_dates_split_batches() -> None:
    listing = [obj(f"track/{i:03}.csv", i * 86400) for i in range(10)]  # one file per day
    plan = tick(listing, None, max_files_per_run=5, max_runs_per_tick=3)
    assert [len(b.files) for b in plan.batches] == [1, 1, 1]
    assert plan.pending == 7
    requested, _, _ = drain(lambda: listing, plan.cursor, max_files_per_run=5, max_runs_per_tick=3)
    assert_exactly_once(plan.files + requested, listing)


def test_upload_in_the_same_second_after_a_tick_is_requested() -> None:
    first = tick([obj("track/a.csv", 10)], None)
    # Same LastModified second as the newest object already requested: a ">" cursor misses it.
    second = tick([obj("track/a.csv", 10), obj("track/b.csv", 10)], first.cursor)
    assert [o.key for o in second.files] == ["track/b.csv"]


def test_late_appearing_object_within_lookback_is_requested() -> None:
    first = tick([obj("track/new.csv", 10_000)], None)
    # A slow (multipart) upload shows up later with its older start time as LastModified.
    late = [obj("track/new.csv", 10_000), obj("track/slow.csv", 10_000 - 3000)]
    second = tick(late, first.cursor)
    assert [o.key for o in second.files] == ["track/slow.csv"]
    # Beyond the lookback it is out of the window: the documented limit (choose lookback wisely).
    too_late = late + [obj("track/slower.csv", 10_000 - 3601)]
    assert tick(too_late, second.cursor).batches == []


def test_reupload_with_new_content_is_a_new_batch_same_content_is_not() -> None:
    first = tick([obj("track/a.csv", 10, etag="v1")], None)
    same = tick([obj("track/a.csv", 20, etag="v1")], first.cursor)  # re-uploaded, same ETag
    assert same.batches == []
    changed = tick([obj("track/a.csv", 30, etag="v2")], same.cursor)
    assert [(o.key, o.etag) for o in changed.files] == [("track/a.csv", "v2")]
    assert changed.batches[0].run_key != first.batches[0].run_key


def test_identical_reupload_keeps_its_fingerprint_while_it_can_be_a_candidate() -> None:
    first = tick([obj("track/a.csv", 0, etag="v1")], None)
    # Same content re-uploaded an hour and a half later, while other files keep landing.
    reuploaded = obj("track/a.csv", 5400, etag="v1")
    second = tick([reuploaded, obj("track/b.csv", 5000)], first.cursor)
    assert [o.key for o in second.files] == ["track/b.csv"]
    assert tick([reuploaded, obj("track/b.csv", 5000)], second.cursor).batches == []


def test_cursor_stays_bounded_by_the_lookback_window() -> None:
    # 10,000 files over five days, one every 43.2 s.
    listing = [obj(f"track/{i:05}.csv", i * 43.2) for i in range(10_000)]
    requested, cursor, _ = drain(lambda: listing, None, max_files_per_run=500, max_runs_per_tick=4)
    assert_exactly_once(requested, listing)

    state = json.loads(cursor)
    hwm = state["hwm"]
    assert hwm == listing[-1].last_modified.timestamp()
    in_window = [o for o in listing if o.last_modified.timestamp() >= hwm - 3600]
    assert len(state["seen"]) == len(in_window) == 84
    assert len(cursor) < 4000  # vs ~400 kB for a set of every key


def test_unreadable_cursor_starts_over_instead_of_crashing() -> None:
    listing = [obj("track/a.csv", 1)]
    for bad in ["not json", "[]", '{"v": 99}', '{"v": 1, "hwm": "x", "seen": {}}', '{"v": 1}']:
        plan = tick(listing, bad)
        assert [o.key for o in plan.files] == ["track/a.csv"]
        assert json.loads(plan.cursor)["v"] == 1


def test_batch_config_is_json_and_rebuilds_the_objects() -> None:
    listing = [obj("track/a.csv", 1), obj("track/b.csv", 2)]
    (batch,) = tick(listing, None).batches
    config = json.loads(json.dumps(batch.to_config()))
    assert config[0] == {
        "key": "track/a.csv",
        "etag": "etag-track/a.csv",
        "size": 10,
        "last_modified": "2026-03-01T12:00:01+00:00",
        "uri": "s3://bucket/landing/track/a.csv",
    }
    assert files_from_config(config) == batch.files == FileBatch.files_from_config(config)


# --- against a real folder and a real S3 API --------------------------------------------------


def drop(landing: LandingZone, key: str, body: bytes) -> None:
    """Upload as a client would; on S3 one PutObject (no HEAD), to keep bursts within a second."""
    if isinstance(landing, S3Landing):
        landing.client.put_object(Bucket=landing.bucket, Key=f"landing/{key}", Body=body)
    else:
        landing.put(key, body)


def test_1500_keys_are_listed_and_requested_exactly_once_across_ticks(
    landing: LandingZone, request: pytest.FixtureRequest
) -> None:
    on_s3 = isinstance(landing, S3Landing)
    # 1,500 PutObject calls take 15-25 s here: seed the server's store directly instead. Listing,
    # paging and everything after still go through boto3 and the server.
    seed = request.getfixturevalue("s3_seed") if on_s3 else None

    def put(key: str, body: bytes) -> None:
        if seed is not None:
            seed(f"landing/{key}", body)
        else:
            landing.put(key, body)

    for i in range(1500):
        put(f"track/{i:04}.jsonl", b"{}\n")
    put("identify/other.json", b"{}\n")  # another feed's prefix is not listed

    listed = list(landing.list("track/"))
    assert len(listed) == 1500  # S3 returns at most 1,000 keys per ListObjectsV2 page
    assert len({o.key for o in listed}) == 1500

    requested, cursor, ticks = drain(lambda: landing.list("track/"), None)
    assert ticks == 3  # 600 + 600 + 300 with 200 files per run and 3 runs per tick
    assert_exactly_once(requested, listed)
    assert tick(landing.list("track/"), cursor).batches == []


def seconds_precision(listing: Iterable[LandedObject]) -> list[LandedObject]:
    # S3's LastModified has one-second precision; give the folder the same so ties are real.
    return [replace(o, last_modified=o.last_modified.replace(microsecond=0)) for o in listing]


def in_one_second(listing: Iterable[LandedObject], second: datetime) -> list[LandedObject]:
    # Pin every LastModified to one second: on a loaded machine 50 real uploads may straddle a
    # second boundary, and the tie is what this test is about.
    return [replace(o, last_modified=second) for o in listing]


def test_50_uploads_in_one_second_some_after_a_tick_are_requested_exactly_once(
    landing: LandingZone,
) -> None:
    prefix = "burst/"
    for i in range(30):
        drop(landing, f"{prefix}{i:02}.csv", b"contact_key\nc\n")
    listed = list(landing.list(prefix))
    second = max(o.last_modified for o in listed).replace(microsecond=0)
    first = tick(in_one_second(listed, second), None)
    for i in range(30, 50):  # uploaded after the tick, within the same second
        drop(landing, f"{prefix}{i:02}.csv", b"contact_key\nc\n")
    listing = in_one_second(landing.list(prefix), second)

    assert len(listing) == 50
    assert [o.key for o in first.files] == [f"{prefix}{i:02}.csv" for i in range(30)]
    later = tick(listing, first.cursor)
    assert [o.key for o in later.files] == [f"{prefix}{i:02}.csv" for i in range(30, 50)]
    assert tick(listing, later.cursor).batches == []  # a tick with nothing new requests nothing
    assert_exactly_once(first.files + later.files, listing)


def test_reupload_at_the_same_key(landing: LandingZone) -> None:
    landing.put("track/a.csv", b"contact_key\nc1\n")
    first = tick(landing.list("track/"), None)
    assert [o.key for o in first.files] == ["track/a.csv"]

    landing.put("track/a.csv", b"contact_key\nc1\nc2\n")  # new content: a new batch
    second = tick(landing.list("track/"), first.cursor)
    assert [o.key for o in second.files] == ["track/a.csv"]
    assert second.files[0].etag != first.files[0].etag
    assert second.batches[0].run_key != first.batches[0].run_key

    if isinstance(landing, S3Landing):
        # Same bytes again: S3 gives the same ETag, so it is the same object as far as we care.
        # (A local folder's ETag is size + mtime, so there any rewrite is a new version.)
        landing.put("track/a.csv", b"contact_key\nc1\nc2\n")
        assert tick(landing.list("track/"), second.cursor).batches == []
