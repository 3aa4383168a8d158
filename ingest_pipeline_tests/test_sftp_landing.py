"""The SFTP client and landing zone against a real SFTP server (asyncssh on 127.0.0.1, chrooted).

The server's folder is an ordinary local folder, so each test arranges files there directly and
checks what the client reports against the file system itself.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest_pipeline.landing import FileVanished, LandingZone
from ingest_pipeline.sftp import (
    SftpCredentials,
    SftpError,
    SftpLanding,
    SftpNotFound,
    SftpSession,
    SftpUnreachable,
)
from ingest_pipeline_tests.sftp_server import SFTPServer

PASSWORD_ENV = "TEST_IMPORT_SFTP_PASSWORD"
KEY_ENV = "TEST_IMPORT_SFTP_KEY"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SFTPServer]:
    server = SFTPServer(tmp_path / "sftp_root")
    server.start()
    yield server
    server.close()


@pytest.fixture
def known_hosts(server: SFTPServer, tmp_path: Path) -> Path:
    return server.write_known_hosts(tmp_path / "known_hosts")


def credentials(known_hosts: Path | None, *, password: bool = True) -> SftpCredentials:
    return SftpCredentials(
        password_env=PASSWORD_ENV if password else None,
        key_env=None if password else KEY_ENV,
        known_hosts=str(known_hosts) if known_hosts else None,
        owner="import app_opened",
        env_field_password="password_env",
        env_field_key="key_env",
    )


def landing(
    server: SFTPServer, known_hosts: Path | None, folder: str = "/in", *, password: bool = True
) -> SftpLanding:
    url = f"sftp://{server.username}@127.0.0.1:{server.port}{folder}"
    return SftpLanding.from_url(url, credentials(known_hosts, password=password))


@pytest.fixture
def password_env(server: SFTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, server.password)


def write(path: Path, body: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def populate(root: Path) -> dict[str, bytes]:
    """Files under <root>/in; returns the keys a recursive listing must give."""
    files = {
        "b.csv": b"id\n2\n",
        "a.csv": b"id\n1\n",
        "sub.csv": b"x\n",  # 'sub.csv' < 'sub/...' < 'sub0.csv' in S3 key order
        "sub0.csv": b"y\n",
        "sub/c.csv": b"id\n3\n",
        "sub/deeper/d.csv": b"id\n4\n",
    }
    for key, body in files.items():
        write(root / "in" / key, body)
    write(root / "in" / ".a.csv.1234.tmp", b"partial")  # an upload in progress
    write(root / "in" / ".hidden" / "e.csv", b"hidden folder")
    (root / "in" / "empty").mkdir()
    return files


def test_password_login_lists_recursively_and_directly(
    server: SFTPServer, known_hosts: Path, password_env: None
) -> None:
    files = populate(server.root)
    with landing(server, known_hosts) as zone:
        assert isinstance(zone, LandingZone)
        listed = list(zone.list())
        assert [o.key for o in listed] == [
            "a.csv",
            "b.csv",
            "sub.csv",
            "sub/c.csv",
            "sub/deeper/d.csv",
            "sub0.csv",
        ]
        assert [o.key for o in listed] == sorted(files)  # S3's order: plain key order
        for obj in listed:
            st = os.stat(server.root / "in" / obj.key)
            assert obj.size == st.st_size == len(files[obj.key])
            assert obj.etag == f"{st.st_size}-{int(st.st_mtime)}"
            assert obj.last_modified == datetime.fromtimestamp(int(st.st_mtime), tz=UTC)
            assert obj.uri == f"sftp://feeds@127.0.0.1:{server.port}/in/{obj.key}"
            assert server.password not in obj.uri
        # A prefix lists only what it names, in the same order.
        assert [o.key for o in zone.list("sub/")] == ["sub/c.csv", "sub/deeper/d.csv"]
        assert [o.key for o in zone.list("sub")] == [
            "sub.csv",
            "sub/c.csv",
            "sub/deeper/d.csv",
            "sub0.csv",
        ]
        assert list(zone.list("nothing/here/")) == []
        # Imports read the folder itself, never its sub-folders.
        direct = zone.list_folder()
        assert [o.key for o in direct.files] == ["a.csv", "b.csv", "sub.csv", "sub0.csv"]
        assert direct.files == [o for o in listed if "/" not in o.key]
        assert direct.subfolders == ["empty", "sub"]


def test_key_login_reads_files(
    server: SFTPServer, known_hosts: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, server.private_key_text())
    write(server.root / "in" / "a.csv", b"id\n1\n")
    with landing(server, known_hosts, password=False) as zone:
        (obj,) = zone.list_folder().files
        got = zone.download(obj, tmp_path / "a.csv")
    assert got == obj and (tmp_path / "a.csv").read_bytes() == b"id\n1\n"


def test_stat(server: SFTPServer, known_hosts: Path, password_env: None) -> None:
    populate(server.root)
    with landing(server, known_hosts) as zone:
        listed = {o.key: o for o in zone.list()}
        assert zone.stat("sub/c.csv") == listed["sub/c.csv"]
        assert zone.stat("a.csv") == listed["a.csv"]
        assert zone.stat("missing.csv") is None
        assert zone.stat("sub") is None  # a folder is not an object
        assert zone.stat("missing/x.csv") is None
        with pytest.raises(ValueError):
            zone.stat("../escape.csv")


def test_download_streams_the_exact_bytes(
    server: SFTPServer, known_hosts: Path, password_env: None, tmp_path: Path
) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks, not a round size
    write(server.root / "in" / "big" / "data.csv", body)
    with landing(server, known_hosts) as zone:
        (obj,) = zone.list()
        got = zone.download(obj, tmp_path / "by_object")
        by_key = zone.download("big/data.csv", tmp_path / "by_key")
    assert got == obj == by_key
    assert (tmp_path / "by_object").read_bytes() == body == (tmp_path / "by_key").read_bytes()


def test_download_of_a_replaced_or_deleted_file_is_file_vanished(
    server: SFTPServer, known_hosts: Path, password_env: None, tmp_path: Path
) -> None:
    path = write(server.root / "in" / "a.csv", b"id\n1\n")
    write(server.root / "in" / "b.csv", b"id\n2\n")
    with landing(server, known_hosts) as zone:
        a, b = zone.list_folder().files
        # Replaced after the listing (a new upload renamed into place).
        tmp = write(server.root / "in" / ".a.csv.new", b"id\n1\n10\n")
        os.replace(tmp, path)
        dest = tmp_path / "a.csv"
        with pytest.raises(FileVanished, match="replaced since listing") as error:
            zone.download(a, dest)
        assert error.value.key == "a.csv" and not dest.exists()
        # The same size again, but a later mtime: still another version.
        os.utime(path, (time.time() + 60, time.time() + 60))
        write(server.root / "in" / "b.csv", b"id\n9\n")
        os.utime(server.root / "in" / "b.csv", (time.time() + 60, time.time() + 60))
        with pytest.raises(FileVanished, match="replaced"):
            zone.download(b, tmp_path / "b.csv")
        # Deleted after the listing.
        path.unlink()
        with pytest.raises(FileVanished, match="no longer"):
            zone.download(a, dest)
        with pytest.raises(FileVanished):
            zone.download("a.csv", dest)
        assert not dest.exists()


def test_put_and_delete(
    server: SFTPServer, known_hosts: Path, password_env: None, tmp_path: Path
) -> None:
    local = write(tmp_path / "local.csv", b"id\n5\n")
    with landing(server, known_hosts) as zone:
        put = zone.put("new/x.csv", b"id\n4\n")
        from_file = zone.put("y.csv", local)
        assert (server.root / "in" / "new" / "x.csv").read_bytes() == b"id\n4\n"
        assert (server.root / "in" / "y.csv").read_bytes() == b"id\n5\n"
        assert [o.key for o in zone.list()] == ["new/x.csv", "y.csv"]
        assert zone.stat("new/x.csv") == put and zone.stat("y.csv") == from_file
        zone.put("y.csv", b"replaced")  # an atomic replace of an existing file
        assert (server.root / "in" / "y.csv").read_bytes() == b"replaced"
        zone.delete("y.csv")
        zone.delete("y.csv")  # already gone: no error
        assert [o.key for o in zone.list()] == ["new/x.csv"]
    # No temporary file left behind.
    assert sorted(p.name for p in (server.root / "in").rglob("*")) == ["new", "x.csv"]


def test_wrong_password_is_refused_without_echoing_it(
    server: SFTPServer, known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    (server.root / "in").mkdir()
    zone = landing(server, known_hosts)
    with pytest.raises(SftpError) as error:
        zone.list_folder()
    text = str(error.value)
    assert "login refused for user 'feeds'" in text and "import app_opened" in text
    assert "not-the-password" not in text and "not-the-password" not in repr(error.value)
    zone.close()


def test_untrusted_host_key_says_add_it_to_known_hosts(
    server: SFTPServer, tmp_path: Path, password_env: None
) -> None:
    other = SFTPServer(tmp_path / "other")  # another host key for the same address
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {other.host_key.export_public_key().decode()}")
    other.close()
    with pytest.raises(SftpError, match="host key not trusted.*known_hosts") as error:
        landing(server, known).list_folder()
    assert "(target_known_hosts)" in str(error.value)  # the default field name
    with pytest.raises(SftpError, match="known_hosts file .*missing_known_hosts.* does not exist"):
        landing(server, tmp_path / "missing_known_hosts").list_folder()


def test_missing_or_unusable_secret_names_the_variable(
    server: SFTPServer, known_hosts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(SftpError, match=f"environment variable {PASSWORD_ENV} .password_env."):
        landing(server, known_hosts).list_folder()
    not_a_key = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWJ1dC1ub3QtYS1rZXk=\n"
    monkeypatch.setenv(KEY_ENV, not_a_key)
    with pytest.raises(SftpError, match=f"{KEY_ENV} does not hold a usable private key") as error:
        landing(server, known_hosts, password=False).list_folder()
    assert "c2VjcmV0" not in str(error.value)
    neither = SftpCredentials(None, None, str(known_hosts), owner="import app_opened")
    url = f"sftp://feeds@127.0.0.1:{server.port}/in"
    with pytest.raises(SftpError, match="needs target_password_env or target_key_env"):
        SftpLanding.from_url(url, neither).list_folder()


def test_url_with_a_password_is_refused_without_echoing_it() -> None:
    creds = SftpCredentials(PASSWORD_ENV, None, None, owner="import app_opened")
    with pytest.raises(SftpError, match="must not contain a password") as error:
        SftpSession("sftp://feeds:hunter2@example.com/in", creds)
    assert "hunter2" not in str(error.value)
    with pytest.raises(SftpError, match="not an sftp") as error:
        SftpSession("ftp://feeds:hunter2@example.com/in", creds)
    assert "hunter2" not in str(error.value)


def test_missing_folder_says_check_the_path(
    server: SFTPServer, known_hosts: Path, password_env: None
) -> None:
    write(server.root / "in" / "a.csv", b"x")
    zone = landing(server, known_hosts, folder="/nope")
    message = "Please check the folder path and try again: /nope does not exist on the server"
    with pytest.raises(SftpNotFound, match=message):
        zone.list_folder()
    with pytest.raises(SftpNotFound, match=message):
        list(zone.list())
    zone.close()
    with landing(server, known_hosts, folder="/in/a.csv") as zone:
        with pytest.raises(SftpError, match="check the folder path.*/in/a.csv is a file, not a"):
            zone.list_folder()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_a_quick_sftp_error(password_env: None, known_hosts: Path) -> None:
    port = _free_port()  # nothing listens there
    creds = credentials(known_hosts)
    started = time.monotonic()
    with pytest.raises(SftpUnreachable) as error:
        SftpLanding.from_url(f"sftp://feeds@127.0.0.1:{port}/in", creds).list_folder()
    assert time.monotonic() - started < 5
    assert f"cannot connect to 127.0.0.1:{port} (connection refused" in str(error.value)
    assert isinstance(error.value, SftpError) and isinstance(error.value, OSError)


def test_server_that_never_answers_times_out(password_env: None, known_hosts: Path) -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) but never speaks SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        url = f"sftp://feeds@127.0.0.1:{port}/in"
        started = time.monotonic()
        with pytest.raises(SftpUnreachable, match=f"cannot connect to 127.0.0.1:{port} .no answer"):
            SftpLanding.from_url(url, credentials(known_hosts), connect_timeout=0.5).list_folder()
        assert time.monotonic() - started < 5


def test_session_reconnects_after_close(
    server: SFTPServer, known_hosts: Path, password_env: None
) -> None:
    write(server.root / "in" / "a.csv", b"x")
    zone = landing(server, known_hosts)
    assert [o.key for o in zone.list_folder().files] == ["a.csv"]
    zone.close()
    assert [o.key for o in zone.list_folder().files] == ["a.csv"]
    zone.close()
    zone.close()  # idempotent
