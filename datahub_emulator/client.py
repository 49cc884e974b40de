"""Start the local endpoint as a subprocess and drive its admin API (tests, benchmarks)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
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

# The endpoint takes its admin token from this variable when set (docs/protocol.md), and
# AdminClient falls back to it for an endpoint this process did not start.
ADMIN_TOKEN_ENV = "DATAHUB_EMULATOR_ADMIN_TOKEN"

# Admin tokens of the endpoints this process started, by URL: code that is handed only an
# endpoint's URL (the toolkit's init_keys) can still call its admin API.
_started_tokens: dict[str, str] = {}
# And the CA of those serving HTTPS, so that their certificates are verified.
_started_cas: dict[str, Path] = {}


def admin_token_for(url: str) -> str | None:
    """The admin token for the endpoint at `url`: its own if this process started it,
    else $DATAHUB_EMULATOR_ADMIN_TOKEN, else None."""
    return _started_tokens.get(url.rstrip("/")) or os.environ.get(ADMIN_TOKEN_ENV) or None


class AdminClient:
    """The endpoint's admin API (docs/protocol.md) as Python calls returning JSON values."""

    def __init__(self, url: str, admin_token: str | None = None, ca_file: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.admin_token = admin_token if admin_token is not None else admin_token_for(self.url)
        # An https endpoint is verified against this CA (default: the CA of an endpoint this
        # process started, else the system's CAs).
        ca_file = ca_file or _started_cas.get(self.url)
        self._tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    def faults(self, **patch: Any) -> dict[str, Any]:
        """Merge the given fault keys (none: just read them); returns the full config."""
        if not patch:
            return self._call("GET", "/admin/faults")
        return self._call("POST", "/admin/faults", patch)

    def stats(self, timeout_s: float = ADMIN_TIMEOUT_S) -> dict[str, Any]:
        """The counters; over a whole reference day (250,000 receipts, 25M stored rows)
        they take minutes: give such a caller a longer timeout."""
        return self._call("GET", "/admin/stats", timeout=timeout_s)

    def reconcile(self, data_uuid: str, ids: Sequence[str], timeout_s: float = ADMIN_TIMEOUT_S) -> dict[str, Any]:
        return self._call("POST", "/admin/reconcile", {"dataUuid": data_uuid, "ids": list(ids)}, timeout=timeout_s)

    def receipts(self, data_uuid: str, batches: Sequence[Sequence[str]]) -> list[list[dict[str, Any]]]:
        """For each batch (its ids in order), the receipts of its stored requests, oldest first."""
        payload = {"dataUuid": data_uuid, "batches": [list(b) for b in batches]}
        return self._call("POST", "/admin/receipts", payload)["batches"]

    def reset(self) -> dict[str, Any]:
        return self._call("POST", "/admin/reset", {})

    def release(self) -> dict[str, Any]:
        """Send now every answer that injected latency still holds back."""
        return self._call("POST", "/admin/release", {})

    def revoke(self, institution_id: str, data_uuid: str) -> dict[str, Any]:
        payload = {"institutionId": institution_id, "dataUuid": data_uuid}
        return self._call("POST", "/admin/revoke", payload)

    def register(self, registration: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/admin/register", registration)

    def health(self) -> dict[str, Any] | None:
        """The /healthz answer, or None while nothing answers."""
        try:
            return self._call("GET", "/healthz", timeout=1.0)
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def _call(
        self, method: str, path: str, payload: Any = None, timeout: float = ADMIN_TIMEOUT_S
    ) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.admin_token:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout, context=self._tls) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and its key, and the CA that signed it (all PEM)."""

    cert: Path
    key: Path
    ca: Path


@dataclass
class EmulatorProcess(AdminClient):
    """A running `python -m datahub_emulator`; use as a context manager or call stop().

    With port 0 (the default) the endpoint binds a free port itself and reports it in a
    file; `port` and `url` are then known once started. The admin token is generated here
    and handed to the endpoint in its environment.
    """

    db_path: Path
    port: int = 0
    host: str = "127.0.0.1"
    cap: int | None = None
    extra_args: Sequence[str] = ()
    log_path: Path | None = None
    tls: TlsFiles | None = None  # serve HTTPS with this certificate
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        AdminClient.__init__(self, self._url_for(self.port), self.admin_token, self.tls.ca if self.tls else None)

    @property
    def port_file(self) -> Path:
        return self.db_path.with_name(self.db_path.name + ".port")

    @property
    def admin_token_file(self) -> Path:
        """Where the endpoint writes its admin token (mode 0600) while it runs."""
        return self.db_path.with_name(self.db_path.name + ".admin-token")

    def start(self) -> EmulatorProcess:
        self.port_file.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "datahub_emulator",
            "--host", self.host, "--port", str(self.port), "--db", str(self.db_path),
            "--port-file", str(self.port_file),
        ]  # fmt: skip
        if self.cap is not None:
            command += ["--cap", str(self.cap)]
        if self.tls is not None:
            command += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
        command += list(self.extra_args)
        env = {**os.environ, ADMIN_TOKEN_ENV: self.admin_token}
        if self.log_path is None:
            self._process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
            )
        else:
            # The child keeps its own descriptor; ours closes as soon as it has started.
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        self._wait_until_serving()
        _started_tokens[self.url] = self.admin_token
        if self.tls is not None:
            _started_cas[self.url] = self.tls.ca
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
        _started_tokens.pop(self.url, None)
        _started_cas.pop(self.url, None)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def _url_for(self, port: int) -> str:
        # A wildcard address is reached through loopback, the only Host the admin API takes.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        scheme = "https" if self.tls else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def _wait_until_serving(self) -> None:
        """Until the child has reported its port and answers /healthz with its own pid."""
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        reported: int | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"endpoint exited with code {self._process.returncode}")
            if reported is None and (reported := _read_port(self.port_file)) is not None:
                self.port_file.unlink()
                self.port = reported
                self.url = self._url_for(reported)
            if reported is not None:
                health = self.health()
                if health is not None and health.get("pid") == self._process.pid:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"endpoint did not answer within {STARTUP_TIMEOUT_S} s")

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_port(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return None
