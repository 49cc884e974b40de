"""The partner's Java SDK, called through JPype.

The JVM starts lazily in the process that uploads (never while definitions load or in
the daemon), once per process, and is never shut down here: a JPype JVM cannot be
restarted. `upload_batch` is the one place that knows the SDK's Java signature; swap
the real jar in by pointing DATAHUB_SDK_CLASSPATH at it.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
from pydantic import PrivateAttr

from datahub_assets.upload.outcome import BatchStatus, UploadOutcome

SDK_CLIENT_CLASS = "com.alipay.idatahub.client.DataUploadClient"


# The keys the stand-in SDK reads (docs/protocol.md); the real SDK's are configurable
# through DataHubSdkResource.required_keys.
STANDIN_KEYS = ("institutionId", "antInstitutionId", "clientId", "clientPrivateKey", "dataKeyId", "dataKey", "endpoint")
# Java exceptions that mean the request never reached the partner.
UNREACHABLE = {"ConnectException", "UnknownHostException", "HttpConnectTimeoutException", "NoRouteToHostException"}


class SdkConfigError(RuntimeError):
    """The SDK cannot be used as configured; the message names the setting and the fix."""


class KeysFileError(SdkConfigError, PermissionError):
    """keys.properties is missing, readable by other users, or incomplete."""


def check_keys_file(path: str, required_keys: tuple[str, ...] | list[str] = STANDIN_KEYS) -> dict[str, str]:
    """Refuse a keys file that group or others can read (it holds the client's private
    key), or that lacks a required key; return its non-secret settings."""
    p = Path(path)
    if not p.is_file():
        raise KeysFileError(
            f"keys.properties not found at {p} (DATAHUB_KEYS_PATH). Create it with the partner's toolkit "
            "(the stand-in: python -m datahub_emulator.toolkit init), or point DATAHUB_KEYS_PATH at it."
        )
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysFileError(
            f"{p} (DATAHUB_KEYS_PATH) is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {p}`: it holds the client's private key"
        )
    present = {}
    for line in p.read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            name, _, value = line.partition("=")
            present[name.strip()] = value.strip()
    missing = [k for k in required_keys if not present.get(k)]
    if missing:
        raise KeysFileError(
            f"{p} (DATAHUB_KEYS_PATH) lacks {', '.join(missing)}: re-run the partner's toolkit to write a complete file"
        )
    return {"endpoint": present.get("endpoint", "")}


def check_classpath(classpath: list[str]) -> None:
    missing = [c for c in classpath if not Path(c).exists()]
    if not classpath or missing:
        raise SdkConfigError(
            f"SDK classpath entries not found: {missing or '(empty)'} (DATAHUB_SDK_CLASSPATH). Build the stand-in "
            "with scripts/build_sdk.sh, or point DATAHUB_SDK_CLASSPATH at the partner's SDK jar and its dependencies."
        )


def _start_jvm(classpath: list[str], jvm_options: list[str]) -> None:
    import jpype

    if jpype.isJVMStarted():
        return
    # The JVM is shut down at interpreter exit (JPype's default): a process torn down
    # under running JVM threads can abort (docs/reliability.md). The SDK's own threads
    # are closed in teardown_after_execution, so the shutdown has none to wait on.
    jpype.startJVM(*jvm_options, classpath=classpath, convertStrings=False)


def open_client(keys_path: str):  # noqa: ANN201
    """The adapter, part one: how the SDK client is constructed."""
    import jpype
    import jpype.imports  # noqa: F401  (enables `from java.util import ...`)

    return jpype.JClass(SDK_CLIENT_CLASS)(keys_path)


def upload_batch(client, data_uuid: str, rows: list[str]) -> UploadOutcome:  # noqa: ANN001
    """The adapter, part two: the SDK's call and result."""
    import jpype
    from java.util import ArrayList, Arrays  # needs `import jpype.imports`, done in open_client

    # One conversion into a Java String[] instead of a call per row; the SDK gets a
    # mutable java.util.List, as a caller in Java would pass.
    data = ArrayList(Arrays.asList(jpype.JArray(jpype.JString)(rows)))
    try:
        result = client.uploadData(data_uuid, data)
    except jpype.JException as exc:
        # Only the exception class: its message could quote a value. The cause tells a
        # request that never left (endpoint unreachable) from one whose outcome is unknown.
        name, cause = str(exc.getClass().getSimpleName()), exc.getCause()
        names = {name, str(cause.getClass().getSimpleName())} if cause is not None else {name}
        kind = "ENDPOINT_UNREACHABLE" if names & UNREACHABLE else "SDK_EXCEPTION"
        return UploadOutcome(status=BatchStatus.UNKNOWN, code=f"{kind}:{name}", trace_id="")
    status = str(result.getResultStatus())
    # A status outside the documented S/U/F is an outcome we cannot vouch for: unknown.
    known = status in (BatchStatus.SUCCESS, BatchStatus.UNKNOWN, BatchStatus.FAILED)
    code = str(result.getResultCode())
    if code == "UNKOWN_EXCEPTION":  # the partner's document spells it both ways
        code = "UNKNOWN_EXCEPTION"
    trace = result.getTraceId()
    return UploadOutcome(
        status=BatchStatus(status) if known else BatchStatus.UNKNOWN,
        code=code,
        trace_id=str(trace) if trace is not None else "",
    )


def _probe(endpoint: str, timeout_s: float = 5.0) -> None:
    """Open (and close) a TCP connection to the endpoint: a partner that cannot be
    reached fails the step before any batch is recorded as sent."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise SdkConfigError(
            f"the partner endpoint {url.scheme}://{url.hostname}:{port} (the `endpoint` of DATAHUB_KEYS_PATH) "
            f"is unreachable: {exc.__class__.__name__}. Check the network, or that the endpoint is up."
        ) from None


class DataHubSdkResource(dg.ConfigurableResource):
    """The DataHub upload client (the partner's Java SDK) inside this process's JVM: the
    production `UploadClient`."""

    classpath: str  # the SDK jar plus its dependencies, os.pathsep-separated
    keys_path: str  # keys.properties; must be private to its owner
    jvm_options: list[str] = []
    required_keys: list[str] = list(STANDIN_KEYS)  # what keys.properties must hold for the SDK in use

    _client = PrivateAttr(default=None)
    _endpoint = PrivateAttr(default="")
    _lock = PrivateAttr(default_factory=threading.Lock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # The files now; the JVM and the client in start(), when there is something to send.
        check_classpath(self._classpath())
        self._endpoint = check_keys_file(self.keys_path, self.required_keys)["endpoint"]

    @property
    def endpoint(self) -> str:
        """The partner endpoint keys.properties names (no secret), for messages."""
        return self._endpoint

    def _classpath(self) -> list[str]:
        return [p for p in self.classpath.split(os.pathsep) if p]

    def start(self) -> None:
        """Start the JVM, construct the client and reach the endpoint; SdkConfigError says
        what to fix."""
        self._open_client()
        if self._endpoint:
            _probe(self._endpoint)

    def _open_client(self):  # noqa: ANN202
        import jpype

        with self._lock:
            if self._client is None:
                check_classpath(self._classpath())
                try:
                    _start_jvm(self._classpath(), self.jvm_options)
                    self._client = open_client(self.keys_path)
                except (jpype.JException, TypeError) as exc:
                    # The class only: the SDK's message could quote a key.
                    raise SdkConfigError(
                        f"the SDK could not start a client from {self.keys_path} (DATAHUB_KEYS_PATH) with "
                        f"DATAHUB_SDK_CLASSPATH: {exc.__class__.__name__}. Check that the keys file is the one "
                        "the partner's toolkit wrote and the classpath holds the SDK and its dependencies."
                    ) from None
            return self._client

    def upload(self, *, data_uuid: str, rows: list[str]) -> UploadOutcome:
        """Send one batch; thread-safe (the SDK client is shared by the upload threads)."""
        return upload_batch(self._open_client(), data_uuid, rows)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()
