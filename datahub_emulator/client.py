"""Start the local endpoint as a subprocess and drive its admin API (tests, benchmarks)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
ADMIN_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class AdminClient:
    """The endpoint's admin API (docs/protocol.md) as Python calls returning JSON values."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def faults(self, **patch: Any) -> dict[str, Any]:
        """Merge the given fault keys (none: just read them); returns the full config."""
        if not patch:
            return self._call("GET", "/admin/faults")
        return self._call("POST", "/admin/faults", patch)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/admin/stats")

    def reconcile(self, data_uuid: str, ids: Sequence[str]) -> dict[str, Any]:
        return self._call("POST", "/admin/reconcile", {"dataUuid": data_uuid, "ids": list(ids)})

    def reset(self) -> dict[str, Any]:
        return self._call("POST", "/admin/reset", {})

    def revoke(self, institution_id: str, data_uuid: str) -> dict[str, Any]:
        payload = {"institutionId": institution_id, "dataUuid": data_uuid}
        return self._call("POST", "/admin/revoke", payload)

    def healthy(self) -> bool:
        try:
            self._call("GET", "/healthz", timeout=1.0)
        except (OSError, urllib.error.URLError):
            return False
        return True

    def _call(
        self, method: str, path: str, payload: Any = None, timeout: float = ADMIN_TIMEOUT_S
    ) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer


@dataclass
class EmulatorProcess(AdminClient):
    """A running `python -m datahub_emulator`; use as a context manager or call stop()."""

    db_path: Path
    port: int = 0
    host: str = "127.0.0.1"
    cap: int | None = None
    extra_args: Sequence[str] = ()
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.host)
        AdminClient.__init__(self, f"http://{self.host}:{self.port}")

    def start(self) -> EmulatorProcess:
        command = [
            sys.executable, "-m", "datahub_emulator",
            "--host", self.host, "--port", str(self.port), "--db", str(self.db_path),
        ]  # fmt: skip
        if self.cap is not None:
            command += ["--cap", str(self.cap)]
        command += list(self.extra_args)
        if self.log_path is None:
            self._process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        else:
            # The child keeps its own descriptor; ours closes as soon as it has started.
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(command, stdout=log, stderr=log)
        self._wait_until_healthy()
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def stop(self) -> int | None:
        """SIGTERM (clean shutdown: the database is checkpointed), then SIGKILL if stuck."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def _wait_until_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"endpoint exited with code {self._process.returncode}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"endpoint did not answer within {STARTUP_TIMEOUT_S} s")

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
