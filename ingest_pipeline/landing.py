"""The landing zone: where clients drop files, as a local folder or an S3 bucket/prefix.

One small interface (`LandingZone`) with two implementations, so everything above it — discovery,
parsing, the sensor — runs the same against a folder in development and tests and against S3 (or
any S3-compatible server reached through the standard ``AWS_ENDPOINT_URL`` variables) in
production. Nothing here knows about Dagster.

Keys are always relative to the landing root and '/'-separated (``track/2026/a.jsonl.gz``). An
object's identity for "exactly once" is (uri, etag): a new upload at the same key with different
content has a different ETag and is a different object.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# Streaming buffer for downloads: large enough for throughput, small enough that memory stays flat
# whatever the file size (files may be 2 GB compressed).
_CHUNK_BYTES = 1024 * 1024

# S3 error codes meaning "the object we listed is no longer there as listed".
_VANISHED_CODES = {"NoSuchKey", "404", "NotFound", "PreconditionFailed", "412"}


@dataclass(frozen=True)
class LandedObject:
    """One file in the landing zone, as seen by a listing."""

    key: str  # relative to the landing root, '/'-separated
    etag: str  # S3 ETag without quotes; local folder: f"{size}-{mtime_ns}"
    size: int
    last_modified: datetime  # tz-aware UTC; S3 LastModified, local folder: inode change time
    uri: str  # s3://bucket/<root prefix>/<key>, or the absolute local path

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (run config, cursors, metadata)."""
        data = asdict(self)
        data["last_modified"] = self.last_modified.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LandedObject:
        last_modified = datetime.fromisoformat(str(data["last_modified"]))
        if last_modified.tzinfo is None:  # be lenient with hand-written config: naive means UTC
            last_modified = last_modified.replace(tzinfo=UTC)
        return cls(
            key=str(data["key"]),
            etag=str(data["etag"]),
            size=int(data["size"]),
            last_modified=last_modified.astimezone(UTC),
            uri=str(data["uri"]),
        )


@dataclass
class FolderListing:
    """One folder's own entries (configured imports never look inside its sub-folders)."""

    files: list[LandedObject] = field(default_factory=list)  # directly in the folder, by name
    subfolders: list[str] = field(default_factory=list)  # names, not looked into


class ChecksumMismatch(Exception):
    """The bytes downloaded are not the object's (its ETag says otherwise): corrupted in transit."""


class FileVanished(Exception):
    """The object was deleted, or replaced (ETag changed), between listing and reading."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@runtime_checkable
class LandingZone(Protocol):
    url: str

    def list(self, prefix: str = "") -> Iterator[LandedObject]:
        """Every object whose key starts with `prefix`, in key order, folder markers skipped."""
        ...

    def stat(self, key: str) -> LandedObject | None:
        """The object at `key` now, or None if there is none."""
        ...

    def download(self, obj_or_key: LandedObject | str, dest: Path) -> LandedObject:
        """Stream the object to `dest`; with a LandedObject, only that exact version (ETag).

        Returns the version that was written. Raises FileVanished if it is gone or was replaced.
        """
        ...

    def put(self, key: str, body: bytes | Path) -> LandedObject:
        """Write an object (sample data, tests). Readers never see a partial object."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object at `key`; no error if there is none."""
        ...


# --- URL helpers (shared with the lake and export writers) ----------------------------------------


def is_s3_url(url: str) -> bool:
    return url[:5].lower() == "s3://"


def split_s3_url(url: str) -> tuple[str, str]:
    """'s3://bucket/a/b/' -> ('bucket', 'a/b'); the prefix has no leading or trailing '/'."""
    if not is_s3_url(url):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ValueError(f"s3 URL without a bucket: {url!r}")
    return bucket, prefix.strip("/")


def join_key(prefix: str, key: str) -> str:
    """Join an S3 prefix (as returned by split_s3_url) and a relative key."""
    return f"{prefix}/{key}" if prefix else key


class MissingSecret(Exception):
    """An environment variable that a configuration names for a secret is not set."""


# (environment variable, the configuration key that names it), e.g. ("CLIENT_KEY", "s3_access_key_env")
EnvSecret = tuple[str, str]


def s3_client_from_env(
    owner: str,
    *,
    access_key_id: EnvSecret | None = None,
    secret_access_key: EnvSecret | None = None,
    session_token: EnvSecret | None = None,
    region: str | None = None,
) -> Any:
    """A boto3 S3 client with the credentials of someone else's bucket (a configured import's,
    a tenant's landing zone), read from the environment variables the configuration names;
    without a key pair, the standard AWS variables apply. AWS_ENDPOINT_URL still applies (an
    S3-compatible server). `owner` ("import app_opened", "tenant acme") starts the message of
    MissingSecret, which names the variable, never its value."""
    import boto3

    def secret(pair: EnvSecret) -> str:
        name, what = pair
        value = os.environ.get(name)
        if not value:
            raise MissingSecret(f"{owner}: environment variable {name} ({what}) is not set")
        return value

    kwargs: dict[str, Any] = {}
    if access_key_id and secret_access_key:
        kwargs["aws_access_key_id"] = secret(access_key_id)
        kwargs["aws_secret_access_key"] = secret(secret_access_key)
    if session_token:
        kwargs["aws_session_token"] = secret(session_token)
    if region:
        kwargs["region_name"] = region
    return boto3.session.Session().client("s3", **kwargs)


def landing_from_url(url: str, s3_client: Any = None) -> LandingZone:
    """'s3://bucket[/prefix]' -> S3Landing, anything else -> LocalLanding (a folder)."""
    if is_s3_url(url):
        return S3Landing(url, client=s3_client)
    return LocalLanding(url)


def _check_key(key: str) -> str:
    # Keys come from listings and from run config a person may edit: refuse anything that could
    # escape the landing root or that names a folder rather than a file.
    parts = key.split("/")
    if not key or key.startswith("/") or key.endswith("/") or ".." in parts or "" in parts:
        raise ValueError(f"invalid landing key: {key!r}")
    return key


# --- Local folder ---------------------------------------------------------------------------------


class LocalLanding:
    """A folder as a landing zone (development, tests, single-machine deployments).

    Names starting with '.' are skipped by listings: they are in-progress copies (our own `put`,
    rsync, many upload tools write a hidden temporary file and rename it into place).
    """

    def __init__(self, url: str | os.PathLike[str]) -> None:
        text = os.fspath(url)
        if text.startswith("file://"):
            text = text[len("file://") :]
        self.root = Path(text).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def path_of(self, key: str) -> Path:
        """The file of `key` under the root (a key that could escape it is refused)."""
        return self.root.joinpath(*_check_key(key).split("/"))

    def _object(self, key: str, st: os.stat_result, path: Path) -> LandedObject:
        return LandedObject(
            key=key,
            etag=f"{st.st_size}-{st.st_mtime_ns}",
            size=st.st_size,
            # The inode change time, not mtime: it is when the file landed *here* (a copy or a
            # rename into place sets it), and unlike mtime a copy tool cannot preserve an old or
            # future value, which would hide the file from discovery's time window.
            last_modified=datetime.fromtimestamp(st.st_ctime_ns / 1e9, tz=UTC),
            uri=str(path),
        )

    def list(self, prefix: str = "") -> Iterator[LandedObject]:
        # Start at the deepest folder the prefix names, so listing one feed does not walk the others.
        folder, _, _ = prefix.rpartition("/")
        if ".." in folder.split("/") or prefix.startswith("/"):
            raise ValueError(f"invalid landing prefix: {prefix!r}")
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        yield from self._walk(start, f"{folder}/" if folder else "", prefix)

    def _walk(self, folder: Path, key_prefix: str, prefix: str) -> Iterator[LandedObject]:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        # Sort folders as "name/" so the output is in exactly S3's (lexicographic key) order.
        named = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            named.append((entry.name + "/" if is_dir else entry.name, is_dir, entry))
        named.sort(key=lambda item: item[0])
        for name, is_dir, entry in named:
            key = key_prefix + name
            if is_dir:
                # Descend only where keys can still match the prefix.
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif key.startswith(prefix):
                try:
                    st = entry.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                if os.path.isfile(entry.path):
                    yield self._object(key, st, Path(entry.path))

    def list_folder(self) -> FolderListing:
        """The files directly in the root and the names of its sub-folders, in name order;
        hidden ('.') names skipped like `list`'s."""
        listing = FolderListing()
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                listing.subfolders.append(entry.name)
            elif entry.is_file():
                try:
                    listing.files.append(self._object(entry.name, entry.stat(), Path(entry.path)))
                except FileNotFoundError:  # deleted while listing
                    continue
        return listing

    def stat(self, key: str) -> LandedObject | None:
        path = self.path_of(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return self._object(key, st, path)

    def download(self, obj_or_key: LandedObject | str, dest: Path) -> LandedObject:
        key = obj_or_key if isinstance(obj_or_key, str) else obj_or_key.key
        expected = None if isinstance(obj_or_key, str) else obj_or_key.etag
        path = self.path_of(key)
        try:
            source = open(path, "rb")  # closed by the `with source` below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise FileVanished(key, "no longer in the landing zone") from exc
        dest = Path(dest)
        try:
            with source:
                # Check the version of the *open* file: a replacement renamed into place later
                # does not affect what we read.
                before = self._object(key, os.fstat(source.fileno()), path)
                if expected is not None and before.etag != expected:
                    raise FileVanished(
                        key, f"replaced since listing (etag {expected} -> {before.etag})"
                    )
                with open(dest, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK_BYTES)
                after = self._object(key, os.fstat(source.fileno()), path)
                if after.etag != before.etag:  # rewritten in place while we copied
                    raise FileVanished(key, "modified while being read")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return before

    def put(self, key: str, body: bytes | Path) -> LandedObject:
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write a hidden temporary file and rename it: listings never see a half-written file.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            if isinstance(body, bytes | bytearray | memoryview):
                tmp.write_bytes(body)
            else:
                shutil.copyfile(body, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        obj = self.stat(key)
        assert obj is not None
        return obj

    def delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"LocalLanding({self.url!r})"


# --- S3 -------------------------------------------------------------------------------------------


class S3Landing:
    """An S3 bucket (optionally under a prefix) as a landing zone.

    `client` is a boto3 S3 client; by default one is created, which honours the standard AWS
    variables (credentials, region, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3).
    """

    def __init__(self, url: str, client: Any = None) -> None:
        self.bucket, self.prefix = split_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        if client is None:
            import boto3  # only where S3 is used: it costs a quarter second to import

            client = boto3.client("s3")
        self.client = client

    def _full_key(self, key: str) -> str:
        # S3 keys are opaque strings ('a//b', '../x' are valid and get listed): only refuse what
        # cannot name an object.
        if not key or key.endswith("/"):
            raise ValueError(f"invalid landing key: {key!r}")
        return join_key(self.prefix, key)

    def _object(self, key: str, etag: str, size: int, last_modified: datetime) -> LandedObject:
        return LandedObject(
            key=key,
            etag=etag.strip('"'),
            size=int(size),
            last_modified=last_modified.astimezone(UTC),
            uri=f"s3://{self.bucket}/{join_key(self.prefix, key)}",
        )

    def list(self, prefix: str = "") -> Iterator[LandedObject]:
        root = f"{self.prefix}/" if self.prefix else ""
        # The paginator follows continuation tokens: one ListObjectsV2 page holds at most 1,000 keys.
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root + prefix
        )
        for page in pages:
            for item in page.get("Contents", ()):
                full_key: str = item["Key"]
                if full_key.endswith("/"):  # "folder" marker created by consoles and some tools
                    continue
                yield self._object(
                    full_key[len(root) :], item["ETag"], item["Size"], item["LastModified"]
                )

    def list_folder(self) -> FolderListing:
        """The objects directly under the prefix (the S3 delimiter '/': one request per 1,000
        entries however deep the sub-folders go) and the names of its sub-folders."""
        root = f"{self.prefix}/" if self.prefix else ""
        listing = FolderListing()
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root, Delimiter="/"
        )
        for page in pages:
            for common in page.get("CommonPrefixes", ()):
                listing.subfolders.append(common["Prefix"][len(root) :].rstrip("/"))
            for item in page.get("Contents", ()):
                name = item["Key"][len(root) :]
                if name:  # not the folder marker itself
                    listing.files.append(
                        self._object(name, item["ETag"], item["Size"], item["LastModified"])
                    )
        return listing

    def stat(self, key: str) -> LandedObject | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except _client_error() as exc:
            if _error_code(exc) in _VANISHED_CODES:
                return None
            raise
        return self._object(key, head["ETag"], head["ContentLength"], head["LastModified"])

    def download(self, obj_or_key: LandedObject | str, dest: Path) -> LandedObject:
        # One GetObject streamed to disk in fixed-size chunks. IfMatch makes S3 itself refuse (412)
        # a version other than the one listed. (boto3's download_fileobj cannot be used for this:
        # s3transfer does not accept IfMatch in ExtraArgs and only pins the ETag on multipart
        # downloads, so a replaced small file would be read silently.) The bytes are checked
        # against the ETag as they stream (_EtagCheck): botocore validates a stored CRC only for
        # single-part objects uploaded with one, never the ETag.
        key = obj_or_key if isinstance(obj_or_key, str) else obj_or_key.key
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full_key(key)}
        if not isinstance(obj_or_key, str):
            kwargs["IfMatch"] = f'"{obj_or_key.etag}"'
        dest = Path(dest)
        try:
            response = self.client.get_object(**kwargs)
            body = response["Body"]
            check = _EtagCheck.for_response(self, kwargs["Key"], response)
            try:
                with open(dest, "wb") as out:
                    for chunk in body.iter_chunks(_CHUNK_BYTES):
                        out.write(chunk)
                        if check is not None:
                            check.update(chunk)
            finally:
                body.close()
            if check is not None:
                check.verify(key)
        except _client_error() as exc:
            dest.unlink(missing_ok=True)
            code = _error_code(exc)
            if code in {"PreconditionFailed", "412"}:
                raise FileVanished(key, "replaced since listing (ETag changed)") from exc
            if code in _VANISHED_CODES:
                raise FileVanished(key, "no longer in the landing zone") from exc
            raise
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return self._object(
            key, response["ETag"], response["ContentLength"], response["LastModified"]
        )

    def put(self, key: str, body: bytes | Path) -> LandedObject:
        full_key = self._full_key(key)
        if isinstance(body, bytes | bytearray | memoryview):
            self.client.put_object(Bucket=self.bucket, Key=full_key, Body=bytes(body))
        else:
            # upload_file streams from disk and switches to multipart for large files.
            self.client.upload_file(str(body), self.bucket, full_key)
        obj = self.stat(key)
        if obj is None:
            raise FileVanished(key, "deleted right after upload")
        return obj

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full_key(key))

    def __repr__(self) -> str:
        return f"S3Landing({self.url!r})"


class _EtagCheck:
    """The MD5s an object's ETag is made of, computed over the bytes as they are downloaded.

    A single-part upload's ETag is the MD5 of its bytes; a multipart upload's is the MD5 of its
    parts' MD5s, then "-<parts>" (parts are all the size of the first but the last). Objects
    encrypted with SSE-KMS or SSE-C have other ETags: they are not checked here.
    """

    def __init__(self, etag: str, part_size: int | None) -> None:
        self.etag, self.part_size = etag, part_size
        self.digests: list[bytes] = []
        self.current = hashlib.md5(usedforsecurity=False)
        self.in_part = 0

    @classmethod
    def for_response(cls, zone: S3Landing, full_key: str, response: dict) -> _EtagCheck | None:
        etag = str(response.get("ETag", "")).strip('"')
        if response.get("SSECustomerAlgorithm") or str(
            response.get("ServerSideEncryption", "")
        ).startswith("aws:kms"):
            return None
        if _PLAIN_MD5.fullmatch(etag):
            return cls(etag, None)
        match = _MULTIPART_ETAG.fullmatch(etag)
        if match is None:
            return None
        head = zone.client.head_object(Bucket=zone.bucket, Key=full_key, PartNumber=1)
        return cls(etag, int(head["ContentLength"]))

    def update(self, chunk: bytes) -> None:
        if self.part_size is None:
            self.current.update(chunk)
            return
        view = memoryview(chunk)
        while view:
            take = min(len(view), self.part_size - self.in_part)
            self.current.update(view[:take])
            self.in_part += take
            view = view[take:]
            if self.in_part == self.part_size:
                self.digests.append(self.current.digest())
                self.current, self.in_part = hashlib.md5(usedforsecurity=False), 0

    def verify(self, key: str) -> None:
        if self.part_size is None:
            got = self.current.hexdigest()
        else:
            if self.in_part:
                self.digests.append(self.current.digest())
            got = f"{hashlib.md5(b''.join(self.digests), usedforsecurity=False).hexdigest()}"
            got += f"-{len(self.digests)}"
        if got != self.etag:
            raise ChecksumMismatch(
                f"{key}: the bytes received do not match the object's ETag ({got} instead of "
                f"{self.etag}): corrupted in transit"
            )


_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")
_MULTIPART_ETAG = re.compile(r"[0-9a-f]{32}-[0-9]+")


def _client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", {})
    error = response.get("Error", {})
    code = str(error.get("Code", ""))
    if not code:
        code = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code
