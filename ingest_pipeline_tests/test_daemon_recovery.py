"""Issue #7, the real thing: `dagster-daemon run` ingesting a batch of many files while its run
processes are SIGKILLed at random moments (seeded; the seed is printed and named in every failure
message: rerun with INGEST_CHAOS_SEED=<seed>). With no operator action, every file ends with
exactly one final ledger row and the warehouse equals a sequential run of the same files.

The run worker is the process the code server spawns for a run (the jobs use the in-process
executor, so it is the only process of the run); killing it is what losing the process or its
machine looks like. The code server marks the run failed; the feed's sensor takes its files
again (recovery.py): those being read on their own, the others as they were, the parsed ones by a
merge."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import duckdb
import pytest

from ingest_pipeline import warehouse
from ingest_pipeline.feeds import FEEDS
from ingest_pipeline.landing import LocalLanding
from ingest_pipeline_tests import chaos
from ingest_pipeline_tests.daemon import Daemon, dagster_home, running_daemon

REPO = Path(__file__).resolve().parent.parent
FEED = FEEDS["track"]
FILES = 30
ROWS = 10_000
# Where each kill lands: a run's process start-up, its reading of a pass (a downloaded file open
# in its temp folder), its merge (bronze files of the lake open), or wherever it is.
KILL_PHASES = ("reading", "merging", "any", "reading", "merging")
DEADLINE_SECONDS = 300


def _children(pid: int) -> list[int]:
    """Child processes of `pid`, whichever of its threads started them."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def run_workers(daemon_pid: int) -> list[int]:
    """The run processes: what the daemon's code server spawns with multiprocessing."""
    workers = []
    for server in _children(daemon_pid):
        if "api grpc" not in _cmdline(server):
            continue
        workers += [p for p in _children(server) if "spawn_main" in _cmdline(p)]
    return workers


def phase(pid: int, lake: Path) -> str:
    """What the run process is doing, from the files it has open."""
    try:
        targets = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return "gone"
    if any(t.startswith(f"{lake}/bronze/") for t in targets):
        return "merging"
    if any("/ingest-" in t and "/download/" in t for t in targets):
        return "reading"
    return "other"


def kill_tree(pid: int) -> None:
    for child in _children(pid):
        kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def ledger_rows(wh: Path) -> list[tuple[str, str]] | None:
    try:
        with warehouse.connect(wh, read_only=True, wait_seconds=3) as con:
            return con.execute("SELECT landing_key, status FROM ingested_files").fetchall()
    except (duckdb.Error, OSError):
        return None  # a writer holds the file, or it is not created yet


@pytest.mark.timeout(DEADLINE_SECONDS + 120)
def test_run_processes_killed_at_random_moments_and_every_file_still_ends_once(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("INGEST_CHAOS_SEED") or random.randrange(2**32))
    print(f"INGEST_CHAOS_SEED={seed}")
    rng = random.Random(seed)
    landing = LocalLanding(tmp_path / "landing")
    wh = tmp_path / "warehouse.duckdb"
    env = chaos.pipeline_env(
        tmp_path,
        landing,
        INGEST_SENSOR_INTERVAL_SECONDS="1",
        INGEST_MAX_FILES_PER_RUN="6",
        INGEST_REQUEST_GRACE_SECONDS="10",
        INGEST_RETRY_DELAY_SECONDS="1",
        INGEST_MAX_ATTEMPTS="20",
    )
    env["DAGSTER_HOME"] = str(dagster_home(tmp_path, env))
    with running_daemon(tmp_path, env) as daemon:
        run_chaos(daemon, rng, seed, landing, tmp_path, wh)


def run_chaos(
    daemon: Daemon, rng: random.Random, seed: int, landing: LocalLanding, root: Path, wh: Path
) -> None:
    def context() -> str:
        return f"(INGEST_CHAOS_SEED={seed})\n" + daemon.tail()

    objects = chaos.drop(landing, FEED, [f"f{i:02d}" for i in range(FILES)], ROWS)
    keys = sorted(o.key for o in objects)
    deadline = time.monotonic() + DEADLINE_SECONDS
    kills = kill_run_processes(daemon, rng, root / "lake", deadline, context)
    print(f"killed run processes while: {kills}")

    rows = None
    while time.monotonic() < deadline:
        rows = ledger_rows(wh)
        if rows is not None and sorted(k for k, s in rows if s == "ingested") == keys:
            break
        assert daemon.alive(), context()
        time.sleep(2)
    else:
        with warehouse.connect(wh, read_only=True) as con:
            detail = con.execute(
                "SELECT landing_key, status, attempts, requests, run_id, error "
                "FROM ingested_files WHERE status <> 'ingested'"
            ).fetchall()
        pytest.fail(
            f"not every file ingested in {DEADLINE_SECONDS}s (kills: {kills}): {detail} {context()}"
        )
    # Exactly one ledger row per file, all final; kills landed in reading and in merging.
    assert sorted(k for k, _ in rows) == keys, context()
    assert len(kills) >= 3 and {"reading", "merging"} <= set(kills), (kills, context())

    reference = chaos.reference_run(landing, FEED, [objects], root / "ref")
    assert chaos.snapshot(wh) == chaos.snapshot(reference), (
        f"the warehouse differs from a sequential run (INGEST_CHAOS_SEED={seed})"
    )


def kill_run_processes(
    daemon: Daemon, rng: random.Random, lake: Path, deadline: float, context
) -> list[str]:
    """SIGKILL a run process in each phase of KILL_PHASES (waiting at most 30 s for one to be
    in it), a random moment after it is seen there. Returns the phases the kills landed in."""
    kills: list[str] = []
    for wanted in KILL_PHASES:
        give_up = min(time.monotonic() + 30, deadline)
        victim, seen = None, "other"
        while victim is None and time.monotonic() < give_up:
            assert daemon.alive(), context()
            for pid in run_workers(daemon.pid):
                seen = phase(pid, lake)
                if wanted == "any" or seen == wanted:
                    victim = pid
                    break
            else:
                time.sleep(0.005)
        if victim is None:
            continue
        time.sleep(rng.uniform(0.0, 0.3 if wanted != "any" else 3.0))
        kill_tree(victim)
        kills.append(seen)
    return kills
