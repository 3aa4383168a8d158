"""The Ingestion API over real HTTP (uvicorn on 127.0.0.1): every endpoint's success path and
every refusal, each checking what was written where nothing must be."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from ingest_pipeline.api.schemas import DIALECT, stream_schema
from ingest_pipeline.api.uploads import parse_file_key
from ingest_pipeline.cli import main as cli_main
from ingest_pipeline.feeds import API_KEY_LAYOUT, API_STREAMS
from ingest_pipeline_tests.api_server import KEY_ENV, KEYS, RunningApi, running_api

ACME = {"x-api-key": KEYS["acme"]}
GLOBEX = {"x-api-key": KEYS["globex"]}


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEY_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def api(tmp_path: Path, key_env: None) -> Iterator[RunningApi]:
    with running_api(tmp_path / "landing", tmp_path / "warehouse.duckdb") as running:
        yield running


def files_under(root: str | Path) -> list[str]:
    """Every file under the landing root, hidden temporary files included."""
    base = Path(root)
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def account(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"type": "account", "account_id": f"acct-{i}", "domain": f"d{i}.com", **extra}


def event(i: int = 0) -> dict[str, Any]:
    return {
        "type": "contact_event",
        "contact_id": f"user-{i}",
        "event_name": "signed_up",
        "event_timestamp": 1_700_000_000 + i,
        "event_properties": {"plan": "trial", "n": i},
    }


def post_json(api: RunningApi, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{api.url}/ingestion/upload-json",
        json=body,
        headers=ACME if headers is None else headers,
        timeout=30,
    )


# --- schemas ---------------------------------------------------------------------------------


def test_schemas_are_listed_and_served_without_a_key(api: RunningApi) -> None:
    listed = httpx.get(f"{api.url}/ingestion/schemas").json()
    assert [s["stream"] for s in listed["streams"]] == list(API_STREAMS)
    for item in listed["streams"]:
        response = httpx.get(f"{api.url}{item['schema']}")
        assert response.status_code == 200
        schema = response.json()
        assert schema == stream_schema(item["stream"])
        assert schema["$schema"] == DIALECT
        assert item["example"] == API_STREAMS[item["stream"]].example
    assert httpx.get(f"{api.url}/ingestion/schemas/nope").status_code == 404


def test_openapi_and_docs_are_served(api: RunningApi) -> None:
    spec = httpx.get(f"{api.url}/openapi.json").json()
    for path in (
        "/ingestion/upload-json",
        "/ingestion/generate-upload-url",
        "/ingestion/request-upload-url",
        "/ingestion/confirm-upload",
        "/ingestion/notify-upload-complete",
        "/ingestion/files/{file_key}",
        "/ingestion/schemas/{stream}",
    ):
        assert path in spec["paths"], path
    assert httpx.get(f"{api.url}/docs").status_code == 200


# --- upload-json -----------------------------------------------------------------------------


def test_upload_json_writes_one_jsonl_file_under_the_tenants_key(api: RunningApi) -> None:
    records = [account(0, account_properties={"name": "Acme", "employees": 500}), account(1)]
    response = post_json(api, {"stream": "account", "data": records})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "success" and answer["message"]
    match = API_KEY_LAYOUT.fullmatch(answer["file_key"])
    assert match and match["stream"] == "account" and match["tenant"] == "acme"
    assert files_under(api.landing_url) == [answer["file_key"]]
    written = (Path(api.landing_url) / answer["file_key"]).read_text().splitlines()
    assert [json.loads(line) for line in written] == records


def test_every_key_of_a_tenant_works_and_files_are_the_tenants(api: RunningApi) -> None:
    first = post_json(api, {"stream": "account", "data": [account()]}, ACME).json()
    second = post_json(
        api, {"stream": "account", "data": [account()]}, {"x-api-key": KEYS["acme2"]}
    )
    other = post_json(api, {"stream": "account", "data": [account()]}, GLOBEX).json()
    assert parse_file_key(first["file_key"]).tenant == "acme"
    assert parse_file_key(second.json()["file_key"]).tenant == "acme"
    assert parse_file_key(other["file_key"]).tenant == "globex"


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": ""}])
def test_missing_or_unknown_key_is_401_and_writes_nothing(
    api: RunningApi, headers: dict[str, str]
) -> None:
    response = post_json(api, {"stream": "account", "data": [account()]}, headers)
    assert response.status_code == 401
    assert "wrong" not in response.text and KEYS["acme"] not in response.text
    for path in ("/ingestion/files/x", "/ingestion/confirm-upload"):
        method = httpx.get if path.startswith("/ingestion/files") else httpx.post
        kwargs = {} if method is httpx.get else {"json": {"file_key": "x"}}
        assert method(f"{api.url}{path}", headers=headers, **kwargs).status_code == 401
    url = f"{api.url}/ingestion/generate-upload-url"
    assert httpx.post(url, json={"stream": "account"}, headers=headers).status_code == 401
    assert files_under(api.landing_url) == []


@pytest.mark.parametrize(
    "body", [b"not json", b'{"stream": "account", "data": [', b"\xff\xfe", b"", b"NaN"]
)
def test_a_body_that_is_not_json_is_400_and_writes_nothing(api: RunningApi, body: bytes) -> None:
    response = httpx.post(f"{api.url}/ingestion/upload-json", content=body, headers=ACME)
    assert response.status_code == 400, response.text
    assert "not valid JSON" in response.json()["detail"]
    assert files_under(api.landing_url) == []


def test_invalid_records_are_422_with_every_index_and_path_and_nothing_written(
    api: RunningApi,
) -> None:
    data = [account(0), {"type": "account", "account_id": 7}, account(2), {"domain": "x.com"}]
    data += [account(4, colour="red")]
    response = post_json(api, {"stream": "account", "data": data})
    assert response.status_code == 422
    detail = response.json()["detail"]
    by_index = {(d["index"], d["path"]) for d in detail}
    assert (1, "/data/1/account_id") in by_index
    assert (3, "/data/3") in by_index  # missing account_id
    assert (4, "/data/4") in by_index  # unknown key
    assert {d["index"] for d in detail} == {1, 3, 4}
    assert all(d["message"] for d in detail)
    assert files_under(api.landing_url) == []


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"stream": "nope", "data": [account()]}, "/stream"),
        ({"data": [account()]}, "/stream"),
        ({"stream": "account", "data": []}, "/data"),
        ({"stream": "account", "data": {"a": 1}}, "/data"),
        ([account()], ""),
    ],
)
def test_a_bad_envelope_is_422_with_its_path(api: RunningApi, body: Any, path: str) -> None:
    response = post_json(api, body)
    assert response.status_code == 422
    assert [d["path"] for d in response.json()["detail"]] == [path]
    assert files_under(api.landing_url) == []


def test_a_placeholder_identity_is_refused_by_the_api_as_by_the_pipeline(api: RunningApi) -> None:
    response = post_json(api, {"stream": "contact", "data": [{"contact_id": " Anonymous "}]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["path"] == "/data/0/contact_id"


def test_gzip_bodies_are_accepted(api: RunningApi) -> None:
    body = gzip.compress(json.dumps({"stream": "contact_event", "data": [event(1)]}).encode())
    headers = {**ACME, "Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = httpx.post(f"{api.url}/ingestion/upload-json", content=body, headers=headers)
    assert response.status_code == 200, response.text
    key = response.json()["file_key"]
    assert json.loads((Path(api.landing_url) / key).read_text()) == event(1)


def test_an_unknown_content_encoding_is_415(api: RunningApi) -> None:
    headers = {**ACME, "Content-Encoding": "br"}
    response = httpx.post(f"{api.url}/ingestion/upload-json", content=b"{}", headers=headers)
    assert response.status_code == 415
    assert files_under(api.landing_url) == []


def _raw_request(
    url: str, head: str, chunks: Iterator[bytes], read_timeout: float = 30
) -> tuple[str, int]:
    """Send a request over a plain socket (headers as given: chunked, lying lengths): the
    answer (status line, headers, body) and how many body bytes could be sent before the
    server closed the connection."""
    parts = urlsplit(url)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=read_timeout) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body ended
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return received.decode(errors="replace"), sent


def _chunked(body: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        part = body[i : i + size]
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


@pytest.fixture
def small_api(tmp_path: Path, key_env: None) -> Iterator[RunningApi]:
    limits = {"max_json_bytes": 2000, "max_upload_bytes": 5000}
    with running_api(tmp_path / "landing", tmp_path / "warehouse.duckdb", api=limits) as running:
        yield running


def _body_of(size: int) -> bytes:
    """A valid upload-json body of at least `size` bytes (and not much more)."""
    head, tail = b'{"stream": "contact_event", "data": [', b"]}"
    parts, length = [], len(head) + len(tail)
    while length < size:
        parts.append(json.dumps(event(len(parts))).encode())
        length += len(parts[-1]) + 2
    return head + b", ".join(parts) + tail


def test_limit_is_configurable_and_counted_on_received_bytes(small_api: RunningApi) -> None:
    small = json.dumps({"stream": "contact_event", "data": [event(0)]}).encode()
    assert len(small) < 2000
    ok = httpx.post(f"{small_api.url}/ingestion/upload-json", content=small, headers=ACME)
    assert ok.status_code == 200
    written = files_under(small_api.landing_url)
    big = _body_of(2100)
    # declared length above the limit: refused before reading
    too_big = httpx.post(f"{small_api.url}/ingestion/upload-json", content=big, headers=ACME)
    assert too_big.status_code == 413
    # chunked: no length to trust, the bytes are counted as they come
    head = (
        "POST /ingestion/upload-json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"x-api-key: {KEYS['acme']}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    answer, _ = _raw_request(small_api.url, head, _chunked(big, 100))
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    # chunked under the limit is fine
    answer, _ = _raw_request(small_api.url, head, _chunked(small, 10))
    assert answer.startswith("HTTP/1.1 200"), answer[:300]
    assert len(files_under(small_api.landing_url)) == len(written) + 1


def test_a_chunked_body_that_never_ends_is_stopped_at_the_limit(small_api: RunningApi) -> None:
    head = (
        "POST /ingestion/upload-json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"x-api-key: {KEYS['acme']}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def endless() -> Iterator[bytes]:
        for _ in range(100_000):  # 100 MB if nobody stopped it
            yield b"400\r\n" + b" " * 1024 + b"\r\n"

    answer, sent = _raw_request(small_api.url, head, endless())
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    # the server closed the connection once it had answered: the rest was never sent
    assert sent < 20_000_000
    assert files_under(small_api.landing_url) == []


def test_a_lying_content_length_cannot_pass_more_than_it_says(small_api: RunningApi) -> None:
    big = _body_of(2100)
    # claims 1,000 bytes, sends 2,100: the server reads 1,000 (not JSON: 400), never the rest
    head = (
        "POST /ingestion/upload-json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"x-api-key: {KEYS['acme']}\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
    )
    answer, _ = _raw_request(small_api.url, head, iter([big]))
    assert answer.startswith("HTTP/1.1 400"), answer[:200]
    assert files_under(small_api.landing_url) == []


def test_a_gzip_bomb_is_refused_on_its_decompressed_size(small_api: RunningApi) -> None:
    bomb = gzip.compress(b" " * 50_000_000)  # 50 MB of spaces in ~50 KB
    assert len(bomb) < 100_000
    small = gzip.compress(b'{"stream":"contact_event","data":[' + b" " * 1500 + b"]}")
    headers = {**ACME, "Content-Encoding": "gzip"}
    url = f"{small_api.url}/ingestion/upload-json"
    # the compressed body alone is over the limit here; under it, the output is what counts
    assert httpx.post(url, content=bomb, headers=headers).status_code == 413
    inflating = gzip.compress(b" " * 100_000)
    assert len(inflating) < 2000
    response = httpx.post(url, content=inflating, headers=headers)
    assert response.status_code == 413
    assert "decompressed" in response.json()["detail"]
    assert httpx.post(url, content=small, headers=headers).status_code == 422  # empty data
    assert files_under(small_api.landing_url) == []


def test_the_real_one_megabyte_limit(api: RunningApi) -> None:
    url = f"{api.url}/ingestion/upload-json"
    under = _body_of(1_000_000)
    assert len(under) <= 1024 * 1024
    assert httpx.post(url, content=under, headers=ACME, timeout=30).status_code == 200
    over = _body_of(1024 * 1024 + 10)
    assert httpx.post(url, content=over, headers=ACME, timeout=30).status_code == 413
    assert len(files_under(api.landing_url)) == 1


def test_idempotency_key_returns_the_first_answer_and_writes_once(api: RunningApi) -> None:
    body = {"stream": "contact_event", "data": [event(1), event(2)]}
    headers = {**ACME, "Idempotency-Key": "batch-2026-12-01-0001"}
    first = post_json(api, body, headers)
    again = post_json(api, body, headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    data_files = [f for f in files_under(api.landing_url) if f.startswith("data/tenants/objects")]
    assert data_files == [first.json()["file_key"]]
    # the same key with other data is refused, not silently answered with the old file
    changed = post_json(api, {"stream": "contact_event", "data": [event(3)]}, headers)
    assert changed.status_code == 422
    # another tenant's identical key is its own
    other = post_json(api, body, {**GLOBEX, "Idempotency-Key": "batch-2026-12-01-0001"})
    assert other.status_code == 200 and other.json()["file_key"] != first.json()["file_key"]
    # without the header, each request is a new file
    post_json(api, body)
    objects = [f for f in files_under(api.landing_url) if f.startswith("data/tenants/objects")]
    assert len(objects) == 3


def test_a_retry_after_the_first_request_died_before_its_file_writes_it(api: RunningApi) -> None:
    body = {"stream": "contact_event", "data": [event(1)]}
    headers = {**ACME, "Idempotency-Key": "k-died"}
    first = post_json(api, body, headers).json()
    path = Path(api.landing_url) / first["file_key"]
    path.unlink()  # as if the process died after its record, before its file
    # within the in-progress window: told to retry, not a second file
    assert post_json(api, body, headers).status_code == 409
    record = next(Path(api.landing_url).glob("data/tenants/idempotency/tenant=acme/*.json"))
    stored = json.loads(record.read_text())
    record.write_text(json.dumps({**stored, "at": stored["at"] - 60}))
    retried = post_json(api, body, headers)
    assert retried.status_code == 200 and retried.json() == first
    assert json.loads(path.read_text()) == event(1)


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path, key_env: None) -> None:
    limits = {"rate_limit": {"per_second": 0.5, "burst": 2}}
    with running_api(tmp_path / "l", tmp_path / "w.duckdb", api=limits) as api:
        body = {"stream": "account", "data": [account()]}
        codes = [post_json(api, body).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        limited = post_json(api, body)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        # per key: another tenant's key is not limited by acme's use
        assert post_json(api, body, GLOBEX).status_code == 200
        assert len(files_under(api.landing_url)) == 3


def test_rate_limit_is_off_by_default(api: RunningApi) -> None:
    body = {"stream": "account", "data": [account()]}
    with httpx.Client(headers=ACME) as client:
        codes = {
            client.post(f"{api.url}/ingestion/upload-json", json=body).status_code
            for _ in range(30)
        }
    assert codes == {200}


# --- upload URLs, the local PUT endpoint, confirmation, status ---------------------------------


def upload_url(api: RunningApi, stream: str = "contact_event", headers=ACME) -> dict[str, Any]:
    response = httpx.post(
        f"{api.url}/ingestion/generate-upload-url",
        json={"stream": stream, "content_type": "application/jsonl", "content_encoding": "gzip"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


def put(url: str, body: bytes, **headers: str) -> httpx.Response:
    sent = {"Content-Type": "application/jsonl", "Content-Encoding": "gzip", **headers}
    return httpx.put(url, content=body, headers=sent, timeout=60)


def confirm(api: RunningApi, file_key: str, headers=ACME, alias: bool = False) -> httpx.Response:
    path = "notify-upload-complete" if alias else "confirm-upload"
    return httpx.post(
        f"{api.url}/ingestion/{path}", json={"file_key": file_key}, headers=headers, timeout=60
    )


def status(api: RunningApi, file_key: str, headers=ACME) -> httpx.Response:
    return httpx.get(f"{api.url}/ingestion/files/{quote(file_key)}", headers=headers)


def jsonl_gz(records: list[Any]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())


def test_upload_confirm_and_status_through_the_local_put_endpoint(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    given = upload_url(api)
    assert given["upload_url"].startswith(f"{api.url}/ingestion/uploads/")
    assert given["headers"] == {"Content-Type": "application/jsonl", "Content-Encoding": "gzip"}
    key = given["file_key"]
    assert parse_file_key(key).tenant == "acme" and key.endswith(".jsonl.gz")
    assert status(api, key).status_code == 404  # nothing uploaded yet
    body = jsonl_gz([event(1), event(2), {"contact_id": "x", "event_name": 5}])
    assert put(given["upload_url"], body).status_code == 200
    assert status(api, key).json()["status"] == "awaiting confirmation"
    assert not (Path(api.landing_url) / key).exists()  # not where the sensor looks
    assert confirm(api, key).json() == {
        "status": "success",
        "message": "File upload confirmed and processing started",
        "file_key": key,
    }
    landed = Path(api.landing_url) / key
    assert landed.read_bytes() == body
    before = landed.stat()
    assert confirm(api, key, alias=True).status_code == 200  # twice: no error, no change
    assert landed.stat().st_mtime_ns == before.st_mtime_ns
    assert status(api, key).json()["status"] == "queued"
    # a PUT to a confirmed upload's URL is refused: the file is not replaced behind the ledger
    assert put(given["upload_url"], jsonl_gz([event(9)])).status_code == 409

    monkeypatch.setenv("INGEST_LANDING_URL", api.landing_url)
    monkeypatch.setenv("INGEST_WAREHOUSE_PATH", api.warehouse_path)
    monkeypatch.setenv("INGEST_LAKE_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("INGEST_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    assert cli_main(["ingest", "--feed", "contact_event"]) == 0
    report = status(api, key).json()
    assert report["status"] == "ingested"
    assert (report["rows_read"], report["rows_loaded"], report["rows_rejected"]) == (3, 2, 1)
    assert report["rows_duplicate"] == 0
    assert report["rejected_sample"][0]["line"] == 3
    assert "event_name" in report["rejected_sample"][0]["reason"]


def test_local_upload_url_refuses_tampering_wrong_headers_and_expiry(
    tmp_path: Path, key_env: None
) -> None:
    with running_api(
        tmp_path / "l", tmp_path / "w.duckdb", api={"upload_url_expiry_seconds": 2}
    ) as api:
        given = upload_url(api)
        url = given["upload_url"]
        body = jsonl_gz([event(1)])
        other_key = given["file_key"].replace("tenant=acme", "tenant=globex")
        tampered = url.replace(quote(given["file_key"]), quote(other_key))
        assert put(tampered, body).status_code == 403
        assert put(url.replace("expires=", "expires=1"), body).status_code == 403
        assert put(url, body, **{"Content-Type": "text/plain"}).status_code == 403
        time.sleep(3)
        assert put(url, body).status_code == 403  # expired
        assert files_under(api.landing_url) == []


def test_the_local_put_endpoint_stops_at_its_limit_and_leaves_nothing(
    small_api: RunningApi,
) -> None:
    given = upload_url(small_api)
    assert put(given["upload_url"], b"\x1f\x8b" + b"x" * 6000).status_code == 413
    parts = urlsplit(given["upload_url"])
    head = (
        f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/jsonl\r\nContent-Encoding: gzip\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    answer, _ = _raw_request(small_api.url, head, _chunked(b"\x1f\x8b" + b"y" * 6000, 512))
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert files_under(small_api.landing_url) == []
    assert confirm(small_api, given["file_key"]).status_code == 404


def test_confirm_refuses_what_is_not_gzip_and_what_was_never_uploaded(api: RunningApi) -> None:
    given = upload_url(api, "account")
    assert confirm(api, given["file_key"]).status_code == 404
    assert put(given["upload_url"], b'{"account_id": "a"}\n').status_code == 200
    refused = confirm(api, given["file_key"])
    assert refused.status_code == 422 and "gzip" in refused.json()["detail"][0]["message"]
    assert not (Path(api.landing_url) / given["file_key"]).exists()
    assert status(api, given["file_key"]).json()["status"] == "awaiting confirmation"


def test_confirm_refuses_an_upload_over_the_limit(tmp_path: Path, key_env: None) -> None:
    with running_api(tmp_path / "l", tmp_path / "w.duckdb", api={"max_upload_bytes": 100}) as api:
        given = upload_url(api)
        staged = Path(api.landing_url) / given["file_key"].replace("/objects/", "/uploads/")
        staged.parent.mkdir(parents=True)
        staged.write_bytes(b"\x1f\x8b" + b"z" * 200)  # put there by other means than the URL
        assert confirm(api, given["file_key"]).status_code == 413
        assert not (Path(api.landing_url) / given["file_key"]).exists()


def test_another_tenants_file_is_not_found(api: RunningApi) -> None:
    mine = post_json(api, {"stream": "account", "data": [account()]}).json()["file_key"]
    assert status(api, mine).status_code == 200
    assert status(api, mine, GLOBEX).status_code == 404
    assert status(api, mine, GLOBEX).json() == status(api, mine.replace("a", "b", 1)).json()
    assert confirm(api, mine, GLOBEX).status_code == 404
    given = upload_url(api, headers=GLOBEX)
    put(given["upload_url"], jsonl_gz([event(1)]))
    assert confirm(api, given["file_key"], ACME).status_code == 404
    assert status(api, given["file_key"], ACME).status_code == 404
    assert not (Path(api.landing_url) / given["file_key"]).exists()


@pytest.mark.parametrize(
    "trick",
    [
        "data/tenants/objects/account/source_system=dataapi/tenant=acme/../tenant=globex/{tail}",
        "data/tenants/objects/account/source_system=dataapi/tenant=globex/{tail}",
        "data%2Ftenants%2Fobjects%2Faccount%2Fsource_system=dataapi%2Ftenant=globex%2F{tail}",
        "data/tenants/objects/account/source_system=dataapi/tenant=acme%2F..%2F..%2Fglobex/{tail}",
        "data/tenants/uploads/account/source_system=dataapi/tenant=acme/{tail}",
        "../landing/data/tenants/objects/account/source_system=dataapi/tenant=acme/{tail}",
        "data/tenants/objects/account/source_system=dataapi/tenant=acme/{tail}/../../../x",
        "data/tenants/idempotency/tenant=acme/{tail}",
    ],
)
def test_path_tricks_in_file_keys_are_refused(api: RunningApi, trick: str) -> None:
    theirs = post_json(api, {"stream": "account", "data": [account()]}, GLOBEX).json()["file_key"]
    tail = theirs.split("tenant=globex/")[1]
    key = trick.format(tail=tail)
    response = httpx.get(f"{api.url}/ingestion/files/{key}", headers=ACME)
    assert response.status_code == 404, key
    assert "rows_read" not in response.text
    confirmed = confirm(api, key.replace("%2F", "/"))
    assert confirmed.status_code == 404


def test_upload_url_refuses_an_unknown_stream_or_content_type(api: RunningApi) -> None:
    url = f"{api.url}/ingestion/request-upload-url"
    bad = httpx.post(url, json={"stream": "nope"}, headers=ACME)
    assert bad.status_code == 422 and bad.json()["detail"][0]["path"] == "/stream"
    bad = httpx.post(url, json={"stream": "account", "content_type": "text/csv"}, headers=ACME)
    assert bad.status_code == 422 and bad.json()["detail"][0]["path"] == "/content_type"
    assert httpx.post(url, json={"stream": "account"}, headers=ACME).status_code == 200
    assert files_under(api.landing_url) == []


def test_the_readme_examples_work(api: RunningApi) -> None:

    import yaml

    from ingest_pipeline.config import parse_config

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Ingestion API") :]
    section = section[: section.index("\n## ", 5)]
    config_text = section[
        section.index("```yaml") + 7 : section.index("```", section.index("```yaml") + 7)
    ]
    assert parse_config(yaml.safe_load(config_text)).tenants["acme"].key_envs() == [
        "ACME_API_KEY",
        "ACME_API_KEY_NEXT",
    ]
    bodies = re.findall(r"-d '(\{.*?\})'", section, flags=re.S)
    assert len(bodies) == 2
    sent = post_json(api, json.loads(bodies[0]))
    assert sent.status_code == 200, sent.text
    url = httpx.post(
        f"{api.url}/ingestion/generate-upload-url", json=json.loads(bodies[1]), headers=ACME
    )
    assert url.status_code == 200
    start_sh = (Path(__file__).resolve().parent.parent / "scripts" / "start.sh").read_text()
    first = re.search(r"-d '(\{.*?\})'", start_sh, flags=re.S)
    assert first and post_json(api, json.loads(first.group(1))).status_code == 200


def test_concurrent_uploads_are_each_written_whole_once(api: RunningApi) -> None:
    import asyncio

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api.url, headers=ACME, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/ingestion/upload-json",
                        json={"stream": "contact_event", "data": [event(i), event(i + 1000)]},
                    )
                    for i in range(150)
                )
            )

    responses = asyncio.run(send_all())
    assert {r.status_code for r in responses} == {200}
    keys = [r.json()["file_key"] for r in responses]
    assert len(set(keys)) == 150
    assert sorted(files_under(api.landing_url)) == sorted(keys)  # no temporary file left
    seen = set()
    for key in keys:
        lines = (Path(api.landing_url) / key).read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert (
            len(records) == 2
            and records[1]["contact_id"] == f"user-{int(records[0]['contact_id'][5:]) + 1000}"
        )
        seen.add(records[0]["contact_id"])
    assert len(seen) == 150


def test_a_write_that_fails_is_a_503_and_leaves_nothing(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingest_pipeline.api.uploads as uploads

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(uploads.os, "fsync", full_disk)
    response = post_json(api, {"stream": "account", "data": [account()]})
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert files_under(api.landing_url) == []


def test_the_api_on_an_s3_landing_zone(
    s3_bucket: tuple[Any, str], tmp_path: Path, key_env: None
) -> None:
    client, bucket = s3_bucket
    with running_api(f"s3://{bucket}/drop", tmp_path / "w.duckdb") as api:

        def objects() -> list[str]:
            listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
            return sorted(o["Key"] for o in listed)

        body = {"stream": "account", "data": [account(1)]}
        sent = post_json(api, body, {**ACME, "Idempotency-Key": "s3-1"})
        assert sent.status_code == 200, sent.text
        again = post_json(api, body, {**ACME, "Idempotency-Key": "s3-1"})
        assert again.json() == sent.json()
        key = sent.json()["file_key"]
        stored = client.get_object(Bucket=bucket, Key=f"drop/{key}")["Body"].read()
        assert json.loads(stored) == account(1)
        assert [k for k in objects() if "/objects/" in k] == [f"drop/{key}"]
        assert status(api, key).json()["status"] == "queued"
        assert post_json(api, {"stream": "account", "data": [{}]}).status_code == 422

        given = upload_url(api)
        url = given["upload_url"]
        assert url.startswith(os.environ["AWS_ENDPOINT_URL"]) and "uploads" in url
        data = jsonl_gz([event(1)])
        assert put(url, data).status_code == 200
        assert status(api, given["file_key"]).json()["status"] == "awaiting confirmation"
        assert confirm(api, given["file_key"], GLOBEX).status_code == 404
        assert confirm(api, given["file_key"]).status_code == 200
        assert confirm(api, given["file_key"]).status_code == 200  # twice: fine
        moved = client.get_object(Bucket=bucket, Key=f"drop/{given['file_key']}")["Body"].read()
        assert moved == data
        assert not [k for k in objects() if "/uploads/" in k]  # the staging copy is gone
        assert status(api, given["file_key"]).json()["status"] == "queued"

        empty = upload_url(api)
        assert put(empty["upload_url"], b"").status_code == 200
        refused = confirm(api, empty["file_key"])
        assert refused.status_code == 422 and "gzip" in refused.text


def test_the_cli_serves_with_workers_and_never_logs_a_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    from ingest_pipeline_tests.api_server import free_port, wait_until_serving

    config = tmp_path / "ingest.yaml"
    config.write_text("tenants:\n  acme:\n    api_key_env: CLI_TEST_KEY\n")
    secret = "cli-secret-key-7f3a9c"
    port = free_port()
    env = {
        **os.environ,
        "INGEST_CONFIG": str(config),
        "CLI_TEST_KEY": secret,
        "INGEST_LANDING_URL": str(tmp_path / "landing"),
        "INGEST_WAREHOUSE_PATH": str(tmp_path / "w.duckdb"),
        "INGEST_API_PORT": str(port),
    }
    log = tmp_path / "api.log"
    cli = Path(sys.executable).parent / "ingest-pipeline"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(cli), "api", "--workers", "2"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url)
        headers = {"x-api-key": secret}
        body = {"stream": "account", "data": [account()]}
        keys = set()
        for _ in range(10):  # both workers answer; each knows the key and the signing key
            sent = httpx.post(f"{url}/ingestion/upload-json", json=body, headers=headers)
            assert sent.status_code == 200, sent.text
            keys.add(sent.json()["file_key"])
            given = httpx.post(
                f"{url}/ingestion/generate-upload-url", json={"stream": "account"}, headers=headers
            ).json()
            assert put(given["upload_url"], jsonl_gz([account()])).status_code == 200
        assert len(keys) == 10
        assert httpx.post(f"{url}/ingestion/upload-json", json=body).status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text()
    assert "POST /ingestion/upload-json" in text  # the access log is on
    assert secret not in text

    assert re.search(r"signature=[0-9a-f]{16}", text) is None  # the upload URLs' capability
    assert "signature=<redacted>" in text


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"tenants": {"../globex": {}}}, "tenants.../globex: a tenant name is"),
        ({"tenants": {"acme": {"api_key_envs": ["not a name"]}}}, "api_key_envs"),
        ({"api": {"max_json_bytes": 0}}, "api.max_json_bytes"),
        ({"api": {"rate_limit": {"per_second": 0}}}, "api.rate_limit.per_second"),
        ({"api": {"unknown": 1}}, "api.unknown: unknown key"),
    ],
)
def test_api_configuration_errors_name_their_path(config: dict, problem: str) -> None:
    from ingest_pipeline.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_config(config)


def test_keys_are_read_from_their_variables_and_compared_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ingest_pipeline.api.keys import KeyRing
    from ingest_pipeline.config import parse_config

    config = parse_config({"tenants": {"acme": {"api_key_envs": ["K1", "K2"]}, "b": {}}})
    ring = KeyRing.from_config(config, {"K1": "first-key", "K2": "second-key"})
    assert len(ring) == 2
    assert ring.caller("first-key").tenant == ring.caller("second-key").tenant == "acme"
    assert ring.caller("first-key").key_id != ring.caller("second-key").key_id
    for wrong in ("first-ke", "first-key ", "", None, "FIRST-KEY"):
        assert ring.caller(wrong) is None
    assert len(KeyRing.from_config(config, {"K1": "  "})) == 0  # a blank variable is no key


def test_the_group_commit_outlives_an_unexpected_error(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingest_pipeline.api.uploads as uploads

    def broken(folder: Path) -> None:
        raise RuntimeError("not an OSError")

    with monkeypatch.context() as patch:
        patch.setattr(uploads, "_sync_folder", broken)
        failed = post_json(api, {"stream": "account", "data": [account(1)]})
    assert failed.status_code == 503
    # the thread that commits every later upload is still there
    sent = httpx.post(
        f"{api.url}/ingestion/upload-json",
        json={"stream": "account", "data": [account(2)]},
        headers=ACME,
        timeout=10,
    )
    assert sent.status_code == 200
    assert sent.json()["file_key"] in files_under(api.landing_url)
