"""Where the Ingestion API puts files, and the confirmation gate. Nothing here knows about HTTP.

Keys (relative to the landing root):
  * `data/tenants/objects/<stream>/source_system=dataapi/tenant=<tenant>/dt=<YYYY-MM-DD-HH-MM>/
    <uuid>.jsonl[.gz]` (feeds.API_KEY_LAYOUT): the file key a client is given, and the only
    place the API streams' sensors look. An upload-json file is written there directly.
  * `data/tenants/uploads/...` (same tail): where a presigned upload lands. Confirming the upload
    moves it to its file key (a rename in a folder, a server-side copy in S3), so a file is
    under `objects/` only once it is confirmed: the sensor never sees an unconfirmed upload,
    however long it waits, and a file confirmed late appears as newly landed (discovery's time
    window starts at the confirmation).
  * `data/tenants/idempotency/tenant=<tenant>/<sha256 of the Idempotency-Key>.json`: the first
    answer to an upload-json request sent with that key.

Every write is atomic (readers see the whole object or none): a hidden temporary file, synced
and renamed, in a folder; one PUT in S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest_pipeline.feeds import API_KEY_LAYOUT, API_PREFIX, API_SOURCE_SYSTEM
from ingest_pipeline.landing import LandedObject, LandingZone, LocalLanding, S3Landing, join_key

STAGING_PREFIX = "data/tenants/uploads/"
IDEMPOTENCY_PREFIX = "data/tenants/idempotency/"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class FileKey:
    key: str
    stream: str
    tenant: str
    gzipped: bool

    @property
    def staging_key(self) -> str:
        return STAGING_PREFIX + self.key.removeprefix(API_PREFIX)


def new_file_key(stream: str, tenant: str, at: datetime, *, gzipped: bool) -> FileKey:
    key = (
        f"{API_PREFIX}{stream}/source_system={API_SOURCE_SYSTEM}/tenant={tenant}/"
        f"dt={at.astimezone(UTC):%Y-%m-%d-%H-%M}/{uuid.uuid4()}.jsonl{'.gz' if gzipped else ''}"
    )
    return FileKey(key, stream, tenant, gzipped)  # of the layout (test_api checks it parses)


def parse_file_key(key: str) -> FileKey | None:
    """The file key's parts, or None when it is not a key the API gives (path tricks, other
    prefixes, other extensions)."""
    match = API_KEY_LAYOUT.fullmatch(key)
    if match is None:
        return None
    return FileKey(key, match["stream"], match["tenant"], bool(match["gz"]))


def idempotency_key(tenant: str, client_key: str) -> str:
    digest = hashlib.sha256(client_key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{IDEMPOTENCY_PREFIX}tenant={tenant}/{digest}.json"


def sign_local_put(
    secret: bytes, file_key: str, expires: int, content_type: str, content_encoding: str
) -> str:
    """The signature of a local PUT URL: what it may write, until when, with which headers."""
    message = f"PUT\n{file_key}\n{expires}\n{content_type}\n{content_encoding}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class GroupCommit:
    """Durable local writes at the price of a few fsyncs per batch, not two per file.

    A request writes its temporary file and queues it; one thread takes whatever is queued,
    fsyncs each file (on a journaling file system the first commit carries the others, so the
    rest cost little), renames each into place, fsyncs each folder once, then answers every
    request of the batch. Two fsyncs per file done by each request, one after the other, cap a
    process at the file system's commit rate (~350 files/s here); batched, the cost is shared.
    A file is renamed only once its data is on disk, so a crash never leaves a visible file
    with partial content, and a request is answered only once its rename is on disk.
    """

    def __init__(self) -> None:
        self._queue: list[tuple[int, Path, Path, Any, Any]] = []
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, fd: int, tmp: Path, path: Path, future: Any, loop: Any) -> None:
        with self._ready:
            self._queue.append((fd, tmp, path, future, loop))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch, self._queue = self._queue, []
            try:
                self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - the thread must live: every later
                # request waits on it. This batch's requests are told (503); their temporary
                # files are hidden, so no reader takes them.
                failed = OSError(f"the upload could not be committed: {exc!r}")
                for _, _, _, future, loop in batch:
                    _tell(loop, future, failed)

    @staticmethod
    def _commit(batch: list[tuple[int, Path, Path, Any, Any]]) -> None:
        errors: dict[int, BaseException] = {}
        for i, (fd, tmp, path, _, _) in enumerate(batch):
            try:
                os.fsync(fd)
                os.close(fd)
                os.replace(tmp, path)
            except OSError as exc:
                errors[i] = exc
                with contextlib.suppress(OSError):
                    os.close(fd)
                tmp.unlink(missing_ok=True)
        for folder in {
            path.parent for i, (_, _, path, _, _) in enumerate(batch) if i not in errors
        }:
            try:
                _sync_folder(folder)
            except OSError as exc:
                for i, (_, _, path, _, _) in enumerate(batch):
                    if path.parent == folder:
                        errors.setdefault(i, exc)
        for i, (_, _, _, future, loop) in enumerate(batch):
            _tell(loop, future, errors.get(i))


def _tell(loop: Any, future: Any, error: BaseException | None) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, future, error)


def _settle(future: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client gone): its file stays written
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class UploadStore:
    """The landing zone as the API uses it."""

    def __init__(self, landing: LandingZone) -> None:
        self.landing = landing
        self._folders: set[Path] = set()  # folders known to exist (a mkdir per write is slow)
        self._group = GroupCommit()

    async def write_local(self, key: str, body: bytes) -> None:
        """`write`, for a local folder from the event loop: the file is written here, made
        durable and renamed by the group commit, and this returns once that is done."""
        path, tmp, fd = self._staged(key, body)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._group.submit(fd, tmp, path, future, loop)
        await asyncio.shield(future)

    def _staged(self, key: str, body: bytes) -> tuple[Path, Path, int]:
        """`body` written (not yet synced) to a new hidden file beside `key`'s: (the key's
        path, the hidden file, its open descriptor)."""
        path = self.local_path(key)
        self._folder_of(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:  # the folder was removed since it was made
            self._folders.discard(path.parent)
            self._folder_of(path)
            fd = os.open(tmp, flags, 0o644)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return path, tmp, fd

    def _synced(self, key: str, body: bytes) -> tuple[Path, Path]:
        """_staged, then synced and closed: (the key's path, the hidden file)."""
        path, tmp, fd = self._staged(key, body)
        try:
            os.fsync(fd)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return path, tmp

    def _folder_of(self, path: Path) -> None:
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            if len(self._folders) > 10_000:
                self._folders.clear()
            self._folders.add(path.parent)

    @property
    def is_local(self) -> bool:
        return isinstance(self.landing, LocalLanding)

    def local_path(self, key: str) -> Path:
        assert isinstance(self.landing, LocalLanding)
        return self.landing.path_of(key)

    def stat(self, key: str) -> LandedObject | None:
        return self.landing.stat(key)

    def write(self, key: str, body: bytes) -> None:
        """Write `body` at `key`, durably (synced before the rename) and atomically."""
        if not isinstance(self.landing, LocalLanding):
            self.landing.put(key, body)
            return
        path, tmp = self._synced(key, body)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _sync_folder(path.parent)

    def create(self, key: str, body: bytes) -> bool:
        """Write `body` at `key` unless something is there already; False if it was."""
        if isinstance(self.landing, LocalLanding):
            path, tmp = self._synced(key, body)
            try:
                os.link(tmp, path)  # fails if the key exists: atomic create-if-absent
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            _sync_folder(path.parent)
            return True
        assert isinstance(self.landing, S3Landing)
        try:
            self.landing.client.put_object(
                Bucket=self.landing.bucket,
                Key=join_key(self.landing.prefix, key),
                Body=body,
                IfNoneMatch="*",
            )
        except self.landing.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return False
            raise
        return True

    def read_json(self, key: str) -> dict[str, Any] | None:
        if isinstance(self.landing, LocalLanding):
            try:
                return json.loads(self.local_path(key).read_bytes())
            except FileNotFoundError:
                return None
        assert isinstance(self.landing, S3Landing)
        try:
            response = self.landing.client.get_object(
                Bucket=self.landing.bucket, Key=join_key(self.landing.prefix, key)
            )
        except self.landing.client.exceptions.NoSuchKey:
            return None
        return json.loads(response["Body"].read())

    def head_bytes(self, key: str, count: int) -> bytes:
        if isinstance(self.landing, LocalLanding):
            with open(self.local_path(key), "rb") as f:
                return f.read(count)
        assert isinstance(self.landing, S3Landing)
        response = self.landing.client.get_object(
            Bucket=self.landing.bucket,
            Key=join_key(self.landing.prefix, key),
            Range=f"bytes=0-{count - 1}",
        )
        return response["Body"].read()

    def move(self, source: str, dest: str) -> None:
        """Move the object at `source` to `dest` (confirmation): atomic for readers of `dest`."""
        if isinstance(self.landing, LocalLanding):
            target = self.local_path(dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.local_path(source), target)
            _sync_folder(target.parent)
            return
        assert isinstance(self.landing, S3Landing)
        client, bucket = self.landing.client, self.landing.bucket
        # One server-side copy (objects up to 5 GB; uploads are at most 2 GB), then the
        # staging copy goes; if the process dies in between, the copy at `dest` is what counts.
        client.copy_object(
            Bucket=bucket,
            Key=join_key(self.landing.prefix, dest),
            CopySource={"Bucket": bucket, "Key": join_key(self.landing.prefix, source)},
        )
        client.delete_object(Bucket=bucket, Key=join_key(self.landing.prefix, source))

    def presign_put(
        self, key: str, content_type: str, content_encoding: str, expires_in: int
    ) -> str:
        """A presigned S3 PUT URL for `key`, its content type and encoding signed."""
        assert isinstance(self.landing, S3Landing)
        return self.landing.client.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.landing.bucket,
                "Key": join_key(self.landing.prefix, key),
                "ContentType": content_type,
                "ContentEncoding": content_encoding,
            },
            ExpiresIn=expires_in,
            HttpMethod="PUT",
        )


def _sync_folder(folder: Path) -> None:
    """The rename itself survives a power cut once its folder is synced."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
