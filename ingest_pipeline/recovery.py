"""The reconciliation: which files that are not final must be taken again, and when.

Nothing here knows Dagster. The feed's sensor calls `plan_recovery` on every tick with the
feed's active ledger rows and a function telling whether the run a file belongs to is still
alive; it applies the plan to the ledger and requests the runs. The rules (docs/ARCHITECTURE.md
"File states" lists them state by state):

* `retrying` whose `retry_at` has come: requested again.
* `queued` whose run ended (succeeded, failed, was cancelled) without reading it, or whose
  request never became a run within the grace period: requested again, after a wait that
  doubles with each request (it is not the file's fault, so no attempt is used up).
* `parsing` whose run ended or vanished: the run died while reading it (killed, out of memory,
  machine lost). Each file of that pass is a suspect: requested again on its own pass
  (`isolate`), so a file that kills its run kills it alone; once its attempts are used up it
  is `failed` with the reason.
* `parsed`: merged by the next merge of its feed; if no run of the feed is under way, a merge
  is requested.
* Anything active for longer than `stuck_after` is reported as stuck (asset check, `status`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from ingest_pipeline.ledger import LedgerFile
from ingest_pipeline.pipeline import RetryPolicy

RunState = Literal["active", "ended", "unknown"]


@dataclass(frozen=True)
class RunInfo:
    state: RunState
    description: str = ""  # e.g. "run 1a2b3c FAILURE"


@dataclass(frozen=True)
class Rerequest:
    """Files requested again together: all of one tenant (a run reads one tenant's files)."""

    files: list[LedgerFile]
    isolate: bool
    request_key: str

    @property
    def tenant(self) -> str:
        return self.files[0].tenant_id


@dataclass
class RecoveryPlan:
    requests: list[Rerequest] = field(default_factory=list)
    # files failed for good, with the reason
    fail: list[tuple[LedgerFile, str]] = field(default_factory=list)
    # files that wait before they are requested again: (file, reason, when)
    postpone: list[tuple[LedgerFile, str, datetime]] = field(default_factory=list)
    merge_needed: bool = False
    stuck: list[LedgerFile] = field(default_factory=list)


def request_key(feed: str, files: Sequence[LedgerFile], salt: str) -> str:
    digest = hashlib.sha1(salt.encode())
    for f in sorted(files, key=lambda f: (f.source_uri, f.etag)):
        digest.update(f"{f.source_uri}\0{f.etag}\0{f.requests}\n".encode())
    return f"{feed}-again-{digest.hexdigest()[:20]}"


def is_stuck(f: LedgerFile, now: datetime, stuck_after: timedelta) -> bool:
    """Active for longer than `stuck_after` (a `retrying` file counts from its retry time)."""
    return f.since is not None and now - f.since > stuck_after


def plan_recovery(
    files: Sequence[LedgerFile],
    *,
    feed: str,
    now: datetime,
    run_info: Callable[[LedgerFile], RunInfo],
    feed_busy: bool,
    retry: RetryPolicy,
    grace: timedelta,
    stuck_after: timedelta,
    max_files_per_run: int,
    salt: str,
) -> RecoveryPlan:
    """What to do with the feed's active files now (`salt` makes request keys unique per tick)."""
    plan = RecoveryPlan()
    again: list[LedgerFile] = []
    isolated: list[LedgerFile] = []
    for f in files:
        if is_stuck(f, now, stuck_after):
            plan.stuck.append(f)
        if f.status == "parsed":
            if not feed_busy and f.since is not None and now - f.since > grace:
                plan.merge_needed = True
            continue
        if f.status == "retrying":
            if f.retry_at is None or f.retry_at <= now:
                again.append(f)
            continue
        if f.status not in ("queued", "parsing"):
            continue
        info = run_info(f)
        if info.state == "active":
            continue
        started = f.started_at if f.status == "parsing" else f.queued_at
        if info.state == "unknown" and started is not None and now - started <= grace:
            continue  # the requested run may not exist yet
        if f.status == "queued":
            why = (
                f"requested again: {info.description or 'its run'} ended before reading the file"
                if info.state == "ended"
                else "requested again: the run requested for it never started"
            )
            wait = retry.delay(f.requests)
            if f.queued_at is not None and now - f.queued_at < wait:
                plan.postpone.append((f, why, f.queued_at + wait))
            else:
                again.append(f)
            continue
        # parsing: the run died while reading it
        what = info.description or "the run reading it"
        if f.attempts >= retry.max_attempts:
            plan.fail.append(
                (
                    f,
                    f"{what} ended without recording a result, on each of {f.attempts} attempts "
                    "(killed, out of memory or the machine lost while reading this file): "
                    "check the run's logs; a file too large for the run's memory can be split "
                    "or given a bigger machine, then re-ingested",
                )
            )
        else:
            isolated.append(f)
    for chunk in _chunks(again, max_files_per_run):
        plan.requests.append(Rerequest(chunk, False, request_key(feed, chunk, salt)))
    for chunk in _chunks(isolated, max_files_per_run):
        plan.requests.append(Rerequest(chunk, True, request_key(feed, chunk, salt + "-isolate")))
    return plan


def _chunks(files: list[LedgerFile], size: int) -> list[list[LedgerFile]]:
    """Runs of at most `size` files, each of one tenant (tenants in order of first file)."""
    tenants: dict[str, list[LedgerFile]] = {}
    for f in files:
        tenants.setdefault(f.tenant_id, []).append(f)
    return [group[i : i + size] for group in tenants.values() for i in range(0, len(group), size)]
