"""The partner's Java SDK, called through JPype.

The JVM starts lazily in the process that uploads (never while definitions load or in
the daemon), once per process, and is never shut down here: a JPype JVM cannot be
restarted. `upload_batch` is the one place that knows the SDK's Java signature; swap
the real jar in by pointing DATAHUB_SDK_CLASSPATH at it.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from datahub_assets.upload.outcome import BatchStatus, UploadOutcome

SDK_CLIENT_CLASS = "com.alipay.idatahub.client.DataUploadClient"


class KeysFileError(PermissionError):
    """keys.properties is missing or readable by other users."""


def check_keys_file(path: str) -> None:
    """Refuse a keys file that group or others can read: it holds the client's private key."""
    p = Path(path)
    if not p.is_file():
        raise KeysFileError(f"keys.properties not found at {p}")
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysFileError(
            f"{p} is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {p}` — it holds the client's private key"
        )


def _start_jvm(classpath: list[str], jvm_options: list[str]) -> None:
    import jpype

    if jpype.isJVMStarted():
        return
    missing = [c for c in classpath if not Path(c).exists()]
    if missing:
        raise FileNotFoundError(f"SDK classpath entries not found: {missing}")
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
        # Only the exception class: its message could quote a value.
        return UploadOutcome(status=BatchStatus.UNKNOWN, code=f"SDK_EXCEPTION:{exc.getClass().getSimpleName()}", trace_id="")
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


class DataHubSdkResource(dg.ConfigurableResource):
    """The DataHub upload client (the partner's Java SDK) inside this process's JVM: the
    production `UploadClient`."""

    classpath: str  # the SDK jar plus its dependencies, os.pathsep-separated
    keys_path: str  # keys.properties; must be private to its owner
    jvm_options: list[str] = []

    _client = PrivateAttr(default=None)
    _lock = PrivateAttr(default_factory=threading.Lock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        check_keys_file(self.keys_path)
        # Deferred to first use: a step that holds the resource but uploads nothing
        # (or a sensor) never pays for a JVM.

    def _open_client(self):  # noqa: ANN202
        with self._lock:
            if self._client is None:
                _start_jvm([p for p in self.classpath.split(os.pathsep) if p], self.jvm_options)
                self._client = open_client(self.keys_path)
            return self._client

    def upload(self, *, data_uuid: str, rows: list[str]) -> UploadOutcome:
        """Send one batch; thread-safe (the SDK client is shared by the upload threads)."""
        return upload_batch(self._open_client(), data_uuid, rows)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()
