"""The Ingestion API under a real uvicorn server on 127.0.0.1, for tests that call it over HTTP."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from ingest_pipeline.api.app import create_app
from ingest_pipeline.config import parse_config
from ingest_pipeline.settings import get_settings

# Keys of the tenants every API test configures (their variables are set by `api_env`).
KEYS = {"acme": "acme-key-1", "acme2": "acme-key-2", "globex": "globex-key"}
TENANTS = {
    "acme": {"api_key_envs": ["TEST_ACME_KEY", "TEST_ACME_KEY_NEXT"]},  # two keys: rotation
    "globex": {"api_key_env": "TEST_GLOBEX_KEY"},
}
KEY_ENV = {
    "TEST_ACME_KEY": KEYS["acme"],
    "TEST_ACME_KEY_NEXT": KEYS["acme2"],
    "TEST_GLOBEX_KEY": KEYS["globex"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, seconds: float = 30.0) -> None:
    """Until the service at `url` answers (started as its own process); fails the test if not."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(f"{url}/ingestion/schemas", timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API at {url} did not start in {seconds:.0f} s") from None
            time.sleep(0.1)


@dataclasses.dataclass
class RunningApi:
    url: str
    landing_url: str
    warehouse_path: str
    app: Any

    @property
    def service(self) -> Any:
        return self.app.state.service


@contextmanager
def running_api(
    landing_url: str | Path,
    warehouse_path: str | Path,
    api: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Iterator[RunningApi]:
    """The service built from an ingest.yaml with the test tenants (and `api` settings), served
    by uvicorn in a thread until the block ends."""
    config = parse_config({"tenants": TENANTS, "api": api or {}, **(extra_config or {})})
    settings = dataclasses.replace(
        get_settings(), landing_url=str(landing_url), warehouse_path=str(warehouse_path)
    )
    app = create_app(config, settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield RunningApi(f"http://127.0.0.1:{port}", str(landing_url), str(warehouse_path), app)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
