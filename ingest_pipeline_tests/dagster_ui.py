"""The real Dagster UI for browser tests: `dagster-webserver` on a free loopback port (beside a
`running_daemon` on the same DAGSTER_HOME), and Debian's Chromium driven by Playwright.

No browser is ever downloaded: Chromium is the system's (`/usr/bin/chromium`, or
`INGEST_CHROMIUM`), launched with the flags that keep it off the network."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ingest_pipeline_tests.daemon import BIN, REPO, stop_process_group

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium phones home at start and its failed connections flood the log.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """The system Chromium (INGEST_CHROMIUM overrides), or None when there is none."""
    explicit = os.environ.get("INGEST_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def artifacts_dir() -> Path:
    """Where screenshots go: $INGEST_TEST_ARTIFACTS, else <repo>/test-artifacts/ui/."""
    raw = os.environ.get("INGEST_TEST_ARTIFACTS")
    folder = Path(raw) if raw else REPO / "test-artifacts" / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webserver:
    def __init__(self, proc: subprocess.Popen, log: Path, url: str) -> None:
        self.proc, self.log, self.url = proc, log, url

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def server_info(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 120) -> dict:
        """Until GET /server_info answers (the code location may still be loading)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.server_info()
            if info is not None:
                return info
            if not self.alive():
                raise RuntimeError(f"dagster-webserver exited:\n{self.tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"dagster-webserver not answering in {timeout}s:\n{self.tail()}")

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def wait_location_loaded(self, timeout: float = 120) -> None:
        """Until the workspace's code location has loaded (its repository is served)."""
        query = """{ workspaceOrError { ... on Workspace { locationEntries {
            name loadStatus locationOrLoadError { __typename
              ... on PythonError { message } } } } } }"""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                last = self.graphql(query)
                entries = last["data"]["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    errors = [
                        e["locationOrLoadError"]
                        for e in entries
                        if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"
                    ]
                    if errors:
                        raise RuntimeError(f"code location failed to load: {errors}")
                    return
            except (urllib.error.URLError, OSError, KeyError, TypeError, ValueError) as exc:
                last = exc
            time.sleep(0.5)
        raise TimeoutError(f"code location not loaded in {timeout}s: {last}\n{self.tail()}")


@contextmanager
def running_webserver(root: Path, env: dict[str, str]) -> Iterator[Webserver]:
    """`dagster-webserver` on 127.0.0.1 and a free port, on the project's workspace with `env`
    (DAGSTER_HOME included); stopped with its process group."""
    port = free_port()
    log_path = root / "webserver.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "dagster-webserver"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                "workspace.yaml",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield Webserver(proc, log_path, f"http://127.0.0.1:{port}")
        finally:
            stop_process_group(proc, grace_seconds=20)
