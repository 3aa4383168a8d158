"""A real PostgreSQL server for tests: Debian's (or any installed) binaries, a fresh cluster in a
temporary directory, listening on 127.0.0.1 only on a free port, one database and one password
user; stopped and removed afterwards.

The cluster is created with `initdb` and run with `pg_ctl`. Both refuse to run as root, so when
the tests run as root (CI containers) they run as the `postgres` OS user and the temporary
directory is handed to it. Durability is switched off (fsync, synchronous_commit,
full_page_writes): the server lives for one test.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
SUPERUSER = "postgres"
START_ATTEMPTS = 3  # a free port can be taken by someone else between choosing and binding it

SERVER_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Dagster's daemon, its code server, every run worker and step process hold connections.
    "max_connections": "200",
    "shared_buffers": "64MB",
    "log_min_messages": "warning",
    "log_connections": "off",
}


@dataclass(frozen=True)
class PostgresParams:
    host: str
    port: int
    user: str
    password: str
    dbname: str
    log: Path

    def dsn(self) -> str:
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password} dbname={self.dbname}"
        )

    def dagster_env(self) -> dict[str, str]:
        """The variables deploy/dagster.postgres.yaml reads its `postgres_db` settings from."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.dbname,
        }

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: the newest Debian-packaged version,
    else `pg_config --bindir`, else wherever `initdb` is on PATH."""

    def usable(d: Path) -> bool:
        return all((d / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.parent.name
        return tuple(int(p) for p in part.split(".") if p.isdigit())

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if usable(Path(candidate)):
            return Path(candidate)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and usable(Path(out.stdout.strip())):
            return Path(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb and usable(Path(initdb).parent):
        return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class _Cluster:
    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir, self.root = bin_dir, root
        self.data, self.sockets, self.log = root / "data", root / "sockets", root / "server.log"
        self.as_root = os.geteuid() == 0
        self.owner = pwd.getpwnam(SUPERUSER) if self.as_root else None

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A PostgreSQL program, as the `postgres` OS user when we are root."""
        prefix = ["runuser", "-u", SUPERUSER, "--"] if self.as_root else []
        cmd = [*prefix, str(self.bin_dir / args[0]), *args[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and out.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}\n"
                + (self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "")
            )
        return out

    def _chown(self, path: Path) -> None:
        if self.owner is not None:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)

    def init(self) -> None:
        self.sockets.mkdir()
        for path in (self.root, self.sockets):
            self._chown(path)
        # Local (socket) connections trust the OS user; TCP connections need the password.
        self.run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )

    def start(self, port: int) -> None:
        settings = {
            **SERVER_SETTINGS,
            "port": str(port),
            "unix_socket_directories": f"'{self.sockets}'",
        }
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = {value}\n")
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        stop = ("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        out = self.run(*stop, check=False)
        if out.returncode != 0 and (self.data / "postmaster.pid").exists():
            # pg_ctl could not stop it: kill the postmaster we started (its pid is the file's
            # first line); its backends exit when they see it gone.
            with contextlib.suppress(OSError, ValueError):
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, 9)
                time.sleep(1)

    def superuser_sql(self, port: int, *statements: str) -> None:
        """Statements as the superuser, over the unix socket (trusted: no password there)."""
        import psycopg2

        con = psycopg2.connect(host=str(self.sockets), port=port, user=SUPERUSER, dbname="postgres")
        try:
            con.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with con.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            con.close()


@contextlib.contextmanager
def postgres_server(dbname: str = "dagster", user: str = "dagster") -> Iterator[PostgresParams]:
    """A running server with database `dbname` owned by `user` (a random password), reachable
    on 127.0.0.1 only; stopped and deleted on exit. Skips the test if PostgreSQL is not
    installed (Debian: `apt-get install postgresql`)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl/postgres found)")
    # Not under pytest's tmp_path: its parents are private to the user running the tests, and
    # the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="pg-test-"))
    cluster = _Cluster(bin_dir, root)
    try:
        cluster.init()
        for attempt in range(START_ATTEMPTS):
            port = _free_port()
            try:
                cluster.start(port)
                break
            except RuntimeError:
                if attempt == START_ATTEMPTS - 1:
                    raise
        password = secrets.token_hex(16)
        cluster.superuser_sql(
            port,
            f"CREATE ROLE {user} LOGIN PASSWORD '{password}'",
            f"CREATE DATABASE {dbname} OWNER {user}",
        )
        yield PostgresParams(HOST, port, user, password, dbname, cluster.log)
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
