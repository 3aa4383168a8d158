"""A real `dagster-daemon run` for tests: a fresh DAGSTER_HOME with the project's dagster.yaml,
its storage created before the daemon starts, and the daemon's log for failure messages."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def dagster_home(root: Path, env: dict[str, str], instance_yaml: Path | None = None) -> Path:
    """A new DAGSTER_HOME under `root`. Its SQLite storage is created here, once: the daemon and
    the code server it starts would otherwise both create it at the same moment, and a lost race
    leaves two alembic heads ("Version table 'alembic_version' has more than one head").

    `instance_yaml`: the instance settings to copy in as its dagster.yaml (default: the
    project's), e.g. deploy/dagster.postgres.yaml, whose storage `instance migrate` creates in
    the PostgreSQL database `env` names."""
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(instance_yaml or REPO / "dagster.yaml", home / "dagster.yaml")
    subprocess.run(
        [str(BIN / "dagster"), "instance", "migrate"],
        env={**env, "DAGSTER_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    return home


class Daemon:
    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.proc, self.log = proc, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@contextmanager
def running_daemon(root: Path, env: dict[str, str]) -> Iterator[Daemon]:
    """`dagster-daemon run` on the project's workspace with `env` (DAGSTER_HOME included)."""
    log_path = root / "daemon.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield Daemon(proc, log_path)
        finally:
            stop_process_group(proc, grace_seconds=30)


def stop_process_group(proc: subprocess.Popen, *, grace_seconds: float) -> None:
    """SIGTERM to the process's group, then SIGKILL to whatever is left after the grace period:
    run processes a code server started are in its group and may outlive it (one waiting for a
    pool slot ignores SIGTERM), and nothing is left behind."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
