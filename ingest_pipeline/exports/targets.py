"""Where flow files are delivered: an S3 bucket, an SFTP server or a local folder.

Every target writes a file so that it appears at its final name only once complete — S3 makes an
object visible when its upload completes; SFTP and folders write a hidden temporary name
(`.<name>.<random>.tmp`) in the same directory and rename it into place. export.py writes a data
file before its control file, so a control file never points at a missing or partial data file.

Keys are relative to the target root and '/'-separated (`feeds/acme/2026/11/22/<name>`).
Secrets (SFTP password, private key) are read from the environment variables a flow names and
never appear in URLs, logs, messages or metadata.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import urlparse

import boto3

from ingest_pipeline.config import FlowConfig
from ingest_pipeline.landing import is_s3_url, join_key, split_s3_url

T = TypeVar("T")

SFTP_CONNECT_TIMEOUT_SECONDS = 30.0


class ExportTargetError(RuntimeError):
    """A target that cannot be used as configured (missing secret, bad URL, refused login)."""


class ExportTarget(Protocol):
    url: str  # the target without secrets
    bucket: str  # control files' "bucket": the S3 bucket, the SFTP host, the folder
    prefix: str  # the root inside it ('' for none)

    def file_url(self, key: str) -> str:
        """Full URL of the file at `key`."""
        ...

    def put_file(self, local: Path, key: str) -> None:
        """Deliver a local file; when this returns the file is complete at its final name."""
        ...

    def put_bytes(self, body: bytes, key: str) -> None:
        """Deliver a small file (control files) the same way."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> ExportTarget: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or ".." in parts or "" in parts:
        raise ValueError(f"invalid export key: {key!r}")
    return key


class _Closing:
    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- folder ---------------------------------------------------------------------------------------


class FolderTarget(_Closing):
    """A local (or mounted) folder. Files are written to a hidden temporary name, flushed to
    disk, then renamed over the final name with os.replace (atomic on one file system)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        text = os.fspath(url)
        if text.startswith("file://"):
            text = text[len("file://") :]
        self.root = Path(text).expanduser().resolve()
        self.url = str(self.root)
        self.bucket = str(self.root)
        self.prefix = ""

    def path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

    def file_url(self, key: str) -> str:
        return self.path(key).as_uri()

    def _replace(self, key: str, write: Callable[[Path], None]) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            write(tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_file(self, local: Path, key: str) -> None:
        self._replace(key, lambda tmp: shutil.copyfile(local, tmp))

    def put_bytes(self, body: bytes, key: str) -> None:
        self._replace(key, lambda tmp: tmp.write_bytes(body))

    def __repr__(self) -> str:
        return f"FolderTarget({self.url!r})"


# --- S3 -------------------------------------------------------------------------------------------


class S3Target(_Closing):
    """`s3://bucket[/prefix]` through boto3 (standard AWS variables: credentials, region,
    AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3). An object is visible only once its upload — single
    PUT or multipart — has completed."""

    def __init__(self, url: str, client: Any = None) -> None:
        self.bucket, self.prefix = split_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.client = client if client is not None else boto3.client("s3")

    def key(self, key: str) -> str:
        return join_key(self.prefix, _check_key(key))

    def file_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key(key)}"

    def put_file(self, local: Path, key: str) -> None:
        # upload_file streams from disk and switches to multipart for large files; it returns
        # after CompleteMultipartUpload, when the object is whole.
        self.client.upload_file(str(local), self.bucket, self.key(key))

    def put_bytes(self, body: bytes, key: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self.key(key), Body=body, ContentType="application/json"
        )

    def __repr__(self) -> str:
        return f"S3Target({self.url!r})"


# --- SFTP -----------------------------------------------------------------------------------------


def _env_secret(name: str, field: str, flow: FlowConfig) -> str:
    value = os.environ.get(name)
    if not value:
        raise ExportTargetError(
            f"flow {flow.id} ({flow.name}): environment variable {name} ({field}) is not set"
        )
    return value


class SFTPTarget(_Closing):
    """`sftp://user@host[:port][/folder]` with asyncssh, password or private key from the
    environment variables the flow names; the server's host key must be in known_hosts (the
    flow's `target_known_hosts`, else ~/.ssh/known_hosts).

    Without a folder in the URL, paths are relative to the login directory. Files are uploaded to
    a hidden temporary name and renamed into place with the `posix-rename@openssh.com` extension
    (an atomic replace); servers without it get remove-then-rename.
    """

    def __init__(self, url: str, flow: FlowConfig) -> None:
        parsed = urlparse(url)
        if parsed.scheme.lower() != "sftp" or not parsed.hostname:
            raise ExportTargetError(f"not an sftp://user@host[:port][/path] URL: {url!r}")
        if parsed.password is not None:
            raise ExportTargetError(
                "an sftp target URL must not contain a password; use target_password_env"
            )
        if not parsed.username:
            raise ExportTargetError(f"sftp target has no user: {url!r}")
        self.user = parsed.username
        self.host = parsed.hostname
        self.port = parsed.port or 22
        self.prefix = parsed.path.rstrip("/")  # '' (login directory) or an absolute folder
        netloc = f"{self.user}@{self.host}" + (f":{parsed.port}" if parsed.port else "")
        self.url = f"sftp://{netloc}{self.prefix}"
        self.bucket = self.host
        self._netloc = netloc
        self._flow = flow
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        self._sftp: Any = None

    def remote_path(self, key: str) -> str:
        key = _check_key(key)
        return posixpath.join(self.prefix, key) if self.prefix else key

    def file_url(self, key: str) -> str:
        path = self.remote_path(key)
        return f"sftp://{self._netloc}{path if path.startswith('/') else '/' + path}"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    async def _connect(self) -> Any:
        import asyncssh

        flow = self._flow
        options: dict[str, Any] = {
            "username": self.user,
            "port": self.port,
            "connect_timeout": SFTP_CONNECT_TIMEOUT_SECONDS,
            "agent_path": None,  # only the credentials the flow names
            "client_keys": None,
            "password": None,
        }
        if flow.target_known_hosts:
            options["known_hosts"] = str(Path(flow.target_known_hosts).expanduser())
        if flow.target_key_env:
            key_text = _env_secret(flow.target_key_env, "target_key_env", flow)
            try:
                options["client_keys"] = [asyncssh.import_private_key(key_text)]
            except (asyncssh.KeyImportError, ValueError) as exc:
                # The message says what kind of problem, never the key.
                raise ExportTargetError(
                    f"flow {flow.id} ({flow.name}): {flow.target_key_env} does not hold a "
                    f"usable private key ({type(exc).__name__})"
                ) from None
        if flow.target_password_env:
            options["password"] = _env_secret(flow.target_password_env, "target_password_env", flow)
        if options["client_keys"] is None and options["password"] is None:
            raise ExportTargetError(
                f"flow {flow.id} ({flow.name}): an sftp target needs target_password_env or "
                "target_key_env"
            )
        try:
            conn = await asyncssh.connect(self.host, **options)
        except asyncssh.PermissionDenied as exc:
            raise ExportTargetError(
                f"{self.url}: login refused for user {self.user!r} ({exc.reason})"
            ) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise ExportTargetError(
                f"{self.url}: host key not trusted ({exc.reason}); add it to the known_hosts "
                "file (target_known_hosts)"
            ) from None
        sftp = await conn.start_sftp_client()
        return conn, sftp

    def _client(self) -> Any:
        if self._sftp is None:
            self._conn, self._sftp = self._run(self._connect())
        return self._sftp

    async def _replace(self, key: str, upload: Callable[[Any, str], Coroutine[Any, Any, None]]):
        import asyncssh

        sftp = self._sftp
        final = self.remote_path(key)
        folder, name = posixpath.split(final)
        if folder:
            await sftp.makedirs(folder, exist_ok=True)
        tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            await upload(sftp, tmp)
            try:
                await sftp.posix_rename(tmp, final)
            except asyncssh.SFTPOpUnsupported:
                # Plain SFTP rename fails when the target exists: remove, then rename.
                try:
                    await sftp.remove(final)
                except asyncssh.SFTPNoSuchFile:
                    pass
                await sftp.rename(tmp, final)
        except BaseException:
            try:
                await sftp.remove(tmp)
            except (asyncssh.Error, OSError):
                pass
            raise

    def put_file(self, local: Path, key: str) -> None:
        self._client()

        async def upload(sftp: Any, tmp: str) -> None:
            await sftp.put(str(local), tmp)

        self._run(self._replace(key, upload))

    def put_bytes(self, body: bytes, key: str) -> None:
        self._client()

        async def upload(sftp: Any, tmp: str) -> None:
            async with sftp.open(tmp, "wb") as handle:
                await handle.write(body)

        self._run(self._replace(key, upload))

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            if self._sftp is not None:
                self._sftp.exit()
            if self._conn is not None:
                self._conn.close()
                self._run(self._conn.wait_closed())
        finally:
            self._sftp = self._conn = None
            self._loop.close()
            self._loop = None

    def __repr__(self) -> str:
        return f"SFTPTarget({self.url!r})"


def open_target(url: str, flow: FlowConfig, s3_client: Any = None) -> ExportTarget:
    """The target for a resolved target URL (`flow.target` or INGEST_EXPORT_URL)."""
    if is_s3_url(url):
        return S3Target(url, client=s3_client)
    if url[:7].lower() == "sftp://":
        return SFTPTarget(url, flow)
    if "://" in url and not url.startswith("file://"):
        raise ExportTargetError(
            f"unsupported export target {url!r}: use s3://, sftp:// or a folder"
        )
    return FolderTarget(url)


def resolve_target_url(flow: FlowConfig, default_url: str) -> str:
    """The flow's target, else the default (INGEST_EXPORT_URL); folders made absolute, so a
    pending export is finished in the same place whatever the working directory of the retry."""
    url = (flow.target or default_url).strip()
    if is_s3_url(url) or url[:7].lower() == "sftp://":
        return url
    return FolderTarget(url).url
