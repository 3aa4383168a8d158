"""The landing zone against a real folder and a real S3 API (moto's server on loopback)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ingest_pipeline.landing import (
    FileVanished,
    LandedObject,
    LandingZone,
    LocalLanding,
    S3Landing,
    is_s3_url,
    landing_from_url,
    split_s3_url,
)


def test_put_list_stat_download_delete_round_trip(landing: LandingZone, tmp_path: Path) -> None:
    source = tmp_path / "upload.jsonl.gz"
    source.write_bytes(gzip.compress(b'{"contact_key": "c1"}\n'))
    put_bytes = landing.put("track/2026/a.jsonl", b'{"contact_key": "c2"}\n')
    put_path = landing.put("track/2026/b.jsonl.gz", source)

    listed = list(landing.list())
    assert [o.key for o in listed] == ["track/2026/a.jsonl", "track/2026/b.jsonl.gz"]
    assert listed == [put_bytes, put_path]
    for obj in listed:
        assert obj.last_modified.utcoffset() is not None and not obj.last_modified.utcoffset()
        assert obj.etag and '"' not in obj.etag
    assert listed[0].size == len(b'{"contact_key": "c2"}\n')
    if isinstance(landing, S3Landing):
        assert listed[1].uri == f"s3://{landing.bucket}/landing/track/2026/b.jsonl.gz"
    else:
        assert listed[1].uri == str(Path(landing.url) / "track/2026/b.jsonl.gz")
        assert Path(listed[1].uri).is_absolute()

    assert landing.stat("track/2026/b.jsonl.gz") == put_path
    assert landing.stat("track/2026/missing.csv") is None

    dest = tmp_path / "download"
    assert landing.download(put_path, dest) == put_path
    assert dest.read_bytes() == source.read_bytes()
    assert landing.download("track/2026/a.jsonl", dest) == put_bytes
    assert dest.read_bytes() == b'{"contact_key": "c2"}\n'

    landing.delete("track/2026/a.jsonl")
    landing.delete("track/2026/never-existed.csv")  # no error
    assert landing.stat("track/2026/a.jsonl") is None
    assert [o.key for o in landing.list()] == ["track/2026/b.jsonl.gz"]


def test_list_filters_by_prefix_in_key_order(landing: LandingZone) -> None:
    keys = [
        "track/b.csv",
        "track/a/z.csv",
        "track.csv",
        "tracking/x.csv",
        "crm/c.csv",
        "track/a.csv",
    ]
    for key in keys:
        landing.put(key, key.encode())
    assert [o.key for o in landing.list()] == sorted(keys)  # S3's order: lexicographic by key
    assert [o.key for o in landing.list("track/")] == [
        "track/a.csv",
        "track/a/z.csv",
        "track/b.csv",
    ]
    assert [o.key for o in landing.list("track/a")] == ["track/a.csv", "track/a/z.csv"]
    assert [o.key for o in landing.list("nothing/")] == []


def test_s3_listing_stays_under_its_prefix_and_skips_folder_markers(
    s3_bucket: tuple[Any, str],
) -> None:
    client, bucket = s3_bucket
    for key in ["landing/track/", "landing/track/a.csv", "landing-other/b.csv", "c.csv"]:
        client.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else b"x")
    zone = S3Landing(f"s3://{bucket}/landing/", client=client)
    assert zone.url == f"s3://{bucket}/landing"
    assert [o.key for o in zone.list()] == ["track/a.csv"]
    # A whole bucket as the landing zone sees everything but the folder marker.
    whole = S3Landing(f"s3://{bucket}", client=client)
    assert [o.key for o in whole.list()] == ["c.csv", "landing-other/b.csv", "landing/track/a.csv"]


def test_s3_keys_that_are_not_file_paths_still_work(
    s3_bucket: tuple[Any, str], tmp_path: Path
) -> None:
    client, bucket = s3_bucket
    odd = "track//../a b.csv"  # legal in S3, and clients do produce such keys
    client.put_object(Bucket=bucket, Key=f"landing/{odd}", Body=b"contact_key\n")
    zone = S3Landing(f"s3://{bucket}/landing", client=client)
    (listed,) = zone.list()
    assert listed.key == odd and zone.stat(odd) == listed
    assert zone.download(listed, tmp_path / "out.csv") == listed


def test_local_listing_skips_in_progress_hidden_files(tmp_path: Path) -> None:
    zone = LocalLanding(tmp_path / "landing")
    (tmp_path / "landing" / "track").mkdir(parents=True)
    (tmp_path / "landing" / "track" / ".a.csv.partial").write_bytes(b"half")
    zone.put("track/a.csv", b"whole")
    assert [o.key for o in zone.list()] == ["track/a.csv"]


def test_download_of_deleted_object_raises_file_vanished(
    landing: LandingZone, tmp_path: Path
) -> None:
    obj = landing.put("track/a.csv", b"contact_key\nc1\n")
    landing.delete(obj.key)
    dest = tmp_path / "out.csv"
    with pytest.raises(FileVanished):
        landing.download(obj, dest)
    with pytest.raises(FileVanished):
        landing.download(obj.key, dest)
    assert not dest.exists()  # no partial file left for a caller to parse


def test_download_of_object_replaced_after_listing_raises_file_vanished(
    landing: LandingZone, tmp_path: Path
) -> None:
    landing.put("track/a.csv", b"contact_key\nc1\n")
    (listed,) = landing.list("track/")
    replacement = landing.put("track/a.csv", b"contact_key\nc1\nc2\n")
    assert replacement.etag != listed.etag
    dest = tmp_path / "out.csv"
    with pytest.raises(FileVanished):
        landing.download(listed, dest)  # the version we listed is gone
    assert not dest.exists()
    # The current version is still readable by key or by its own listing.
    assert landing.download("track/a.csv", dest) == replacement
    assert dest.read_bytes() == b"contact_key\nc1\nc2\n"
    assert landing.download(replacement, dest) == replacement


# Downloads one object in a fresh process; prints how far its resident memory rose above what it
# was just before the download (KiB). Linux: "5" in clear_refs resets the peak (VmHWM), so the
# imports' own peak does not hide the download's.
_DOWNLOAD_CHILD = """
import sys
from pathlib import Path
from ingest_pipeline.landing import landing_from_url

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

landing = landing_from_url(sys.argv[1])
obj = landing.stat(sys.argv[2])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status_kib("VmRSS")
landing.download(obj, Path(sys.argv[3]))
print(status_kib("VmHWM") - before)
"""


def _download_growth_kib(landing: LandingZone, key: str, dest: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD_CHILD, landing.url, key, str(dest)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(done.stdout.split()[-1])


def test_download_streams_to_disk(landing: LandingZone, tmp_path: Path) -> None:
    """The download runs in a child process (the moto server, which holds the whole body while
    answering, stays in this one): its memory grows by far less than the incompressible object,
    which reading it whole would add."""
    size = 48 * 1024 * 1024
    landing.put("big/blob.bin", os.urandom(size))

    growth_kib = _download_growth_kib(landing, "big/blob.bin", tmp_path / "blob.bin")

    assert (tmp_path / "blob.bin").stat().st_size == size
    assert growth_kib * 1024 < size // 3, growth_kib


def test_url_helpers() -> None:
    assert is_s3_url("s3://bucket/prefix") and is_s3_url("S3://bucket")
    assert not is_s3_url("./data/landing") and not is_s3_url("/tmp/s3://x")
    assert split_s3_url("s3://bucket") == ("bucket", "")
    assert split_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    with pytest.raises(ValueError):
        split_s3_url("s3:///prefix")
    with pytest.raises(ValueError):
        split_s3_url("/local/folder")


def test_landing_from_url_picks_the_backend(s3_bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = s3_bucket
    # No client passed: boto3 finds the server through AWS_ENDPOINT_URL, as in production.
    zone = landing_from_url(f"s3://{bucket}/drop")
    assert isinstance(zone, S3Landing) and zone.prefix == "drop"
    zone.put("identify/a.json", b"{}")
    assert [o.key for o in landing_from_url(f"s3://{bucket}/drop", s3_client=client).list()] == [
        "identify/a.json"
    ]
    local = landing_from_url(str(tmp_path / "new" / "folder"))
    assert isinstance(local, LocalLanding) and (tmp_path / "new" / "folder").is_dir()


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside.csv", "a//b.csv", "track/"])
def test_invalid_keys_are_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalLanding(tmp_path / "landing").put(key, b"x")


@pytest.mark.parametrize("prefix", ["../", "track/../../", "/etc/"])
def test_local_listing_refuses_prefixes_outside_the_root(prefix: str, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_bytes(b"x")
    with pytest.raises(ValueError):
        list(LocalLanding(tmp_path / "landing").list(prefix))


def test_landed_object_dict_round_trip(landing: LandingZone) -> None:
    obj = landing.put("crm/leads.csv", b"email\n")
    assert LandedObject.from_dict(obj.to_dict()) == obj


# --- end-to-end integrity: the bytes downloaded are checked against the ETag --------------------


@pytest.mark.parametrize("multipart", [False, True], ids=["single-part", "multipart"])
def test_a_download_corrupted_in_transit_is_refused_by_its_etag(
    s3_bucket, moto_endpoint: str, tmp_path: Path, multipart: bool
) -> None:
    """botocore validates a stored CRC only for single-part objects uploaded with one; an object
    uploaded without a checksum, or in parts, must still not be read corrupted."""
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    from ingest_pipeline.landing import ChecksumMismatch
    from ingest_pipeline_tests.faulty_s3 import faulty_s3

    _client, bucket = s3_bucket
    body = os.urandom(12 * 1024 * 1024 if multipart else 300_000)
    uploader = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        config=Config(request_checksum_calculation="when_required"),
    )
    src = tmp_path / "src.bin"
    src.write_bytes(body)
    uploader.upload_file(
        str(src),
        bucket,
        "drop/track/f.jsonl",
        Config=TransferConfig(
            multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
        ),
    )
    etag = uploader.head_object(Bucket=bucket, Key="drop/track/f.jsonl")["ETag"].strip('"')
    assert etag.endswith("-3") if multipart else "-" not in etag
    with faulty_s3(moto_endpoint) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.endpoint)
        zone = S3Landing(f"s3://{bucket}/drop", client=client)
        obj = zone.stat("track/f.jsonl")
        assert obj is not None
        zone.download(obj, tmp_path / "ok.bin")  # intact: accepted
        assert (tmp_path / "ok.bin").read_bytes() == body
        proxy.corrupt_checksum("track/f.jsonl")
        with pytest.raises(ChecksumMismatch, match="do not match the object's ETag"):
            zone.download(obj, tmp_path / "bad.bin")
        assert not (tmp_path / "bad.bin").exists()
