"""A real SFTP server for tests: asyncssh on 127.0.0.1, in a thread with its own event loop.

Password and public-key auth for one user; the SFTP subsystem is chrooted to a folder, so the
test reads what consumers would see straight from that folder.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import asyncssh


class _Server(asyncssh.SSHServer):
    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is required

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == self._username and password == self._password

    def public_key_auth_supported(self) -> bool:
        return True


class SFTPServer:
    def __init__(
        self, root: Path, *, username: str = "feeds", password: str = "s3cr3t pa55"
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.username = username
        self.password = password
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = 0
        self.logins: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: Any = None

    def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (`port`, or a free one the first time)."""
        authorized = asyncssh.import_authorized_keys(self.client_key.export_public_key().decode())

        async def start() -> Any:
            return await asyncssh.create_server(
                lambda: _Server(self.username, self.password),
                "127.0.0.1",
                port or self.port,
                server_host_keys=[self.host_key],
                authorized_client_keys=authorized,
                sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=bytes(self.root)),
                allow_scp=False,
            )

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop listening (the loop thread stays for a later `start` on the same port)."""
        if self._server is None:
            return

        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._server = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def write_known_hosts(self, path: Path) -> Path:
        key = self.host_key.export_public_key().decode().strip()
        path.write_text(f"[127.0.0.1]:{self.port} {key}\n")
        return path

    def private_key_text(self) -> str:
        return self.client_key.export_private_key().decode()
