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

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import boto3

from ingest_pipeline.config import FlowConfig
from ingest_pipeline.landing import is_s3_url, join_key, split_s3_url
from ingest_pipeline.sftp import (
    SFTP_CONNECT_TIMEOUT_SECONDS,
    SftpCredentials,
    SftpError,
    SftpSession,
    SftpUnreachable,
)


class ExportTargetError(RuntimeError):
    """A target that cannot be used as configured (missing secret, bad URL, refused login)."""


class ExportTargetUnreachable(ExportTargetError, ConnectionError):
    """The target's server cannot be reached now (refused, timed out, connection lost)."""


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


@contextmanager
def _as_export_errors() -> Iterator[None]:
    # Exports speak ExportTargetError; an unreachable server stays an OSError (ConnectionError),
    # as it always was, so a failed delivery is a transient failure that the retry finishes.
    try:
        yield
    except SftpUnreachable as exc:
        raise ExportTargetUnreachable(str(exc)) from exc
    except SftpError as exc:
        raise ExportTargetError(str(exc)) from None


class SFTPTarget(_Closing):
    """`sftp://user@host[:port][/folder]` through the project's SFTP client (ingest_pipeline.sftp),
    with the password or private key from the environment variables the flow names; the server's
    host key must be in known_hosts (the flow's `target_known_hosts`, else ~/.ssh/known_hosts).

    Without a folder in the URL, paths are relative to the login directory. Files are uploaded to
    a hidden temporary name and renamed into place (an atomic replace; see SftpSession).
    """

    def __init__(self, url: str, flow: FlowConfig) -> None:
        credentials = SftpCredentials(
            password_env=flow.target_password_env,
            key_env=flow.target_key_env,
            known_hosts=flow.target_known_hosts,
            owner=f"flow {flow.id} ({flow.name})",
        )
        with _as_export_errors():
            self.session = SftpSession(
                url, credentials, connect_timeout=SFTP_CONNECT_TIMEOUT_SECONDS
            )
        self.user = self.session.user
        self.host = self.session.host
        self.port = self.session.port
        self.prefix = self.session.prefix
        self.url = self.session.url
        self.bucket = self.host

    def remote_path(self, key: str) -> str:
        return self.session.remote_path(key)

    def file_url(self, key: str) -> str:
        return self.session.file_url(key)

    def put_file(self, local: Path, key: str) -> None:
        with _as_export_errors():
            self.session.put_file(local, key)

    def put_bytes(self, body: bytes, key: str) -> None:
        with _as_export_errors():
            self.session.put_bytes(body, key)

    def close(self) -> None:
        self.session.close()

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
