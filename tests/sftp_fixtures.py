"""A real SFTP server on loopback (asyncssh), serving a temporary folder."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

USER, PASSWORD = "landing", "s3cret-landing"


class _PasswordServer(asyncssh.SSHServer):
    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == USER and password == PASSWORD


@dataclass
class SftpServer:
    root: Path
    port: int

    def url(self, password: str = PASSWORD) -> str:
        return f"sftp://{USER}:{password}@127.0.0.1:{self.port}/"


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SftpServer]:
    root = tmp_path / "sftp-root"
    root.mkdir()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def start() -> None:
        server = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            server_factory=_PasswordServer,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(root)),
        )
        holder["server"] = server
        holder["port"] = server.sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    assert started.wait(10), "SFTP server did not start"
    yield SftpServer(root=root, port=holder["port"])
    loop.call_soon_threadsafe(holder["server"].close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
