"""Which landed files a sensor tick should request, and the cursor that remembers the answer.

Nothing here knows about Dagster: the sensor lists the landing zone, calls `plan_tick`, turns each
`FileBatch` into a run request (partition key, run key, run config from `to_config()`) and stores
`TickPlan.cursor`.

Why not the obvious cursor
--------------------------
* "Newest LastModified seen so far" (a high-water mark compared with ``>``) loses files. S3's
  LastModified has one-second precision, so several objects share a second; if a tick runs between
  two uploads in the same second, the second upload is never strictly newer than the mark. And
  LastModified is when an upload *started* (for multipart uploads, when it was initiated): a large
  file can appear in listings well after smaller files with later timestamps.
* "Every key ever seen" never loses a file but grows forever, and a key alone cannot tell a
  re-upload with new content (a new batch, per the spec) from the same object.

What we do instead
------------------
The cursor is ``{"v": 1, "hwm": <epoch of the newest LastModified requested>, "seen":
{<fingerprint>: <epoch LastModified>}}`` where a fingerprint is a short hash of (key, ETag).

* Candidates are the objects with ``LastModified >= hwm - lookback`` whose fingerprint is not in
  ``seen``. Same-second ties and late-appearing uploads, up to `lookback` seconds older than the
  mark, are therefore still found, and each exactly once because `seen` remembers them.
* `seen` keeps only fingerprints with ``LastModified >= hwm - lookback``: exactly the objects that
  could still be candidates. Older ones can never be candidates again, so forgetting them is safe,
  and the cursor is bounded by the number of files landed within one lookback window, not by
  history.
* A re-upload with new content has a new ETag, hence a new fingerprint, hence a new batch. A
  re-upload with identical content keeps its ETag and is not requested again while its
  fingerprint is remembered.
* At most ``max_files_per_run * max_runs_per_tick`` files are taken per tick, oldest first; the
  rest are at least as new as the mark and are taken by later ticks.

Limits, stated: an object that first appears in a listing more than `lookback` seconds older than
the mark is never requested (choose a lookback longer than the slowest upload), and a re-upload of
identical content after its fingerprint was forgotten is requested again; the ingestion ledger,
keyed on (uri, ETag), makes that second request a no-op.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from ingest_pipeline.landing import LandedObject
from ingest_pipeline.settings import partitions_start_date

log = logging.getLogger(__name__)

CURSOR_VERSION = 1


def fingerprint(key: str, etag: str) -> str:
    """Short, stable identity of one version of one object (64 bits: collisions are negligible
    among the few thousand files of one lookback window)."""
    return hashlib.sha1(f"{key}\0{etag}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FileBatch:
    """The files one run ingests: all landed on the same UTC date (its partition)."""

    partition_key: str  # 'YYYY-MM-DD', UTC date of the files' LastModified
    files: list[LandedObject]
    run_key: str  # deterministic: the same batch requested twice is deduplicated by Dagster

    def to_config(self) -> list[dict[str, Any]]:
        """JSON-serialisable description of the files, for run config."""
        return [obj.to_dict() for obj in self.files]

    @staticmethod
    def files_from_config(config: Iterable[dict[str, Any]]) -> list[LandedObject]:
        """Inverse of `to_config`: the LandedObjects a run was asked to ingest."""
        return [LandedObject.from_dict(item) for item in config]


def files_from_config(config: Iterable[dict[str, Any]]) -> list[LandedObject]:
    """Inverse of `FileBatch.to_config` (module-level alias for use in assets)."""
    return FileBatch.files_from_config(config)


@dataclass(frozen=True)
class TickPlan:
    batches: list[FileBatch]
    cursor: str
    pending: int = 0  # candidates left for later ticks because of the per-tick limit
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def files(self) -> list[LandedObject]:
        return [obj for batch in self.batches for obj in batch.files]


@dataclass
class _Cursor:
    hwm: float | None
    seen: dict[str, float]

    @classmethod
    def parse(cls, text: str | None) -> _Cursor:
        if not text:
            return cls(hwm=None, seen={})
        try:
            data = json.loads(text)
            if data.get("v") != CURSOR_VERSION:
                raise ValueError(f"unknown cursor version {data.get('v')!r}")
            hwm = data["hwm"]
            seen = {str(fp): float(ts) for fp, ts in data["seen"].items()}
            return cls(hwm=None if hwm is None else float(hwm), seen=seen)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Only a bug or a hand-edited cursor gets here. Starting over re-requests what is in
            # the landing zone; the ledger skips files already ingested, so nothing is doubled.
            log.error("ignoring unreadable sensor cursor (%s): starting from scratch", exc)
            return cls(hwm=None, seen={})

    def dump(self) -> str:
        # Sorted keys: the same state always serialises to the same string.
        return json.dumps(
            {"v": CURSOR_VERSION, "hwm": self.hwm, "seen": self.seen},
            sort_keys=True,
            separators=(",", ":"),
        )


def _epoch(obj: LandedObject) -> float:
    return obj.last_modified.timestamp()


def partition_key_for(landed_at: datetime | date | str) -> str:
    """The landing-date partition a file belongs to: its landing date (UTC), or the first
    partition (settings.partitions_start_date) for a file that landed before it."""
    if isinstance(landed_at, str):
        day = date.fromisoformat(landed_at[:10])
    elif isinstance(landed_at, datetime):
        day = (landed_at.astimezone(UTC) if landed_at.tzinfo else landed_at).date()
    else:
        day = landed_at
    return max(day, partitions_start_date()).isoformat()


def _partition_key(obj: LandedObject) -> str:
    return partition_key_for(obj.last_modified)


def _run_key(partition_key: str, files: list[LandedObject]) -> str:
    digest = hashlib.sha1()
    for obj in sorted(files, key=lambda o: (o.key, o.etag)):
        digest.update(f"{obj.key}\0{obj.etag}\n".encode())
    return f"{partition_key}-{digest.hexdigest()[:20]}"


def plan_tick(
    objects: Iterable[LandedObject],
    cursor: str | None,
    *,
    max_files_per_run: int,
    max_runs_per_tick: int,
    lookback_seconds: int,
) -> TickPlan:
    """Decide which of the listed `objects` to request now, and the cursor for the next tick.

    `objects` is a full listing of the watched prefix (any order); it is consumed once, and memory
    stays bounded by the per-tick limit, not by the size of the listing.
    """
    if max_files_per_run < 1 or max_runs_per_tick < 1:
        raise ValueError("max_files_per_run and max_runs_per_tick must be at least 1")
    if lookback_seconds < 0:
        raise ValueError("lookback_seconds must not be negative")

    state = _Cursor.parse(cursor)
    floor = None if state.hwm is None else state.hwm - lookback_seconds
    limit = max_files_per_run * max_runs_per_tick
    listed = 0

    def candidates() -> Iterable[tuple[float, str, LandedObject]]:
        nonlocal listed
        for obj in objects:
            listed += 1
            ts = _epoch(obj)
            if floor is not None and ts < floor:
                continue
            fp = fingerprint(obj.key, obj.etag)
            if fp in state.seen:
                # Same content re-uploaded later: remember the newest time so the fingerprint is
                # kept as long as this upload can still be a candidate.
                if ts > state.seen[fp]:
                    state.seen[fp] = ts
                continue
            yield ts, obj.key, obj

    # Oldest first, ties by key; only the first `limit` are kept in memory (plus a count).
    all_candidates = 0

    def counted() -> Iterable[tuple[float, str, LandedObject]]:
        nonlocal all_candidates
        for item in candidates():
            all_candidates += 1
            yield item

    chosen = heapq.nsmallest(limit, counted(), key=lambda item: (item[0], item[1]))

    # Consecutive runs of the same landing date, each at most max_files_per_run files, and no more
    # than max_runs_per_tick runs: what does not fit waits for the next tick. We take a prefix of
    # the sorted candidates, so everything left is at least as new as the new mark.
    groups: list[list[LandedObject]] = []
    for _, _, obj in chosen:
        if (
            not groups
            or len(groups[-1]) >= max_files_per_run
            or _partition_key(groups[-1][0]) != _partition_key(obj)
        ):
            if len(groups) == max_runs_per_tick:
                break
            groups.append([])
        groups[-1].append(obj)

    batches = [
        FileBatch(
            partition_key=_partition_key(files[0]),
            files=files,
            run_key=_run_key(_partition_key(files[0]), files),
        )
        for files in groups
    ]
    taken = [obj for files in groups for obj in files]

    if taken:
        newest = max(_epoch(obj) for obj in taken)
        state.hwm = newest if state.hwm is None else max(state.hwm, newest)
    for obj in taken:
        state.seen[fingerprint(obj.key, obj.etag)] = _epoch(obj)
    if state.hwm is not None:
        # Forget what can no longer be a candidate (older than the new window).
        new_floor = state.hwm - lookback_seconds
        state.seen = {fp: ts for fp, ts in state.seen.items() if ts >= new_floor}

    return TickPlan(
        batches=batches,
        cursor=state.dump(),
        pending=all_candidates - len(taken),
        stats={"listed": listed, "candidates": all_candidates, "requested": len(taken)},
    )
