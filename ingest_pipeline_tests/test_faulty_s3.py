"""The fault-injecting S3 proxy (faulty_s3.py) itself, against the session's moto server.

Each fault test asserts both the client-side failure (the exact botocore exception class) and
the proxy's record of the injected fault, so it fails if the proxy passed the request through.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    FlexibleChecksumError,
    IncompleteReadError,
    ResponseStreamingError,
)

from ingest_pipeline.landing import S3Landing
from ingest_pipeline_tests.faulty_s3 import FaultyS3, RequestRecord, faulty_s3, parse_s3_target

# One attempt, no retries: note that botocore's `max_attempts` counts *retries* (1 -> 2 requests);
# `total_max_attempts` counts requests.
ONE_ATTEMPT = Config(retries={"mode": "standard", "total_max_attempts": 1})

BIG = os.urandom(3 * 1024 * 1024 + 17)  # several 64 KiB proxy chunks and 1 MiB reader chunks


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[FaultyS3]:
    with faulty_s3(moto_endpoint) as p:
        yield p


@pytest.fixture
def client(proxy: FaultyS3, aws_env: str) -> Any:
    return boto3.client("s3", endpoint_url=proxy.endpoint, config=ONE_ATTEMPT)


@pytest.fixture
def bucket(proxy: FaultyS3, client: Any) -> str:
    """A fresh bucket with three objects, created through the proxy; records start empty."""
    name = f"faulty-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    for key, body in (("big.bin", BIG), ("small.txt", b"hello, world\n" * 100), ("other", b"x")):
        client.put_object(Bucket=name, Key=key, Body=body)
    proxy.clear_requests()
    return name


def _get(client: Any, bucket: str, key: str, **kwargs: Any) -> bytes:
    return client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()


def _faulted(proxy: FaultyS3, key: str) -> list[RequestRecord]:
    return [r for r in proxy.requests(key) if r.fault is not None]


# --- pass-through ---------------------------------------------------------------------------------


def test_pass_through_put_get_list_head_delete(
    proxy: FaultyS3, client: Any, bucket: str, tmp_path: Path
) -> None:
    assert proxy.endpoint.startswith("http://127.0.0.1:")
    assert _get(client, bucket, "big.bin") == BIG
    assert client.head_object(Bucket=bucket, Key="big.bin")["ContentLength"] == len(BIG)
    # A file-like body goes out with Expect: 100-continue and aws-chunked framing + trailer
    # checksum (Transfer-Encoding: chunked), relayed as it came.
    source = tmp_path / "upload.bin"
    source.write_bytes(BIG[:200_000])
    client.upload_file(str(source), bucket, "dir/with space/ü+x.bin")
    assert _get(client, bucket, "dir/with space/ü+x.bin") == BIG[:200_000]
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(
        ["big.bin", "small.txt", "other", "dir/with space/ü+x.bin"]
    )
    client.delete_object(Bucket=bucket, Key="other")
    with pytest.raises(ClientError) as err:
        client.head_object(Bucket=bucket, Key="other")
    assert err.value.response["Error"]["Code"] == "404"
    # Keys are recorded URL-decoded, bucket-level requests with key "".
    assert proxy.count("dir/with space/ü+x.bin", "PUT") == 1
    assert proxy.count("big.bin") == 1
    assert any(r.method == "GET" and r.key == "" and r.status == 200 for r in proxy.requests())
    assert all(r.fault is None and r.bucket == bucket for r in proxy.requests())


def test_aws_endpoint_url_variable_and_landing(
    proxy: FaultyS3, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    landing = S3Landing(f"s3://{bucket}")  # its own default client, from the environment
    assert [o.key for o in landing.list()] == ["big.bin", "other", "small.txt"]
    obj = landing.download("big.bin", tmp_path / "big.bin")
    assert (tmp_path / "big.bin").read_bytes() == BIG and obj.size == len(BIG)
    assert proxy.count("big.bin") == 1


def test_parse_s3_target_path_and_virtual_host() -> None:
    assert parse_s3_target("127.0.0.1:9000", "/b/a%20b/c%2Bd?x-id=GetObject") == ("b", "a b/c+d")
    assert parse_s3_target("127.0.0.1:9000", "/b?list-type=2") == ("b", "")
    assert parse_s3_target("b.localhost:9000", "/k/%C3%BC") == ("b", "k/ü")
    assert parse_s3_target("localhost:9000", "/b/k") == ("b", "k")


# --- fail ---------------------------------------------------------------------------------------


def test_fail_answers_with_the_status_and_code(proxy: FaultyS3, client: Any, bucket: str) -> None:
    fault = proxy.fail("big", status=500, code="InternalError")
    with pytest.raises(ClientError) as err:
        _get(client, bucket, "big.bin")
    assert err.value.response["Error"]["Code"] == "InternalError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    # Other keys, and HEAD of the same key (GET only by default), are unaffected meanwhile.
    assert _get(client, bucket, "small.txt") == b"hello, world\n" * 100
    assert client.head_object(Bucket=bucket, Key="big.bin")["ContentLength"] == len(BIG)
    assert fault.hits == 1
    assert [(r.method, r.status, r.fault) for r in proxy.requests("big.bin")] == [
        ("GET", 500, "fail"),
        ("HEAD", 200, None),
    ]


def test_throttle_until_cleared_then_normal_service(
    proxy: FaultyS3, client: Any, bucket: str
) -> None:
    proxy.fail(lambda key: key.endswith(".txt"), 503, "SlowDown", methods=("GET", "HEAD"))
    for _ in range(3):
        with pytest.raises(ClientError) as err:
            _get(client, bucket, "small.txt")
        assert err.value.response["Error"]["Code"] == "SlowDown"
    with pytest.raises(ClientError) as err:
        client.head_object(Bucket=bucket, Key="small.txt")
    assert err.value.response["Error"]["Code"] == "503"  # a HEAD error has no body to name it
    assert _get(client, bucket, "other") == b"x"
    proxy.clear()
    assert _get(client, bucket, "small.txt") == b"hello, world\n" * 100
    assert [r.status for r in proxy.requests("small.txt")] == [503, 503, 503, 503, 200]


def test_default_retries_absorb_a_fault_with_times_2(
    proxy: FaultyS3, bucket: str, aws_env: str
) -> None:
    retrying = boto3.client("s3", endpoint_url=proxy.endpoint)  # standard mode: 3 attempts
    fault = proxy.fail("small.txt", 503, "SlowDown", times=2)
    assert _get(retrying, bucket, "small.txt") == b"hello, world\n" * 100
    assert fault.hits == 2
    assert [r.status for r in proxy.requests("small.txt")] == [503, 503, 200]
    # Spent: the next request passes straight through.
    assert _get(retrying, bucket, "small.txt") == b"hello, world\n" * 100
    assert proxy.count("small.txt") == 4


# --- connection faults ----------------------------------------------------------------------------


def test_reset_before_answering_is_connection_closed_error(
    proxy: FaultyS3, client: Any, bucket: str, tmp_path: Path
) -> None:
    proxy.reset("big.bin")
    landing = S3Landing(f"s3://{bucket}", client=client)
    with pytest.raises(ConnectionClosedError) as err:
        landing.download("big.bin", tmp_path / "out")
    # An RST, not a plain close (that would be RemoteDisconnected, also ConnectionClosedError).
    assert isinstance(err.value.kwargs["error"].args[1], ConnectionResetError)
    assert not (tmp_path / "out").exists()
    assert [(r.status, r.fault) for r in proxy.requests("big.bin")] == [(None, "reset")]
    # The pool's other connections, and the next request, are fine.
    assert _get(client, bucket, "other") == b"x"
    proxy.clear()
    landing.download("big.bin", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == BIG


def test_reset_mid_body_is_response_streaming_error(
    proxy: FaultyS3, client: Any, bucket: str, tmp_path: Path
) -> None:
    proxy.reset("big.bin", after_fraction=0.4, times=1)
    landing = S3Landing(f"s3://{bucket}", client=client)
    with pytest.raises(ResponseStreamingError) as err:
        landing.download("big.bin", tmp_path / "out")
    assert isinstance(err.value.kwargs["error"].args[1], ConnectionResetError)
    assert not (tmp_path / "out").exists()
    assert [(r.status, r.fault) for r in proxy.requests("big.bin")] == [(200, "reset")]
    landing.download("big.bin", tmp_path / "out")  # times=1: spent
    assert (tmp_path / "out").read_bytes() == BIG


def test_truncated_body_raises_while_reading(
    proxy: FaultyS3, client: Any, bucket: str, tmp_path: Path
) -> None:
    proxy.truncate("big.bin", fraction=0.5)
    # The landing reader (iter_chunks of 1 MiB): urllib3 returns the short read, botocore's own
    # Content-Length check raises.
    landing = S3Landing(f"s3://{bucket}", client=client)
    with pytest.raises(IncompleteReadError) as err:
        landing.download("big.bin", tmp_path / "out")
    assert err.value.kwargs == {"actual_bytes": len(BIG) // 2, "expected_bytes": len(BIG)}
    assert not (tmp_path / "out").exists()
    # read() of the whole body: urllib3 raises IncompleteRead (a ProtocolError) itself.
    response = client.get_object(Bucket=bucket, Key="big.bin")
    assert response["ContentLength"] == len(BIG)  # the upstream header is kept
    with pytest.raises(ResponseStreamingError, match="IncompleteRead"):
        response["Body"].read()
    assert _get(client, bucket, "small.txt") == b"hello, world\n" * 100
    assert [(r.status, r.fault) for r in proxy.requests("big.bin")] == [(200, "truncate")] * 2


# --- corruption ---------------------------------------------------------------------------------


def test_corrupt_checksum(proxy: FaultyS3, client: Any, bucket: str, aws_env: str) -> None:
    proxy.corrupt_checksum("big.bin")
    # botocore's default (response_checksum_validation="when_supported") asks for the checksum
    # and verifies it at the end of the body: PutObject stored a CRC32 by default.
    with pytest.raises(FlexibleChecksumError):
        _get(client, bucket, "big.bin")
    lax = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        config=Config(
            retries={"total_max_attempts": 1}, response_checksum_validation="when_required"
        ),
    )
    with pytest.raises(FlexibleChecksumError):
        _get(lax, bucket, "big.bin", ChecksumMode="ENABLED")
    # Without ChecksumMode the lax client returns the altered bytes silently: same length, one
    # byte different; only the caller's own check (here a CRC) notices.
    body = _get(lax, bucket, "big.bin")
    assert len(body) == len(BIG)
    assert sum(a != b for a, b in zip(body, BIG, strict=True)) == 1
    assert zlib.crc32(body) != zlib.crc32(BIG)
    assert _get(client, bucket, "small.txt") == b"hello, world\n" * 100
    assert [r.fault for r in proxy.requests("big.bin")] == ["corrupt_checksum"] * 3


def test_corrupt_checksum_is_silent_without_a_full_object_checksum(
    proxy: FaultyS3, client: Any, bucket: str, tmp_path: Path, aws_env: str
) -> None:
    # A multipart upload gets a COMPOSITE checksum ("...==-2"), which botocore does not validate;
    # an object uploaded without a checksum has none to validate.
    source = tmp_path / "multipart.bin"
    source.write_bytes(BIG * 2)  # 6 MiB: two parts of 5 MiB (S3's minimum) and 1 MiB
    five_mib = 5 * 1024 * 1024
    client.upload_file(
        str(source),
        bucket,
        "multipart.bin",
        Config=TransferConfig(multipart_threshold=five_mib, multipart_chunksize=five_mib),
    )
    boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        config=Config(request_checksum_calculation="when_required"),
    ).put_object(Bucket=bucket, Key="unsummed.bin", Body=BIG)
    proxy.corrupt_checksum(".bin")
    multipart = client.get_object(Bucket=bucket, Key="multipart.bin", ChecksumMode="ENABLED")
    assert multipart["ChecksumType"] == "COMPOSITE"
    assert multipart["ChecksumCRC32"].endswith("-2")
    assert multipart["Body"].read() != BIG * 2
    unsummed = client.get_object(Bucket=bucket, Key="unsummed.bin", ChecksumMode="ENABLED")
    assert "ChecksumCRC32" not in unsummed
    assert unsummed["Body"].read() != BIG
    with pytest.raises(FlexibleChecksumError):  # the single-PUT object still fails
        _get(client, bucket, "big.bin")
    assert proxy.count("multipart.bin") == proxy.count("unsummed.bin") == 1


# --- records --------------------------------------------------------------------------------------


def test_records_count_fetches_across_threads(proxy: FaultyS3, client: Any, bucket: str) -> None:
    proxy.clear_requests()
    fault = proxy.fail("other", 500, "InternalError", times=5)
    keys = ["small.txt", "other"] * 10

    def fetch(key: str) -> int:
        try:
            return len(_get(client, bucket, key))
        except ClientError:
            return -1

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, keys))
    assert results.count(-1) == 5 and fault.hits == 5
    assert proxy.count("small.txt") == 10 and proxy.count("other") == 10
    assert proxy.count("other", None) == 10
    statuses = sorted(r.status or 0 for r in proxy.requests("other", "GET"))
    assert statuses == [200] * 5 + [500] * 5
    assert not _faulted(proxy, "small.txt")
    # A substring never matches bucket-level requests (key "").
    proxy.fail("", 500)
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 3
