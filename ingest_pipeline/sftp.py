"""The project's one SFTP client: exports deliver through it, configured imports read through it.

`SftpSession` is a small synchronous facade over asyncssh (each session runs its own event loop,
so callers — Dagster ops, the CLI, tests — never deal with asyncio). It connects lazily with only
the credentials it is given: a password and/or a private key read from environment variables the
configuration names, and the server's host key checked against a known_hosts file. `SftpLanding`
puts the `LandingZone` interface (landing.py) over a session, rooted at the URL's folder.

Secrets never appear in URLs, messages, exceptions or `LandedObject`s. Errors a person can fix
(login refused, untrusted host key, variable not set, wrong folder, server unreachable) are
`SftpError`s whose message says what to change. Nothing here knows about Dagster.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import posixpath
import re
import socket
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlparse

from ingest_pipeline.landing import FileVanished, FolderListing, LandedObject

T = TypeVar("T")

SFTP_CONNECT_TIMEOUT_SECONDS = 30.0

# Download buffer: each read is split by asyncssh into parallel requests (throughput over
# latency) while memory stays flat whatever the file size.
_CHUNK_BYTES = 1024 * 1024


class SftpError(RuntimeError):
    """An SFTP server that cannot be used as configured; the message says what to change and
    never contains a secret."""


class SftpUnreachable(SftpError, ConnectionError):
    """The server could not be reached (refused, timed out, unknown host, connection lost).

    Also an OSError (ConnectionError): callers that retry network failures keep doing so.
    """


class SftpNotFound(SftpError):
    """A folder the configuration names does not exist on the server."""


@dataclass(frozen=True)
class SftpCredentials:
    """Which secrets to log in with: names of environment variables, never the values."""

    password_env: str | None
    key_env: str | None
    known_hosts: str | None  # file; default ~/.ssh/known_hosts
    owner: str  # who uses it, for messages: "flow 3 (weekly)" / "import app_opened"
    # The configuration keys holding the above, so a message names what to edit.
    env_field_password: str = "target_password_env"
    env_field_key: str = "target_key_env"
    field_known_hosts: str = "target_known_hosts"


@dataclass(frozen=True)
class SftpEntry:
    """A name in a folder (or a stat) as the server reports it."""

    name: str
    size: int
    mtime: float | int  # seconds since the epoch; SFTP v3 servers (OpenSSH) give whole seconds
    is_file: bool
    is_dir: bool

    @property
    def etag(self) -> str:
        # SFTP has no content hash: size and mtime stand for the version. A same-size rewrite
        # within the same second (v3 mtime resolution) is not told apart.
        return f"{self.size}-{self.mtime}"


def _check_key(key: str) -> str:
    # Keys come from listings and configuration: refuse anything that could escape the root or
    # that names a folder rather than a file.
    parts = key.split("/")
    if not key or key.startswith("/") or ".." in parts or "" in parts:
        raise ValueError(f"invalid sftp key: {key!r}")
    return key


def _redacted(url: str) -> str:
    """`url` with any password replaced, for messages about malformed URLs."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


def _entry(name: str, attrs: Any) -> SftpEntry:
    import asyncssh

    mtime: float | int = attrs.mtime or 0
    if attrs.mtime_ns is not None:  # SFTP v4+: sub-second precision
        mtime = mtime + attrs.mtime_ns / 1e9
    return SftpEntry(
        name=name,
        size=int(attrs.size or 0),
        mtime=mtime,
        is_file=attrs.type == asyncssh.FILEXFER_TYPE_REGULAR,
        is_dir=attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY,
    )


def _missing_errors() -> tuple[type[Exception], ...]:
    import asyncssh

    return (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath, asyncssh.SFTPNotADirectory)


class SftpSession:
    """`sftp://user@host[:port][/folder]`: a sync facade over asyncssh with its own event loop.

    Connects on first use; a context manager; `close()` ends the connection (a later call
    reconnects). Not thread-safe: one session per thread. Without a folder in the URL, paths are
    relative to the login directory. Uploads go to a hidden temporary name renamed into place with
    the `posix-rename@openssh.com` extension (an atomic replace); servers without it get
    remove-then-rename.
    """

    def __init__(
        self,
        url: str,
        credentials: SftpCredentials,
        connect_timeout: float = SFTP_CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme.lower() != "sftp" or not parsed.hostname:
            raise SftpError(f"not an sftp://user@host[:port][/path] URL: {_redacted(url)!r}")
        if parsed.password is not None:
            raise SftpError(
                "an sftp URL must not contain a password; name an environment variable in "
                f"{credentials.env_field_password}"
            )
        if not parsed.username:
            raise SftpError(f"sftp URL has no user: {url!r}")
        try:
            port = parsed.port
        except ValueError:
            raise SftpError(f"sftp URL has an invalid port: {url!r}") from None
        self.user: str = parsed.username
        self.host: str = parsed.hostname
        self.port: int = port or 22
        self.prefix: str = parsed.path.rstrip("/")  # '' (login directory) or an absolute folder
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        self._hostport = f"{host}:{self.port}"
        # The port only as written, so URLs (and identities built on them) stay as configured.
        self._netloc = f"{self.user}@{host}" + (f":{port}" if port else "")
        self.url: str = f"sftp://{self._netloc}{self.prefix}"
        self.credentials = credentials
        self.connect_timeout = connect_timeout
        self._where = f"{credentials.owner}: {self.url}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        self._sftp: Any = None

    # --- paths ------------------------------------------------------------------------------------

    def remote_path(self, key: str) -> str:
        key = _check_key(key)
        return posixpath.join(self.prefix, key) if self.prefix else key

    def file_url(self, key: str) -> str:
        path = self.remote_path(key)
        return f"sftp://{self._netloc}{path if path.startswith('/') else '/' + path}"

    def _folder_path(self, folder_key: str) -> str:
        if not folder_key:
            return self.prefix or "."
        return self.remote_path(folder_key.rstrip("/"))

    # --- connection -------------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def _secret(self, name: str, field: str) -> str:
        value = os.environ.get(name)
        if not value:
            raise SftpError(
                f"{self.credentials.owner}: environment variable {name} ({field}) is not set"
            )
        return value

    def _options(self) -> dict[str, Any]:
        import asyncssh

        creds = self.credentials
        options: dict[str, Any] = {
            "username": self.user,
            "port": self.port,
            "connect_timeout": self.connect_timeout,
            "agent_path": None,  # only the credentials the configuration names
            "client_keys": None,
            "password": None,
        }
        if creds.known_hosts:
            known_hosts = Path(creds.known_hosts).expanduser()
            # Checked here: asyncssh would fail with a bare OSError mid-handshake.
            if not known_hosts.is_file():
                raise SftpError(
                    f"{creds.owner}: the known_hosts file {known_hosts} "
                    f"({creds.field_known_hosts}) does not exist"
                )
            options["known_hosts"] = str(known_hosts)
        if creds.key_env:
            key_text = self._secret(creds.key_env, creds.env_field_key)
            try:
                options["client_keys"] = [asyncssh.import_private_key(key_text)]
            except (asyncssh.KeyImportError, ValueError) as exc:
                # The message says what kind of problem, never the key.
                raise SftpError(
                    f"{creds.owner}: {creds.key_env} does not hold a usable private key "
                    f"({type(exc).__name__})"
                ) from None
        if creds.password_env:
            options["password"] = self._secret(creds.password_env, creds.env_field_password)
        if options["client_keys"] is None and options["password"] is None:
            raise SftpError(
                f"{creds.owner}: an sftp connection needs {creds.env_field_password} or "
                f"{creds.env_field_key}"
            )
        return options

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused: is the server running, and is this its port?"
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.connect_timeout:g} s"
        if isinstance(exc, socket.gaierror):
            return f"unknown host: {exc.strerror}"
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        return str(reason) or type(exc).__name__

    async def _connect(self) -> tuple[Any, Any]:
        import asyncssh

        options = self._options()
        try:
            conn = await asyncssh.connect(self.host, **options)
        except asyncssh.PermissionDenied as exc:
            raise SftpError(
                f"{self._where}: login refused for user {self.user!r} ({exc.reason})"
            ) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise SftpError(
                f"{self._where}: host key not trusted ({exc.reason}); add it to the known_hosts "
                f"file ({self.credentials.field_known_hosts})"
            ) from None
        except (OSError, asyncssh.DisconnectError) as exc:  # TimeoutError is an OSError
            raise SftpUnreachable(
                f"{self._where}: cannot connect to {self._hostport} ({self._why(exc)})"
            ) from exc
        try:
            sftp = await conn.start_sftp_client()
        except (asyncssh.ChannelOpenError, asyncssh.SFTPError) as exc:
            conn.close()
            raise SftpError(
                f"{self._where}: the server does not offer SFTP to {self.user!r} ({exc.reason})"
            ) from None
        return conn, sftp

    def _client(self) -> Any:
        if self._sftp is None:
            try:
                self._conn, self._sftp = self._run(self._connect())
            except BaseException:
                self.close()  # nothing to keep open: a caller that gives up leaks no event loop
                raise
        return self._sftp

    def _do(self, op: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Run `op(sftp_client)`, connecting first if needed."""
        import asyncssh

        sftp = self._client()
        try:
            return self._run(op(sftp))
        except (asyncssh.DisconnectError, asyncssh.SFTPConnectionLost) as exc:
            # The connection is gone: drop it, so the next call reconnects.
            if self._conn is not None:
                self._conn.abort()
            self._conn, self._sftp = None, None
            raise SftpUnreachable(
                f"{self._where}: connection to {self._hostport} lost ({self._why(exc)})"
            ) from exc

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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------------------

    def listdir(self, folder_key: str = "", *, missing_ok: bool = False) -> list[SftpEntry]:
        """The entries of a folder (relative to the URL's folder; '' is that folder), by name,
        '.' and '..' left out. A missing folder is an SftpNotFound, or [] with `missing_ok`."""
        path = self._folder_path(folder_key)
        where = "the login folder" if path == "." else path

        async def op(sftp: Any) -> list[SftpEntry] | None:
            import asyncssh

            try:
                names = await sftp.readdir(path)
            except (*_missing_errors(), asyncssh.SFTPFailure):
                # Servers answer "no such file" (OpenSSH) or a plain failure when the path is a
                # file: a stat tells a missing folder from a file.
                try:
                    attrs = await sftp.stat(path)
                except _missing_errors():
                    return None
                if _entry(path, attrs).is_dir:
                    raise
                raise SftpError(
                    f"{self._where}: Please check the folder path and try again: {where} is "
                    "a file, not a folder"
                ) from None
            except asyncssh.SFTPPermissionDenied:
                raise SftpError(
                    f"{self._where}: permission denied listing {where}; ask the server's owner "
                    f"to give {self.user!r} read access"
                ) from None
            entries = []
            for item in names:
                if item.filename in (".", ".."):
                    continue
                entry = _entry(item.filename, item.attrs)
                if item.attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK:
                    # A link to a file counts as that file; links to folders are not followed
                    # (no loops), as in LocalLanding.
                    try:
                        target = _entry(item.filename, await sftp.stat(f"{path}/{item.filename}"))
                    except asyncssh.SFTPError:
                        continue  # dangling link
                    entry = target if target.is_file else entry
                entries.append(entry)
            return sorted(entries, key=lambda e: e.name)

        found = self._do(op)
        if found is None:
            if missing_ok:
                return []
            raise SftpNotFound(
                f"{self._where}: Please check the folder path and try again: {where} does not "
                "exist on the server"
            )
        return found

    def stat(self, key: str) -> SftpEntry | None:
        """The file or folder at `key` now (links followed), or None if there is none."""
        path = self.remote_path(key)

        async def op(sftp: Any) -> SftpEntry | None:
            try:
                return _entry(posixpath.basename(path), await sftp.stat(path))
            except _missing_errors():
                return None

        return self._do(op)

    def get(self, key: str, dest: Path, expected_etag: str | None = None) -> SftpEntry:
        """Stream the file at `key` to `dest`; returns the version written.

        The version is that of the open file (checked before and after reading): a replacement
        renamed into place meanwhile does not mix into what we read. Raises FileVanished if there
        is no such file, if it is not `expected_etag` (when given) or if it changed while being
        read; `dest` is then removed.
        """
        path = self.remote_path(key)
        dest = Path(dest)

        async def op(sftp: Any) -> SftpEntry:
            import asyncssh

            name = posixpath.basename(path)
            try:
                handle = await sftp.open(path, "rb")
            except (*_missing_errors(), asyncssh.SFTPFileIsADirectory) as exc:
                raise FileVanished(key, "no longer on the SFTP server") from exc
            async with handle:
                before = _entry(name, await handle.stat())
                if not before.is_file:
                    raise FileVanished(key, "not a file on the SFTP server")
                if expected_etag is not None and before.etag != expected_etag:
                    raise FileVanished(
                        key, f"replaced since listing (etag {expected_etag} -> {before.etag})"
                    )
                with open(dest, "wb") as out:
                    while chunk := await handle.read(_CHUNK_BYTES):
                        out.write(chunk)
                after = _entry(name, await handle.stat())
            if after.etag != before.etag:  # rewritten in place while we read
                raise FileVanished(key, "modified while being read")
            return before

        try:
            return self._do(op)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise

    # --- writing ----------------------------------------------------------------------------------

    async def _replace(
        self, sftp: Any, key: str, upload: Callable[[Any, str], Coroutine[Any, Any, None]]
    ) -> None:
        import asyncssh

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
        """Upload a local file; when this returns it is complete at its final name."""

        async def upload(sftp: Any, tmp: str) -> None:
            await sftp.put(str(local), tmp)

        self._do(lambda sftp: self._replace(sftp, key, upload))

    def put_bytes(self, body: bytes, key: str) -> None:
        """Upload a small file the same way."""

        async def upload(sftp: Any, tmp: str) -> None:
            async with sftp.open(tmp, "wb") as handle:
                await handle.write(body)

        self._do(lambda sftp: self._replace(sftp, key, upload))

    def remove(self, key: str) -> None:
        """Delete the file at `key`; no error if there is none."""
        path = self.remote_path(key)

        async def op(sftp: Any) -> None:
            try:
                await sftp.remove(path)
            except _missing_errors():
                pass

        self._do(op)

    def __repr__(self) -> str:
        return f"SftpSession({self.url!r})"


class SftpLanding:
    """An SFTP folder (the URL's) as a landing zone, over an SftpSession.

    Keys are relative to that folder and '/'-separated. Names starting with '.' are skipped by
    listings: in-progress uploads (our own `put`, many SFTP clients) use hidden temporary names.
    `last_modified` is the server's mtime — SFTP has nothing like a change time, so a client that
    preserves an old mtime on upload (`put -p`) lands a file that looks old.
    """

    def __init__(self, session: SftpSession) -> None:
        self.session = session
        self.url = session.url

    @classmethod
    def from_url(
        cls,
        url: str,
        credentials: SftpCredentials,
        connect_timeout: float = SFTP_CONNECT_TIMEOUT_SECONDS,
    ) -> SftpLanding:
        return cls(SftpSession(url, credentials, connect_timeout=connect_timeout))

    def _object(self, key: str, entry: SftpEntry) -> LandedObject:
        return LandedObject(
            key=key,
            etag=entry.etag,
            size=entry.size,
            last_modified=datetime.fromtimestamp(entry.mtime, tz=UTC),
            uri=self.session.file_url(key),  # user@host[:port]/path: never a password
        )

    def list(self, prefix: str = "") -> Iterator[LandedObject]:
        # Start at the deepest folder the prefix names, so listing one feed does not walk others.
        folder, _, _ = prefix.rpartition("/")
        if prefix.startswith("/") or (folder and ".." in folder.split("/")):
            raise ValueError(f"invalid landing prefix: {prefix!r}")
        if folder:
            _check_key(folder)
        # The root must exist (a wrong folder in the configuration says so); a sub-folder the
        # prefix names may not.
        entries = self.session.listdir(folder, missing_ok=bool(folder))
        yield from self._walk(entries, f"{folder}/" if folder else "", prefix)

    def _walk(
        self, entries: builtins.list[SftpEntry], key_prefix: str, prefix: str
    ) -> Iterator[LandedObject]:
        # Sort folders as "name/" so the output is in exactly S3's (lexicographic key) order.
        named = sorted(
            (
                (e.name + "/" if e.is_dir else e.name, e)
                for e in entries
                if not e.name.startswith(".")
            ),
            key=lambda item: item[0],
        )
        for name, entry in named:
            key = key_prefix + name
            if entry.is_dir:
                # Descend only where keys can still match the prefix; a folder deleted while
                # listing is simply empty.
                if key.startswith(prefix) or prefix.startswith(key):
                    children = self.session.listdir(key.rstrip("/"), missing_ok=True)
                    yield from self._walk(children, key, prefix)
            elif entry.is_file and key.startswith(prefix):
                yield self._object(key, entry)

    def list_folder(self) -> FolderListing:
        """The files directly in the root folder and its sub-folders' names, from one listing
        (sub-folders are never read)."""
        listing = FolderListing()
        for e in self.session.listdir():
            if e.name.startswith("."):
                continue
            if e.is_file:
                listing.files.append(self._object(e.name, e))
            elif e.is_dir:
                listing.subfolders.append(e.name)
        return listing

    def stat(self, key: str) -> LandedObject | None:
        entry = self.session.stat(key)
        if entry is None or not entry.is_file:
            return None
        return self._object(key, entry)

    def download(self, obj_or_key: LandedObject | str, dest: Path) -> LandedObject:
        key = obj_or_key if isinstance(obj_or_key, str) else obj_or_key.key
        expected = None if isinstance(obj_or_key, str) else obj_or_key.etag
        return self._object(key, self.session.get(key, dest, expected_etag=expected))

    def put(self, key: str, body: bytes | Path) -> LandedObject:
        if isinstance(body, bytes | bytearray | memoryview):
            self.session.put_bytes(bytes(body), key)
        else:
            self.session.put_file(Path(body), key)
        obj = self.stat(key)
        if obj is None:  # deleted by someone else right after our rename
            raise FileVanished(key, "gone right after upload")
        return obj

    def delete(self, key: str) -> None:
        self.session.remove(key)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SftpLanding({self.url!r})"
