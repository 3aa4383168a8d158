"""The heavyweight mode end to end: an upload URL, `curl -T` to it (the moto S3 server, or the
API's own PUT endpoint for a local landing folder), confirmation, then the real Dagster daemon
ingests the file and `GET /ingestion/files/...` reports its counts; an unconfirmed upload is
still not ingested after several sensor ticks. And a > 2 GB body streamed to the local PUT
endpoint is refused with nothing left behind."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from dagster import DagsterInstance

from ingest_pipeline import warehouse
from ingest_pipeline_tests.api_server import KEY_ENV, KEYS, running_api
from ingest_pipeline_tests.daemon import dagster_home, running_daemon

ACME = {"x-api-key": KEYS["acme"]}
DEADLINE_SECONDS = 240


def _events(i: int, n: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "contact_id": f"{prefix}-{k}",
            "event_name": "opened",
            "event_timestamp": 1_700_000_000 + k,
        }
        for k in range(i, i + n)
    ]


def _curl_put(url: str, path: Path) -> None:
    """The vendor's documented command: curl -X PUT -T file URL, with the signed headers."""
    done = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--fail", "-X", "PUT", "-T", str(path),
            "-H", "Content-Type: application/jsonl", "-H", "Content-Encoding: gzip", url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _sensor_ticks(home: Path, sensor: str) -> int:
    with DagsterInstance.from_config(str(home)) as instance:
        for state in instance.all_instigator_state():
            if state.name == sensor:
                return len(
                    instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=10_000)
                )
    return 0


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEY_ENV.items():
        monkeypatch.setenv(name, value)


def _landing_for(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "landing")
    _client, bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/drop"


@pytest.fixture(params=["local", "s3"])
def landing_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _landing_for(request, tmp_path)


@pytest.mark.timeout(DEADLINE_SECONDS + 120)
def test_presigned_upload_confirmed_is_ingested_by_the_daemon_unconfirmed_never(
    landing_url: str, tmp_path: Path, key_env: None
) -> None:
    wh_path = tmp_path / "warehouse.duckdb"
    config = tmp_path / "ingest.yaml"
    config.write_text(
        json.dumps({"tenants": {"acme": {"api_key_envs": ["TEST_ACME_KEY"]}}})
    )  # the daemon's code location reads the same tenants
    env = dict(
        os.environ,
        INGEST_LANDING_URL=landing_url,
        INGEST_LAKE_URL=str(tmp_path / "lake"),
        INGEST_WAREHOUSE_PATH=str(wh_path),
        INGEST_SENSOR_INTERVAL_SECONDS="1",
        INGEST_CONFIG=str(config),
    )
    env["DAGSTER_HOME"] = str(dagster_home(tmp_path, env))
    confirmed_body = _events(0, 30, "conf") + [{"contact_id": "bad", "event_timestamp": "x"}]
    with (
        running_api(landing_url, wh_path) as api,
        running_daemon(tmp_path, env) as daemon,
    ):

        def url_for(stream: str) -> dict[str, Any]:
            response = httpx.post(
                f"{api.url}/ingestion/generate-upload-url",
                json={"stream": stream, "content_type": "application/jsonl",
                      "content_encoding": "gzip"},
                headers=ACME,
            )  # fmt: skip
            assert response.status_code == 200, response.text
            return response.json()

        def status(key: str) -> dict[str, Any]:
            response = httpx.get(f"{api.url}/ingestion/files/{quote(key)}", headers=ACME)
            assert response.status_code == 200, response.text
            return response.json()

        confirmed, unconfirmed = url_for("contact_event"), url_for("contact_event")
        if landing_url.startswith("s3://"):
            assert confirmed["upload_url"].startswith(os.environ["AWS_ENDPOINT_URL"])
        else:
            assert confirmed["upload_url"].startswith(f"{api.url}/ingestion/uploads/")
        for given, records in ((confirmed, confirmed_body), (unconfirmed, _events(0, 5, "unc"))):
            path = tmp_path / f"{given['file_key'].rsplit('/', 1)[1]}"
            path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
            _curl_put(given["upload_url"], path)
        assert status(unconfirmed["file_key"])["status"] == "awaiting confirmation"
        answer = httpx.post(
            f"{api.url}/ingestion/confirm-upload",
            json={"file_key": confirmed["file_key"]},
            headers=ACME,
        )
        assert answer.json()["status"] == "success"
        # the lightweight mode beside it: no confirmation
        sent = httpx.post(
            f"{api.url}/ingestion/upload-json",
            json={"stream": "contact", "data": [{"contact_id": "conf-1", "email": "a@b.co"}]},
            headers=ACME,
        ).json()

        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            states = [status(confirmed["file_key"])["status"], status(sent["file_key"])["status"]]
            if states == ["ingested", "ingested"]:
                break
            assert daemon.alive(), daemon.tail(3000)
            time.sleep(1)
        else:
            pytest.fail(f"not ingested in {DEADLINE_SECONDS}s: {states}\n" + daemon.tail(3000))
        report = status(confirmed["file_key"])
        assert (report["rows_read"], report["rows_loaded"], report["rows_rejected"]) == (31, 30, 1)
        assert report["rejected_sample"][0]["line"] == 31
        assert "event_name" in report["rejected_sample"][0]["reason"]

        # several more ticks of the stream's sensor: the unconfirmed upload stays out
        home = Path(env["DAGSTER_HOME"])
        ticks = _sensor_ticks(home, "contact_event_landing_sensor")
        assert ticks >= 1
        while _sensor_ticks(home, "contact_event_landing_sensor") < ticks + 3:
            assert time.monotonic() < deadline + 60, daemon.tail(2000)
            time.sleep(1)
        assert status(unconfirmed["file_key"])["status"] == "awaiting confirmation"
        with warehouse.connect(wh_path, read_only=True, wait_seconds=30) as con:
            # read for sure (a failed read must fail the test, not look like "not there")
            keys = [k for (k,) in con.execute("SELECT landing_key FROM ingested_files").fetchall()]
            assert any(k == confirmed["file_key"] for k in keys)
            assert not any(k.endswith(unconfirmed["file_key"].rsplit("/", 1)[1]) for k in keys)
            tenants = con.execute(
                "SELECT DISTINCT tenant_id FROM events UNION SELECT tenant_id FROM contacts"
            ).fetchall()
            unc = con.execute("SELECT count(*) FROM events WHERE contact_key LIKE 'unc-%'")
            assert unc.fetchone()[0] == 0
        assert tenants == [("acme",)]  # from the file key, not INGEST_TENANT


def _endless_zeros(total: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    block = b"\x1f\x8b" + b"\0" * (chunk - 2)
    sent = 0
    while sent < total:
        yield block
        sent += len(block)
        block = b"\0" * chunk


@pytest.mark.timeout(600)
def test_a_body_over_2_gb_to_the_local_put_endpoint_is_refused_and_leaves_nothing(
    tmp_path: Path, key_env: None
) -> None:
    landing = tmp_path / "landing"
    with running_api(landing, tmp_path / "w.duckdb") as api:
        assert api.service.config.api.max_upload_bytes == 2 * 1024**3  # the real limit
        given = httpx.post(
            f"{api.url}/ingestion/generate-upload-url", json={"stream": "account"}, headers=ACME
        ).json()
        parts = urlsplit(given["upload_url"])
        # a declared length over 2 GB: refused before a byte of the body is read
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(
                f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/jsonl\r\nContent-Encoding: gzip\r\n"
                f"Content-Length: {2 * 1024**3 + 1}\r\n\r\n".encode()
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 413")
        # chunked, no length: counted as it streams (generated here, never stored whole)
        total = 2 * 1024**3 + 256 * 1024 * 1024
        head = (
            f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/jsonl\r\nContent-Encoding: gzip\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        answer = b""
        with socket.create_connection((parts.hostname, parts.port), timeout=120) as sock:
            sock.sendall(head.encode())
            try:
                for block in _endless_zeros(total):
                    sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                    sent += len(block)
                sock.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server refused and closed while the body was still coming
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        # the server read up to its limit, then stopped the upload (413, connection closed)
        assert 2 * 1024**3 - 64 * 1024 * 1024 < sent < total
        assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:200]
        leftovers = [str(p) for p in landing.rglob("*") if p.is_file()]
        assert leftovers == []
        confirm = httpx.post(
            f"{api.url}/ingestion/confirm-upload",
            json={"file_key": given["file_key"]},
            headers=ACME,
        )
        assert confirm.status_code == 404
