"""The local DataHub endpoint driven through the real Java stand-in SDK (JPype), no mocks.

Cases the SDK cannot produce (tampered, unsigned, replayed or stale requests, broken
ciphertext) start from a request the SDK really sent, captured by a small forwarding
proxy, and are resent with urllib.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jpype
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from datahub_emulator import checks
from datahub_emulator.client import EmulatorProcess, free_port
from datahub_emulator.service import max_in_window
from datahub_emulator.toolkit import init_keys, read_properties, write_properties

from datahub_assets.contract import load_contract
from datahub_dev.stack import contract_schema

UPLOAD_PATH = "/datahub/v1/upload"

ClientFactory = Callable[[Path], Any]

Row = dict[str, str] | str | None


@dataclass(frozen=True)
class Result:
    status: str
    code: str
    msg: str
    trace_id: str


def upload(client: Any, data_uuid: str | None, rows: Sequence[Row]) -> Result:
    """Call DataUploadClient.uploadData; dict rows are sent as JSON text, str rows as is."""
    java_rows = jpype.JClass("java.util.ArrayList")()
    for row in rows:
        java_rows.add(json.dumps(row) if isinstance(row, dict) else row)
    result = client.uploadData(data_uuid, java_rows)
    return Result(
        status=str(result.getResultStatus()),
        code=str(result.getResultCode()),
        msg=str(result.getResultMsg()),
        trace_id=str(result.getTraceId()),
    )


def good_row(row_id: str, **extra: str) -> dict[str, str]:
    return {"id": row_id, "userName": "Ann", "userAge": "24", "screenWidth": "1.5", **extra}


def keys_variant(keys_file: Path, tmp_path: Path, **changes: str) -> Path:
    """A copy of keys_file with some entries changed (e.g. another endpoint)."""
    values = {**read_properties(keys_file), **changes}
    path = tmp_path / f"variant-{secrets.token_hex(4)}.properties"
    write_properties(path, values)
    return path


def assert_trace_id(result: Result) -> None:
    assert len(result.trace_id) == 19 and result.trace_id.isdigit(), result


# --- the happy path -----------------------------------------------------------------


def test_success_stores_rows_and_reconciles(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    rows = [good_row(f"user-{i}") for i in range(100)]
    result = upload(sdk_client, user_profile_uuid, rows)
    assert (result.status, result.code) == ("S", "SUCCESS")
    assert_trace_id(result)

    # Optional columns may be left out (the contract's null rule), and resending upserts.
    assert upload(sdk_client, user_profile_uuid, [{"id": "user-0"}]).code == "SUCCESS"

    ids = [f"user-{i}" for i in range(100)] + ["never-sent"]
    report = datahub_endpoint.reconcile(user_profile_uuid, ids)
    assert report["expected"] == 101
    assert report["stored"] == 100
    assert report["missing"] == 1 and report["missing_indexes"] == [100]
    assert report["unexpected"] == 0
    stats = datahub_endpoint.stats()
    assert stats["rows_stored"] == {user_profile_uuid: 100}
    assert stats["by_code"] == {"SUCCESS": 2}


# --- F/PARAM_ILLEGAL ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_uuid", "rows", "msg_part"),
    [
        pytest.param(None, [good_row("1")], "dataUuid", id="missing-dataUuid"),
        pytest.param("", [good_row("1")], "dataUuid", id="empty-dataUuid"),
        pytest.param("USE_DEMO", [], "empty", id="empty-data"),
        pytest.param(
            "USE_DEMO", [good_row(str(i)) for i in range(101)], "more than 100", id="101-rows"
        ),
        pytest.param("USE_DEMO", [good_row("1"), "[1, 2]"], "row 1", id="non-object-row"),
        pytest.param("USE_DEMO", ["not json at all"], "row 0", id="unparsable-row"),
        pytest.param("USE_DEMO", [None], "row 0", id="null-row"),
        pytest.param("USE_DEMO", [{"id": "1", "userAge": 24}], "row 0", id="non-string-value"),
        pytest.param("USE_DEMO", [{"id": "1", "nested": {"a": "b"}}], "row 0", id="nested"),
    ],
)
def test_param_illegal(
    sdk_client: Any, user_profile_uuid: str, data_uuid: str | None, rows: list[Any], msg_part: str
) -> None:
    uuid = user_profile_uuid if data_uuid == "USE_DEMO" else data_uuid
    result = upload(sdk_client, uuid, rows)
    assert (result.status, result.code) == ("F", "PARAM_ILLEGAL"), result
    assert msg_part in result.msg
    assert_trace_id(result)


# --- F/DATA_CHECK_FAILED ------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_row", "column", "value"),
    [
        pytest.param({"userName": "Ann"}, "id", None, id="missing-id"),
        pytest.param({"id": ""}, "id", None, id="empty-id"),
        pytest.param(good_row("2", userAge="24.0"), "userAge", "24.0", id="bigint-24.0"),
        pytest.param(good_row("2", userAge="024"), "userAge", "024", id="bigint-leading-zero"),
        pytest.param(
            good_row("2", userAge="9223372036854775808"),
            "userAge",
            "9223372036854775808",
            id="bigint-overflow",
        ),
        pytest.param(good_row("2", userAge=""), "userAge", None, id="bigint-empty"),
        pytest.param(good_row("2", screenWidth="abc"), "screenWidth", "abc", id="double-abc"),
        pytest.param(good_row("2", screenWidth="nan"), "screenWidth", "nan", id="double-nan"),
        pytest.param(good_row("2", screenWidth="1e999"), "screenWidth", "1e999", id="double-inf"),
        pytest.param(good_row("2", screenWidth="1_0"), "screenWidth", "1_0", id="double-1_0"),
        pytest.param(good_row("2", shoeSize="44"), "shoeSize", "44", id="unknown-column"),
    ],
)
def test_data_check_failed_names_row_and_column_never_the_value(
    sdk_client: Any,
    datahub_endpoint: EmulatorProcess,
    user_profile_uuid: str,
    bad_row: dict[str, str],
    column: str,
    value: str | None,
) -> None:
    result = upload(sdk_client, user_profile_uuid, [good_row("1"), bad_row])
    assert (result.status, result.code) == ("F", "DATA_CHECK_FAILED"), result
    assert f"row 1 column {column}" in result.msg
    if value:
        assert value not in result.msg
    # A batch that fails its check stores nothing, not even its good rows.
    assert datahub_endpoint.stats()["rows_stored"] == {}


@pytest.mark.parametrize(
    "row",
    [
        good_row("edge-1", userAge="-9223372036854775808", screenWidth="-0.0"),
        good_row("edge-2", userAge="9223372036854775807", screenWidth="1.0E-5"),
        good_row("edge-3", userAge="0", screenWidth="1e+16", userName=""),
        good_row("edge-4", userName='名前 "quoted" \\ \n'),
    ],
)
def test_edge_values_pass(sdk_client: Any, user_profile_uuid: str, row: dict[str, str]) -> None:
    assert upload(sdk_client, user_profile_uuid, [row]).code == "SUCCESS"


@pytest.mark.parametrize(
    ("column_type", "text", "valid"),
    [
        ("Bigint", "24", True),
        ("Bigint", "-0", True),
        ("Bigint", "+1", False),
        ("Bigint", " 1", False),
        ("Bigint", "1e3", False),
        ("Bigint", "-9223372036854775809", False),
        ("Double", "24", True),
        ("Double", "3.141592653589793", True),
        ("Double", "-1.5E+300", True),
        ("Double", ".5", False),
        ("Double", "inf", False),
        ("Double", "Infinity", False),
        ("Double", "1.", False),
        ("String", "", True),
    ],
)
def test_type_validators(column_type: str, text: str, valid: bool) -> None:
    assert checks.TYPE_VALIDATORS[column_type](text) is valid


# --- U/UNKNOWN_EXCEPTION and U/THROTTLED ----------------------------------------------


def test_injected_unknown_exception(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    datahub_endpoint.faults(u_rate=1.0)
    result = upload(sdk_client, user_profile_uuid, [good_row("1")])
    assert (result.status, result.code, result.msg) == ("U", "UNKNOWN_EXCEPTION", "injected")
    assert_trace_id(result)
    datahub_endpoint.faults(u_rate=0.0)
    assert upload(sdk_client, user_profile_uuid, [good_row("1")]).code == "SUCCESS"


def test_injected_f_result(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    datahub_endpoint.faults(f_rate=1.0)
    result = upload(sdk_client, user_profile_uuid, [good_row("1")])
    assert (result.status, result.code, result.msg) == ("F", "DATA_CHECK_FAILED", "injected")


def test_outage_answers_unknown_until_it_ends(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    now = time.time()
    datahub_endpoint.faults(outages=[{"start": now - 1, "end": now + 1.5}])
    during = [upload(sdk_client, user_profile_uuid, [good_row("1")]) for _ in range(3)]
    assert {(r.status, r.code) for r in during} == {("U", "UNKNOWN_EXCEPTION")}
    time.sleep(max(0.0, now + 1.6 - time.time()))
    assert upload(sdk_client, user_profile_uuid, [good_row("1")]).code == "SUCCESS"


def test_lost_ack_stores_but_answers_unknown(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    datahub_endpoint.faults(lost_ack_rate=1.0)
    result = upload(sdk_client, user_profile_uuid, [good_row("lost-1")])
    assert (result.status, result.code) == ("U", "UNKNOWN_EXCEPTION")
    assert datahub_endpoint.reconcile(user_profile_uuid, ["lost-1"])["stored"] == 1


def test_dead_endpoint_is_a_local_unknown(
    sdk_client_factory: ClientFactory, keys_file: Path, tmp_path: Path, user_profile_uuid: str
) -> None:
    dead = keys_variant(keys_file, tmp_path, endpoint=f"http://127.0.0.1:{free_port()}")
    result = upload(sdk_client_factory(dead), user_profile_uuid, [good_row("1")])
    assert (result.status, result.code) == ("U", "UNKNOWN_EXCEPTION")
    assert result.trace_id.startswith("local-")


def test_latency_is_injected_without_blocking_other_requests(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    upload(sdk_client, user_profile_uuid, [good_row("warm")])  # JIT and connections warm
    datahub_endpoint.faults(latency_ms={"median": 400, "jitter": 0})
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda i: upload(sdk_client, user_profile_uuid, [good_row(str(i))]), range(8))
        )
    elapsed = time.monotonic() - started
    assert {r.code for r in results} == {"SUCCESS"}
    # Eight sleeps of 0.4 s overlap: far less than 8 x 0.4 s.
    assert 0.4 <= elapsed < 1.5


def test_burst_over_the_cap_is_throttled(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    assert datahub_endpoint.faults()["cap"] == 20
    pool_size = 25
    barrier = threading.Barrier(pool_size)

    def fire(i: int) -> Result:
        barrier.wait()  # all threads at once; it also makes the pool use 25 threads
        return upload(sdk_client, user_profile_uuid, [good_row(f"burst-{i}")])

    with ThreadPoolExecutor(pool_size) as pool:
        # Warm-up round with the cap lifted: each thread attaches to the JVM and opens its
        # connection now, so that the measured burst is only the requests themselves.
        datahub_endpoint.faults(cap=1000)
        list(pool.map(fire, range(pool_size)))
        datahub_endpoint.faults(cap=20)
        datahub_endpoint.reset()  # the warm-up must not count toward the burst's window

        started = time.monotonic()
        results = list(pool.map(fire, range(pool_size)))
        assert time.monotonic() - started < 1.0, "the burst must fit in one second"

    codes = [r.code for r in results]
    assert codes.count("THROTTLED") >= 5
    assert codes.count("SUCCESS") <= 20
    assert all(r.status == "U" for r in results if r.code == "THROTTLED")
    stats = datahub_endpoint.stats()
    assert stats["max_admitted_per_sliding_second"] <= 20
    assert stats["by_code"]["THROTTLED"] == codes.count("THROTTLED")
    second_counts = stats["per_second"].values()
    assert sum(c["arrived"] for c in second_counts) == pool_size
    assert sum(c["admitted"] for c in second_counts) == pool_size - codes.count("THROTTLED")


def test_throttled_requests_do_not_use_up_the_window(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    datahub_endpoint.faults(cap=2)
    first = [upload(sdk_client, user_profile_uuid, [good_row(str(i))]) for i in range(5)]
    assert [r.code for r in first] == ["SUCCESS"] * 2 + ["THROTTLED"] * 3
    time.sleep(1.05)
    # Had the throttled attempts counted, the window would still be full.
    assert upload(sdk_client, user_profile_uuid, [good_row("later")]).code == "SUCCESS"


def test_max_in_window_matches_the_throttle() -> None:
    assert max_in_window([]) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert max_in_window([0.0, 1.0, 2.0]) == 1


# --- authentication, authorization, replay ---------------------------------------------


@dataclass
class Captured:
    body: bytes
    headers: dict[str, str]


class CapturingProxy:
    """Records each request the SDK sends, byte for byte, and forwards it to the endpoint."""

    def __init__(self, target_url: str) -> None:
        self.captured: list[Captured] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-")}
                proxy.captured.append(Captured(body, headers))
                answer = post_raw(target_url + self.path, body, headers)
                payload = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def post_raw(url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def captured_request(
    sdk_client_factory: ClientFactory,
    keys_file: Path,
    datahub_endpoint: EmulatorProcess,
    tmp_path: Path,
    user_profile_uuid: str,
) -> Iterator[Captured]:
    """One real request from the SDK (already answered S), for resending by hand."""
    proxy = CapturingProxy(datahub_endpoint.url)
    client = sdk_client_factory(keys_variant(keys_file, tmp_path, endpoint=proxy.url))
    try:
        result = upload(client, user_profile_uuid, [good_row("captured-1"), good_row("c-2")])
        assert result.code == "SUCCESS"
        assert len(proxy.captured) == 1
        yield proxy.captured[0]
    finally:
        proxy.close()


def test_replayed_request_is_rejected(
    captured_request: Captured, datahub_endpoint: EmulatorProcess
) -> None:
    answer = post_raw(
        datahub_endpoint.url + UPLOAD_PATH, captured_request.body, captured_request.headers
    )
    assert (answer["resultStatus"], answer["resultCode"]) == ("F", "REPLAY_REJECTED")


def test_tampered_request_is_rejected(
    captured_request: Captured, datahub_endpoint: EmulatorProcess
) -> None:
    body = json.loads(captured_request.body)
    body["data"] = body["data"][:1]  # drop a row: still well-formed, no longer what was signed
    tampered = json.dumps(body).encode()
    answer = post_raw(datahub_endpoint.url + UPLOAD_PATH, tampered, captured_request.headers)
    assert (answer["resultStatus"], answer["resultCode"]) == ("F", "SIGNATURE_INVALID")


@pytest.mark.parametrize(
    "dropped",
    [("X-Signature",), ("X-Client-Id",), ("X-Client-Id", "X-Timestamp", "X-Nonce", "X-Signature")],
)
def test_unsigned_request_is_rejected(
    captured_request: Captured, datahub_endpoint: EmulatorProcess, dropped: tuple[str, ...]
) -> None:
    headers = {k: v for k, v in captured_request.headers.items() if k not in dropped}
    answer = post_raw(datahub_endpoint.url + UPLOAD_PATH, captured_request.body, headers)
    assert (answer["resultStatus"], answer["resultCode"]) == ("F", "SIGNATURE_INVALID")


class PythonSigner:
    """Signs requests exactly as docs/protocol.md says, with the key from keys.properties."""

    def __init__(self, keys_path: Path) -> None:
        self.keys = read_properties(keys_path)
        key = serialization.load_der_private_key(
            base64.b64decode(self.keys["clientPrivateKey"]), password=None
        )
        assert isinstance(key, rsa.RSAPrivateKey)
        self._key = key

    def headers(self, body: bytes, timestamp_ms: int | None = None) -> dict[str, str]:
        timestamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
        nonce = secrets.token_hex(16)
        digest = hashlib.sha256(body).hexdigest()
        message = f"{self.keys['clientId']}\n{timestamp}\n{nonce}\n{digest}".encode()
        signature = self._key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return {
            "X-Client-Id": self.keys["clientId"],
            "X-Timestamp": timestamp,
            "X-Nonce": nonce,
            "X-Signature": base64.b64encode(signature).decode(),
        }


@pytest.mark.parametrize("offset_s", [-301, 301])
def test_stale_or_future_timestamp_is_rejected(
    captured_request: Captured, keys_file: Path, datahub_endpoint: EmulatorProcess, offset_s: int
) -> None:
    signer = PythonSigner(keys_file)
    headers = signer.headers(captured_request.body, int((time.time() + offset_s) * 1000))
    answer = post_raw(datahub_endpoint.url + UPLOAD_PATH, captured_request.body, headers)
    assert answer["resultCode"] == "REPLAY_REJECTED"
    # The same body freshly signed is accepted: only the timestamp was wrong.
    fresh = post_raw(
        datahub_endpoint.url + UPLOAD_PATH,
        captured_request.body,
        signer.headers(captured_request.body),
    )
    assert fresh["resultCode"] == "SUCCESS"


def test_non_json_body_is_param_illegal(keys_file: Path, datahub_endpoint: EmulatorProcess) -> None:
    body = b"\xff not json"
    answer = post_raw(
        datahub_endpoint.url + UPLOAD_PATH, body, PythonSigner(keys_file).headers(body)
    )
    assert (answer["resultStatus"], answer["resultCode"]) == ("F", "PARAM_ILLEGAL")
    receipts = datahub_endpoint.stats()["by_code"]
    assert receipts == {"PARAM_ILLEGAL": 1}


def test_forged_ciphertext_fails_the_data_check(
    captured_request: Captured, keys_file: Path, datahub_endpoint: EmulatorProcess
) -> None:
    body = json.loads(captured_request.body)
    # A value moved to another column: its AAD no longer matches, so GCM rejects it.
    row = body["data"][1]
    row["userName"], row["id"] = row["id"], row["userName"]
    moved = json.dumps(body).encode()
    answer = post_raw(
        datahub_endpoint.url + UPLOAD_PATH, moved, PythonSigner(keys_file).headers(moved)
    )
    assert answer["resultCode"] == "DATA_CHECK_FAILED"
    assert answer["resultMsg"] == "row 1 column id ciphertext failed authentication"

    # A value encrypted with a key the endpoint does not know.
    stranger = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    aad = f"{body['dataUuid']}\nid".encode()
    row["id"] = base64.b64encode(nonce + stranger.encrypt(nonce, b"x", aad)).decode()
    forged = json.dumps(body).encode()
    answer = post_raw(
        datahub_endpoint.url + UPLOAD_PATH, forged, PythonSigner(keys_file).headers(forged)
    )
    assert answer["resultCode"] == "DATA_CHECK_FAILED"


def test_unknown_client_is_rejected(
    sdk_client_factory: ClientFactory, keys_file: Path, tmp_path: Path, user_profile_uuid: str
) -> None:
    stranger = keys_variant(keys_file, tmp_path, clientId=secrets.token_hex(16))
    result = upload(sdk_client_factory(stranger), user_profile_uuid, [good_row("1")])
    assert (result.status, result.code) == ("F", "CLIENT_UNKNOWN")


def test_other_institution_in_the_request_is_rejected(
    sdk_client_factory: ClientFactory, keys_file: Path, tmp_path: Path, user_profile_uuid: str
) -> None:
    other = keys_variant(keys_file, tmp_path, institutionId="WALLET_99")
    result = upload(sdk_client_factory(other), user_profile_uuid, [good_row("1")])
    assert (result.status, result.code) == ("F", "NO_PERMISSION")


def test_revoked_grant_is_rejected(
    sdk_client: Any, keys_file: Path, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    assert upload(sdk_client, user_profile_uuid, [good_row("1")]).code == "SUCCESS"
    institution_id = read_properties(keys_file)["institutionId"]
    assert datahub_endpoint.revoke(institution_id, user_profile_uuid) == {"revoked": True}
    result = upload(sdk_client, user_profile_uuid, [good_row("2")])
    assert (result.status, result.code) == ("F", "NO_PERMISSION")
    # A dataset nobody registered is refused the same way.
    assert upload(sdk_client, "0" * 32, [good_row("3")]).code == "NO_PERMISSION"


# --- storage: ciphertext only ----------------------------------------------------------


def test_database_holds_no_plaintext(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    token = secrets.token_hex(6)
    rows = [
        {
            "id": f"ID{token}{i:03d}",
            "userName": f"NAME{token}{i:03d}",
            "userAge": f"7{int(token, 16) % 10**12:012d}{i:03d}",
            "screenWidth": f"1234.{int(token, 16) % 10**9:09d}{i:03d}",
        }
        for i in range(100)
    ]
    for batch in (rows[:50], rows[50:]):
        assert upload(sdk_client, user_profile_uuid, batch).code == "SUCCESS"
    # Rejected batches leave receipts; their values must not leak either.
    bad = {**rows[0], "userAge": f"{rows[0]['userAge']}.5"}
    assert upload(sdk_client, user_profile_uuid, [bad]).code == "DATA_CHECK_FAILED"

    needles = [value.encode() for row in rows for value in row.values()] + [token.encode()]
    wal = Path(f"{datahub_endpoint.db_path}-wal")
    assert wal.exists(), "the endpoint runs in WAL mode"
    for path in (datahub_endpoint.db_path, wal):
        raw = path.read_bytes()
        assert not [n for n in needles if n in raw], f"plaintext found in {path.name}"

    report = datahub_endpoint.reconcile(user_profile_uuid, [row["id"] for row in rows])
    assert report == {
        "expected": 100, "stored": 100, "missing": 0, "unexpected": 0, "missing_indexes": []
    }  # fmt: skip

    assert datahub_endpoint.stop() == 0  # clean shutdown checkpoints the WAL
    assert not wal.exists()
    raw = datahub_endpoint.db_path.read_bytes()
    assert not [n for n in needles if n in raw]


def test_every_request_leaves_a_receipt(
    sdk_client: Any, keys_file: Path, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    upload(sdk_client, user_profile_uuid, [good_row("1")])
    upload(sdk_client, user_profile_uuid, [])
    post_raw(datahub_endpoint.url + UPLOAD_PATH, b"{}", {})  # unsigned
    stats = datahub_endpoint.stats()
    assert stats["requests"] == 3
    assert stats["by_status"] == {"S": 1, "F": 2}
    assert stats["by_code"] == {"SUCCESS": 1, "PARAM_ILLEGAL": 1, "SIGNATURE_INVALID": 1}
    assert stats["rows_accepted"] == 1

    datahub_endpoint.reset()
    stats = datahub_endpoint.stats()
    assert (stats["requests"], stats["rows_stored"]) == (0, {})
    # Registrations survive a reset.
    assert upload(sdk_client, user_profile_uuid, [good_row("1")]).code == "SUCCESS"


# --- admin API -------------------------------------------------------------------------


def test_faults_merge_and_validate(datahub_endpoint: EmulatorProcess) -> None:
    config = datahub_endpoint.faults(latency_ms={"median": 150, "jitter": 50}, u_rate=0.1)
    assert config["latency_ms"] == {"median": 150, "jitter": 50}
    assert (config["u_rate"], config["f_rate"], config["cap"]) == (0.1, 0.0, 20)
    assert datahub_endpoint.faults(cap=7)["u_rate"] == 0.1  # merged, not replaced
    for bad in ({"u_rate": 2}, {"cap": 0}, {"bogus": 1}, {"outages": [{"start": 2, "end": 1}]}):
        with pytest.raises(urllib.error.HTTPError) as error:
            datahub_endpoint.faults(**bad)
        assert error.value.code == 400
    assert datahub_endpoint.faults()["cap"] == 7


def test_endpoint_flags_set_the_initial_faults(tmp_path: Path) -> None:
    flags = ["--latency-median-ms", "5", "--latency-jitter-ms", "1", "--u-rate", "0.25"]
    with EmulatorProcess(db_path=tmp_path / "x.db", cap=3, extra_args=flags) as endpoint:
        config = endpoint.faults()
    assert config["cap"] == 3 and config["u_rate"] == 0.25
    assert config["latency_ms"] == {"median": 5.0, "jitter": 1.0}


# --- toolkit ---------------------------------------------------------------------------


def test_toolkit_writes_a_private_file_and_reuses_it(
    datahub_endpoint: EmulatorProcess, tmp_path: Path, user_profile_contract: Path
) -> None:
    out = tmp_path / "k" / "keys.properties"
    schema_file = tmp_path / "user_profile.schema.json"
    schema_file.write_text(json.dumps(load_contract(user_profile_contract).partner_schema()))
    command = [
        sys.executable, "-m", "datahub_emulator.toolkit", "init",
        "--endpoint", datahub_endpoint.url, "--out", str(out),
        "--institution-id", "WALLET_07",
        "--ant-institution-id", "ANT_07",
        "--schema", str(schema_file),
    ]  # fmt: skip
    first = subprocess.run(command, check=True, capture_output=True, text=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    keys = read_properties(out)
    assert set(keys) >= {
        "institutionId", "antInstitutionId", "clientId", "clientPrivateKey",
        "dataKeyId", "dataKey", "endpoint",
    }  # fmt: skip
    assert len(base64.b64decode(keys["dataKey"])) == 32
    for secret in (keys["clientPrivateKey"], keys["dataKey"]):
        assert secret not in first.stdout + first.stderr
    assert keys["clientId"] in first.stdout

    second = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "reused" in second.stdout
    assert read_properties(out) == keys

    rotated = init_keys(
        endpoint=datahub_endpoint.url,
        out=out,
        institution_id="WALLET_07",
        ant_institution_id="ANT_07",
        schemas=[contract_schema(user_profile_contract)],
        rotate=True,
    )
    assert rotated.created and rotated.client_id != keys["clientId"]
    assert read_properties(out)["dataKey"] != keys["dataKey"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temp files left


def _non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_admin_api_is_served_to_loopback_only(tmp_path: Path) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback address to call from")
    with EmulatorProcess(db_path=tmp_path / "x.db", host="0.0.0.0") as endpoint:
        port = endpoint.port
        assert endpoint.stats()["requests"] == 0  # via 0.0.0.0, i.e. loopback
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://{address}:{port}/admin/stats", timeout=5)
        assert error.value.code == 403
        # The upload route itself answers anyone (with the usual checks).
        answer = post_raw(f"http://{address}:{port}{UPLOAD_PATH}", b"{}", {})
        assert answer["resultCode"] == "SIGNATURE_INVALID"
