"""A real SFTP server on loopback (asyncssh), serving a temporary folder."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from datahub_assets.extract.sources import LandingFiles

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
    known_hosts: Path  # holds this server's host key
    password: str = PASSWORD

    def url(self) -> str:
        return f"sftp://{USER}@127.0.0.1:{self.port}/"

    def landing(self, **changes: str) -> LandingFiles:
        """The landing resource for this server: its host key known, the right password."""
        settings = {"url": self.url(), "known_hosts": str(self.known_hosts), "sftp_password": self.password}
        return LandingFiles(**{**settings, **changes})


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SftpServer]:
    root = tmp_path / "sftp-root"
    root.mkdir()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    host_key = asyncssh.generate_private_key("ssh-ed25519")

    async def start() -> None:
        server = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[host_key],
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
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{holder['port']} {host_key.export_public_key().decode().strip()}\n")
    yield SftpServer(root=root, port=holder["port"], known_hosts=known_hosts)
    loop.call_soon_threadsafe(holder["server"].close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
