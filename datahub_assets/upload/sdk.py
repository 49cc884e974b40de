"""The partner's Java SDK, called through JPype.

The JVM starts lazily in the process that uploads (never while definitions load or in
the daemon), once per process, and is never shut down here: a JPype JVM cannot be
restarted. `upload_batch` is the one place that knows the SDK's Java signature; swap
the real jar in by pointing DATAHUB_SDK_CLASSPATH at it.
"""

from __future__ import annotations

import errno
import ipaddress
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


class KeysFile:
    """keys.properties, opened once and checked on the open descriptor.

    The SDK reads the same open file through `proc_path` (/proc/self/fd/<fd>), so what
    it reads is what was checked: replacing the file at DATAHUB_KEYS_PATH afterwards
    changes nothing for this client. Keep it open while the client lives; `close()` after.
    """

    def __init__(self, path: str, fd: int, settings: dict[str, str]):
        self.path = path
        self.fd = fd
        self.settings = settings

    @property
    def proc_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _keys_error(p: Path, problem: str, fix: str) -> KeysFileError:
    return KeysFileError(f"{p} (DATAHUB_KEYS_PATH) {problem}; {fix}: it holds the client's private key")


def _check_folder(folder: Path, dir_fd: int) -> None:
    """The folder decides who may replace the file: only its owner (or root)."""
    st = os.fstat(dir_fd)
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        raise _keys_error(
            folder, f"is in a folder owned by another user (uid {st.st_uid})",
            f"keep keys.properties in a folder owned by uid {uid} or root",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _keys_error(
            folder, f"is in a folder writable by group or others (mode {stat.S_IMODE(st.st_mode):o})",
            f"run `chmod go-w {folder}`",
        )


def _check_file(p: Path, st: os.stat_result) -> None:
    """Private to the user that uploads: owned by them with no group or other bits; or
    owned by root and readable by their own group only (a Kubernetes Secret mounted in a
    pod whose fsGroup is that group, defaultMode 0440), which no other user can change."""
    uid, gid, mode = os.geteuid(), os.getegid(), stat.S_IMODE(st.st_mode)
    if st.st_uid == uid and not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return
    shared_by_root = uid != 0 and st.st_uid == 0 and st.st_gid == gid
    if shared_by_root and not mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
        return
    if st.st_uid not in (uid, 0):
        raise _keys_error(p, f"is owned by another user (uid {st.st_uid})", f"run `chown {uid} {p}` (the user that uploads)")
    if st.st_uid == 0 and uid != 0 and st.st_gid != gid:
        raise _keys_error(
            p, f"is owned by root with another group (gid {st.st_gid})",
            f"give it the uploading user's group {gid} (a Kubernetes pod's fsGroup), mode 440",
        )
    raise _keys_error(p, f"is accessible by group or others (mode {mode:o})", f"run `chmod 600 {p}`")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def open_keys_file(path: str, required_keys: tuple[str, ...] | list[str] = STANDIN_KEYS) -> KeysFile:
    """Open keys.properties without following a symlink and refuse it unless it is a
    regular file private to this user (`_check_file`), in a folder only they (or root)
    can change, holding every required key. The checks run on the
    open descriptors, so nothing can swap the file between the check and the read."""
    p = Path(path)
    folder = p.parent
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        dir_fd = -1
    try:
        if dir_fd >= 0:
            _check_folder(folder, dir_fd)
            try:
                # O_NONBLOCK: a FIFO put at the path must not hang the open before the
                # regular-file check refuses it.
                fd = os.open(p.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except FileNotFoundError:
                fd = -1
            except PermissionError:
                raise _keys_error(
                    p, f"cannot be read by the user that uploads (uid {os.geteuid()})",
                    "make it theirs (mode 600), or on Kubernetes readable by the pod's fsGroup (mode 440)",
                ) from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _keys_error(p, "is a symbolic link", "point DATAHUB_KEYS_PATH at the file itself") from None
                raise
        else:
            fd = -1
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
    if fd < 0:
        raise KeysFileError(
            f"keys.properties not found at {p} (DATAHUB_KEYS_PATH). Create it with the partner's toolkit "
            "(the stand-in: python -m datahub_emulator.toolkit init), or point DATAHUB_KEYS_PATH at it."
        )
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _keys_error(p, "is not a regular file", "point DATAHUB_KEYS_PATH at the file the toolkit wrote")
        _check_file(p, st)
        os.set_blocking(fd, True)
        present = {}
        for line in _read_all(fd).decode("utf-8", errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "!")) and "=" in line:
                name, _, value = line.partition("=")
                present[name.strip()] = value.strip()
        missing = [k for k in required_keys if not present.get(k)]
        if missing:
            raise KeysFileError(
                f"{p} (DATAHUB_KEYS_PATH) lacks {', '.join(missing)}: re-run the partner's toolkit to write a "
                "complete file"
            )
        # Only what is no secret: where requests go, and the data key's id (which every
        # request carries in the clear).
        return KeysFile(str(p), fd, {name: present.get(name, "") for name in ("endpoint", "dataKeyId")})
    except BaseException:
        os.close(fd)
        raise


def check_keys_file(path: str, required_keys: tuple[str, ...] | list[str] = STANDIN_KEYS) -> dict[str, str]:
    """The checks of `open_keys_file` alone; returns the file's non-secret settings."""
    keys = open_keys_file(path, required_keys)
    keys.close()
    return keys.settings


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(endpoint: str) -> None:
    """Refuse an endpoint that would carry the batches without TLS off this machine:
    `https://` anywhere, `http://` only on loopback (the local stand-in endpoint)."""
    if not endpoint:
        return  # an SDK whose keys file names no endpoint chooses its own
    url = urlsplit(endpoint)
    if not url.hostname:
        raise SdkConfigError(
            "the partner endpoint (the `endpoint` of DATAHUB_KEYS_PATH) names no host: write it as "
            "https://host[:port]"
        )
    if url.scheme == "https":
        return
    if url.scheme == "http" and _is_loopback(url.hostname):
        return
    try:
        port = url.port
    except ValueError:
        port = None
    shown = f"{url.scheme}://{url.hostname}" + (f":{port}" if port else "")  # never the userinfo
    raise SdkConfigError(
        f"the partner endpoint {shown} (the `endpoint` of DATAHUB_KEYS_PATH) is not https: batches, signatures "
        "and answers would cross the network without TLS. Use the partner's https:// endpoint; plain http:// "
        "is accepted only on loopback (127.0.0.1, ::1, localhost) for the local stand-in endpoint."
    )


def check_classpath(classpath: list[str]) -> None:
    missing = [c for c in classpath if not Path(c).exists()]
    if not classpath or missing:
        raise SdkConfigError(
            f"SDK classpath entries not found: {missing or '(empty)'} (DATAHUB_SDK_CLASSPATH). Build the stand-in "
            "with scripts/build_sdk.sh, or point DATAHUB_SDK_CLASSPATH at the partner's SDK jar and its dependencies."
        )


_jvm_options: list[str] | None = None  # what this process's JVM was started with


def _start_jvm(classpath: list[str], jvm_options: list[str]) -> None:
    import jpype

    global _jvm_options
    if jpype.isJVMStarted():
        # One JVM per process, started once: options asked for later cannot apply.
        missing = [o for o in jvm_options if o not in (_jvm_options or [])]
        if missing:
            raise SdkConfigError(
                f"this process's JVM was started without {missing}; a JVM takes its options only at start. "
                "Run uploads with different SDK settings (DATAHUB_SDK_TRUSTSTORE) in separate processes."
            )
        return
    _jvm_options = list(jvm_options)
    # The JVM is shut down at interpreter exit (JPype's default): a process torn down
    # under running JVM threads can abort (docs/reliability.md). The SDK's own threads
    # are closed in teardown_after_execution, so the shutdown has none to wait on.
    jpype.startJVM(*jvm_options, classpath=classpath, convertStrings=False)


# Batches' worth of the JDK's cryptography, run once per JVM before a long range: 8,000
# AES-GCM encryptions pass the JIT's threshold for full compilation (docs/performance.md).
WARM_UP_BATCHES = 20
WARM_UP_VALUES_PER_BATCH = 400
_crypto_warmed = threading.Event()


def warm_up_crypto(batches: int = WARM_UP_BATCHES) -> None:
    """Run the JDK code an SDK call spends its CPU in (AES-GCM per value, Base64, SHA-256
    and an RSA signature per request), on made-up bytes, before the first limiter slot.

    The SDK encrypts every value and signs every request on the calling thread before its
    request leaves. In a new JVM that code is interpreted until the JIT has compiled it,
    and the first calls leave 100-250 ms after their slot, long enough to arrive among
    the next second's requests and push it over the partner's cap. Compiled here, outside
    any slot, the first real calls leave far closer to their slots (measured in
    docs/performance.md). Nothing here touches the SDK, its keys or any row, so it holds
    for any SDK jar. Once per process: the JVM is the process's.
    """
    if _crypto_warmed.is_set():
        return
    import jpype
    import jpype.imports  # noqa: F401  (enables `from java.security import ...`)
    from java.security import KeyPairGenerator, MessageDigest, SecureRandom, Signature
    from java.util import Base64
    from javax.crypto import Cipher, KeyGenerator
    from javax.crypto.spec import GCMParameterSpec

    aes = KeyGenerator.getInstance("AES")
    aes.init(256)
    key = aes.generateKey()
    rsa = KeyPairGenerator.getInstance("RSA")
    rsa.initialize(1024)  # the signing code is the same for any size; a small key is quick to make
    private_key = rsa.generateKeyPair().getPrivate()
    random, nonce = SecureRandom(), jpype.JArray(jpype.JByte)(12)
    value, body = jpype.JArray(jpype.JByte)(bytes(48)), jpype.JArray(jpype.JByte)(bytes(4096))
    base64 = Base64.getEncoder()
    for _ in range(batches):
        cipher = Cipher.getInstance("AES/GCM/NoPadding")
        for _ in range(WARM_UP_VALUES_PER_BATCH):
            random.nextBytes(nonce)
            cipher.init(Cipher.ENCRYPT_MODE, key, GCMParameterSpec(128, nonce))
            base64.encodeToString(cipher.doFinal(value))
        MessageDigest.getInstance("SHA-256").digest(body)
        signature = Signature.getInstance("SHA256withRSA")
        signature.initSign(private_key)
        signature.update(body)
        signature.sign()
    _crypto_warmed.set()


def open_client(keys_path: str):  # noqa: ANN201
    """The adapter, part one: how the SDK client is constructed."""
    import jpype
    import jpype.imports  # noqa: F401  (enables `from java.util import ...`)

    return jpype.JClass(SDK_CLIENT_CLASS)(keys_path)


def java_rows(rows: list[str]):
    """The adapter, part two: a batch's rows as the SDK takes them (a java.util.List).

    Built before the limiter slot is taken, so that nothing but the SDK call sits between
    the slot and the request."""
    import jpype
    from java.util import ArrayList, Arrays  # needs `import jpype.imports`, done in open_client

    # One conversion into a Java String[] instead of a call per row; the SDK gets a
    # mutable java.util.List, as a caller in Java would pass.
    return ArrayList(Arrays.asList(jpype.JArray(jpype.JString)(rows)))


def upload_batch(client, data_uuid: str, rows) -> UploadOutcome:  # noqa: ANN001
    """The adapter, part three: the SDK's call and result. `rows` is the list from
    `java_rows` (Python strings are converted here)."""
    import jpype

    data = rows if isinstance(rows, jpype.JObject) else java_rows(rows)
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
    """Reach the endpoint before any batch is recorded as sent: a TCP connection, and for
    https a TLS handshake in the JVM, which checks the certificate (chain and name) with
    the trust the SDK's requests get."""
    url = urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    shown = f"{url.scheme}://{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise SdkConfigError(
            f"the partner endpoint {shown} (the `endpoint` of DATAHUB_KEYS_PATH) "
            f"is unreachable: {exc.__class__.__name__}. Check the network, or that the endpoint is up."
        ) from None
    if url.scheme == "https":
        _tls_handshake(host, port, timeout_s, shown)


def _tls_handshake(host: str, port: int, timeout_s: float, shown: str) -> None:
    import jpype
    from java.net import InetSocketAddress, Socket
    from javax.net.ssl import SSLSocketFactory

    millis = int(timeout_s * 1000)
    plain = Socket()
    try:
        plain.connect(InetSocketAddress(host, port), millis)
        plain.setSoTimeout(millis)
        tls = SSLSocketFactory.getDefault().createSocket(plain, host, port, True)
        parameters = tls.getSSLParameters()
        parameters.setEndpointIdentificationAlgorithm("HTTPS")  # the certificate must name this host
        tls.setSSLParameters(parameters)
        tls.startHandshake()
    except jpype.JException as exc:
        raise SdkConfigError(
            f"the partner endpoint {shown} failed the TLS check: {exc.getClass().getSimpleName()}. Its certificate "
            "is not trusted by the JVM or does not name this host. For a private CA (the stand-in endpoint), set "
            "DATAHUB_SDK_TRUSTSTORE to a PKCS12 trust store holding it; otherwise check the endpoint in "
            "DATAHUB_KEYS_PATH."
        ) from None
    finally:
        plain.close()


class DataHubSdkResource(dg.ConfigurableResource):
    """The DataHub upload client (the partner's Java SDK) inside this process's JVM: the
    production `UploadClient`."""

    classpath: str  # the SDK jar plus its dependencies, os.pathsep-separated
    keys_path: str  # keys.properties; must be private to its owner
    jvm_options: list[str] = []
    # A PKCS12 trust store holding the CA of the endpoint's TLS certificate; empty: the
    # JVM's own CAs (a public partner endpoint). The SDK verifies the certificate either way.
    trust_store: str = ""
    required_keys: list[str] = list(STANDIN_KEYS)  # what keys.properties must hold for the SDK in use

    _client = PrivateAttr(default=None)
    _keys = PrivateAttr(default=None)  # the open, checked KeysFile the client reads
    _endpoint = PrivateAttr(default="")
    _lock = PrivateAttr(default_factory=threading.Lock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # The files now; the JVM and the client in start(), when there is something to send.
        check_classpath(self._classpath())
        if self.trust_store and not Path(self.trust_store).is_file():
            raise SdkConfigError(
                f"the trust store {self.trust_store} (DATAHUB_SDK_TRUSTSTORE) does not exist: give the PKCS12 file "
                "holding the endpoint's CA, or leave it empty to trust the JVM's own CAs"
            )
        with self._lock:
            self._open_keys()

    def _open_keys(self) -> KeysFile:
        """The keys file, opened and checked once per resource (under the lock)."""
        if self._keys is None:
            keys = open_keys_file(self.keys_path, self.required_keys)
            try:
                check_transport(keys.settings["endpoint"])
            except BaseException:
                keys.close()
                raise
            self._keys, self._endpoint = keys, keys.settings["endpoint"]
        return self._keys

    @property
    def endpoint(self) -> str:
        """The partner endpoint keys.properties names (no secret), for messages."""
        return self._endpoint

    @property
    def key_id(self) -> str:
        """The dataKeyId of the keys file this run opened (a rotation applies from the next run)."""
        return self._keys.settings.get("dataKeyId", "") if self._keys is not None else ""

    def _all_jvm_options(self) -> list[str]:
        if not self.trust_store:
            return list(self.jvm_options)
        trust = [f"-Djavax.net.ssl.trustStore={self.trust_store}", "-Djavax.net.ssl.trustStoreType=PKCS12"]
        return [*self.jvm_options, *trust]

    def _classpath(self) -> list[str]:
        return [p for p in self.classpath.split(os.pathsep) if p]

    def start(self, warm_up: bool = False) -> None:
        """Start the JVM, construct the client and reach the endpoint; SdkConfigError says
        what to fix. `warm_up`: also compile the SDK's cryptography first (`warm_up_crypto`),
        worth its few seconds of CPU before a range long enough to hold the cap for a while."""
        self._open_client()
        if self._endpoint:
            _probe(self._endpoint)
        if warm_up:
            warm_up_crypto()

    def _open_client(self):  # noqa: ANN202
        import jpype

        with self._lock:
            if self._client is None:
                check_classpath(self._classpath())
                keys = self._open_keys()
                try:
                    _start_jvm(self._classpath(), self._all_jvm_options())
                    # The SDK reads the descriptor checked above, not the path again.
                    self._client = open_client(keys.proc_path)
                except (jpype.JException, TypeError) as exc:
                    # The class only: the SDK's message could quote a key.
                    raise SdkConfigError(
                        f"the SDK could not start a client from {self.keys_path} (DATAHUB_KEYS_PATH) with "
                        f"DATAHUB_SDK_CLASSPATH: {exc.__class__.__name__}. Check that the keys file is the one "
                        "the partner's toolkit wrote and the classpath holds the SDK and its dependencies."
                    ) from None
            return self._client

    def prepare(self, rows: list[str]):
        """A batch's rows as the SDK takes them, for `upload`."""
        self._open_client()  # the JVM, which the Java list lives in
        return java_rows(rows)

    def upload(self, *, data_uuid: str, rows) -> UploadOutcome:
        """Send one batch (rows from `prepare`); thread-safe (the SDK client is shared by
        the upload threads)."""
        return upload_batch(self._open_client(), data_uuid, rows)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            client, self._client = self._client, None
            keys, self._keys = self._keys, None
        try:
            if client is not None and hasattr(client, "close"):
                client.close()
        finally:
            if keys is not None:
                keys.close()
