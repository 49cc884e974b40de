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

from datahub_emulator import app, checks
from datahub_emulator.client import ADMIN_TOKEN_ENV, EmulatorProcess
from datahub_emulator.faults import SlidingWindowThrottle
from datahub_emulator.service import max_in_window, over_cap_starts
from datahub_emulator.toolkit import init_keys, read_properties, register, write_properties

from datahub_assets.contract import load_contract
from datahub_dev.stack import contract_schema, register_keys

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


def wait_for(
    condition: Callable[[], bool], what: str, timeout_s: float = 30.0, pause_s: float = 0.02
) -> None:
    """Poll `condition` until it holds; fail after `timeout_s` (a deadline, not a measure)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(pause_s)


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


def test_receipts_per_batch_count_each_stored_request_of_a_batch(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    first = [good_row(f"a-{i}") for i in range(3)]
    second = [good_row(f"b-{i}") for i in range(3)]
    upload(sdk_client, user_profile_uuid, first)
    upload(sdk_client, user_profile_uuid, second)
    resent = upload(sdk_client, user_profile_uuid, first)

    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    never_sent = ["c-0"]
    per_batch = datahub_endpoint.receipts(user_profile_uuid, [ids(first), ids(second), never_sent, ids(first)[:2]])
    assert [len(r) for r in per_batch] == [2, 1, 0, 0]  # a batch is its ids in order, not a subset
    assert per_batch[0][1]["trace_id"] == resent.trace_id
    assert per_batch[0][0]["arrived_at"] <= per_batch[0][1]["arrived_at"]
    assert {r["status"] for batch in per_batch for r in batch} == {"S"}


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


def test_outage_answers_unknown_while_it_covers_now(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    now = time.time()
    # A scripted outcome does not punch through an outage.
    datahub_endpoint.faults(
        outages=[{"start": now - 60, "end": now + 3600}],
        scripted=[{"request": 2, "outcome": "lost_ack"}],
    )
    during = [upload(sdk_client, user_profile_uuid, [good_row("1")]) for _ in range(3)]
    assert {(r.status, r.code, r.msg) for r in during} == {
        ("U", "UNKNOWN_EXCEPTION", "service unavailable (outage)")
    }
    assert datahub_endpoint.stats()["rows_stored"] == {}
    datahub_endpoint.faults(outages=[{"start": now - 60, "end": now - 30}])  # already over
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
    # Bound but never listening: connections are refused, and no other process can take
    # the port while the test runs.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{held.getsockname()[1]}"
        dead = keys_variant(keys_file, tmp_path, endpoint=dead_url)
        result = upload(sdk_client_factory(dead), user_profile_uuid, [good_row("1")])
    assert (result.status, result.code) == ("U", "UNKNOWN_EXCEPTION")
    assert result.trace_id.startswith("local-")


def test_latency_holds_every_answer_until_it_passes(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    # The configured latency applies to every request: with ten minutes, an answer that
    # came out before the reset below would have skipped it.
    datahub_endpoint.faults(latency_ms={"median": 600_000, "jitter": 0})
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(upload, sdk_client, user_profile_uuid, [good_row("held")])
        wait_for(lambda: datahub_endpoint.stats()["requests"] == 1, "the request to arrive")
        assert datahub_endpoint.stats()["by_code"] == {"SUCCESS": 1}  # decided, not yet answered
        with pytest.raises(TimeoutError):
            held.result(timeout=0.5)
        datahub_endpoint.faults(latency_ms={"median": 0, "jitter": 0})
        datahub_endpoint.reset()  # releases the held answer
        assert held.result(timeout=60).code == "SUCCESS"


def test_a_delayed_answer_does_not_hold_up_other_requests(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    # Request 1 is held for 10 minutes, or until the reset below releases it.
    datahub_endpoint.faults(scripted=[{"request": 1, "latency_ms": 600_000}])
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(upload, sdk_client, user_profile_uuid, [good_row("held")])
        wait_for(lambda: datahub_endpoint.stats()["requests"] == 1, "request 1 to arrive")
        assert upload(sdk_client, user_profile_uuid, [good_row("other")]).code == "SUCCESS"
        assert not held.done(), "request 2 was answered while request 1 was still held"
        datahub_endpoint.reset()
        assert held.result(timeout=60).code == "SUCCESS"


def test_burst_over_the_cap_never_admits_more_than_the_cap(
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
        # connection now, so that the burst is only the requests themselves.
        datahub_endpoint.faults(cap=1000)
        list(pool.map(fire, range(pool_size)))
        datahub_endpoint.faults(cap=20)
        datahub_endpoint.reset()  # the warm-up must not count toward the burst's window
        results = list(pool.map(fire, range(pool_size)))

    # How many are throttled depends on how fast the burst arrives; what never varies is
    # that no sliding second admits more than the cap and every refusal is a U/THROTTLED.
    codes = [r.code for r in results]
    assert set(codes) <= {"SUCCESS", "THROTTLED"}
    assert all(r.status == "U" for r in results if r.code == "THROTTLED")
    stats = datahub_endpoint.stats()
    assert stats["max_admitted_per_sliding_second"] <= 20
    assert stats["by_code"].get("THROTTLED", 0) == codes.count("THROTTLED")
    second_counts = stats["per_second"].values()
    assert sum(c["arrived"] for c in second_counts) == pool_size
    assert sum(c["admitted"] for c in second_counts) == codes.count("SUCCESS")


def test_sliding_window_does_not_count_refused_requests() -> None:
    throttle = SlidingWindowThrottle()
    assert [throttle.admit(t, 2) for t in (0.0, 0.1, 0.2, 0.5, 0.99)] == [
        True, True, False, False, False
    ]  # fmt: skip
    # 0.0 has left the half-open window [0.0, 1.0); the refusals never entered it.
    assert throttle.admit(1.0, 2)
    assert not throttle.admit(1.05, 2)  # 0.1 and 1.0 are within the window
    assert throttle.admit(1.1, 2)


def test_a_throttled_client_that_keeps_retrying_gets_through(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    datahub_endpoint.faults(cap=1)
    results: list[Result] = []

    def send_until(code: str) -> bool:
        results.append(upload(sdk_client, user_profile_uuid, [good_row(str(len(results)))]))
        return results[-1].code == code

    wait_for(lambda: send_until("THROTTLED"), "a request over the cap", pause_s=0)
    # Had the refused retries counted, a client retrying this often would stay throttled.
    wait_for(lambda: send_until("SUCCESS"), "an admitted retry", pause_s=0.05)
    codes = [r.code for r in results]
    assert set(codes) == {"SUCCESS", "THROTTLED"}
    stats = datahub_endpoint.stats()
    assert stats["by_code"] == {code: codes.count(code) for code in ("SUCCESS", "THROTTLED")}
    assert sum(c["admitted"] for c in stats["per_second"].values()) == codes.count("SUCCESS")
    assert stats["max_admitted_per_sliding_second"] == 1
    assert stats["max_arrived_per_sliding_second"] > 1 and stats["over_cap_bursts_s"][0] >= 0.0


def test_over_cap_starts_gives_where_each_burst_over_the_cap_began() -> None:
    # Cap 2: 0.0-0.4 holds 3 (a burst from 0.0, which 0.9 still belongs to); 3.0-3.2 another.
    assert over_cap_starts([0.0, 0.2, 0.4, 0.9, 3.0, 3.1, 3.2], 2) == [0.0, 3.0]
    assert over_cap_starts([0.0, 0.5, 1.0, 1.5, 2.0], 2) == []


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
    scripted = [{"request": 4, "outcome": "F/PARAM_ILLEGAL"}, {"request": 2, "latency_ms": 5}]
    config = datahub_endpoint.faults(seed=11, scripted=scripted)
    assert (config["seed"], config["cap"]) == (11, 7)
    assert config["scripted"] == sorted(scripted, key=lambda entry: entry["request"])
    bad_patches = [
        {"u_rate": 2},
        {"cap": 0},
        {"bogus": 1},
        {"outages": [{"start": 2, "end": 1}]},
        {"seed": "7"},
        {"scripted": [{"request": 0, "outcome": "U/UNKNOWN_EXCEPTION"}]},
        {"scripted": [{"request": 1, "outcome": "F/SUCCESS"}]},
        {"scripted": [{"request": 1}]},
        {"scripted": [{"request": 1, "outcome": "lost_ack"}, {"request": 1, "latency_ms": 1}]},
    ]
    for bad in bad_patches:
        with pytest.raises(urllib.error.HTTPError) as error:
            datahub_endpoint.faults(**bad)
        assert error.value.code == 400
    assert datahub_endpoint.faults()["cap"] == 7
    assert datahub_endpoint.faults()["seed"] == 11


def test_endpoint_flags_set_the_initial_faults(tmp_path: Path) -> None:
    flags = ["--latency-median-ms", "5", "--latency-jitter-ms", "1", "--u-rate", "0.25"]
    flags += ["--seed", "42"]
    with EmulatorProcess(db_path=tmp_path / "x.db", cap=3, extra_args=flags) as endpoint:
        config = endpoint.faults()
    assert config["cap"] == 3 and config["u_rate"] == 0.25 and config["seed"] == 42
    assert config["latency_ms"] == {"median": 5.0, "jitter": 1.0}


# --- toolkit ---------------------------------------------------------------------------


def test_toolkit_writes_a_private_file_and_reuses_it(
    datahub_endpoint: EmulatorProcess, tmp_path: Path, user_profile_contract: Path
) -> None:
    schema_file = tmp_path / "user_profile.schema.json"
    schema_file.write_text(json.dumps(load_contract(user_profile_contract).partner_schema()))

    def toolkit_init(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable, "-m", "datahub_emulator.toolkit", "init",
            "--endpoint", datahub_endpoint.url, "--out", str(out),
            "--institution-id", "WALLET_07",
            "--ant-institution-id", "ANT_07",
            "--schema", str(schema_file), *extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV}
        return subprocess.run(command, capture_output=True, text=True, env=env)

    # Registering needs the endpoint's admin token, which it wrote next to its database.
    refused = toolkit_init(tmp_path / "refused" / "keys.properties")
    assert refused.returncode != 0 and "401" in refused.stderr
    token_file = ("--admin-token-file", str(datahub_endpoint.admin_token_file))

    out = tmp_path / "k" / "keys.properties"
    first = toolkit_init(out, *token_file)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
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

    second = toolkit_init(out, *token_file)
    assert second.returncode == 0, second.stderr
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


def test_admin_api_from_a_wildcard_address_is_reached_through_loopback(tmp_path: Path) -> None:
    with EmulatorProcess(db_path=tmp_path / "x.db", host="0.0.0.0") as endpoint:
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}"
        assert endpoint.stats()["requests"] == 0


# --- deterministic faults ----------------------------------------------------------------


def test_a_seed_makes_random_faults_reproducible(
    sdk_client_factory: ClientFactory,
    sdk_client: Any,
    datahub_endpoint: EmulatorProcess,
    tmp_path: Path,
    user_profile_uuid: str,
    user_profile_contract: Path,
) -> None:
    def run(client: Any) -> list[str]:
        rows = ([good_row(f"seeded-{i}")] for i in range(16))
        return [upload(client, user_profile_uuid, batch).code for batch in rows]

    # The cap lifted: four runs of 16 must not meet the (time-based) throttle.
    datahub_endpoint.faults(seed=7, u_rate=0.5, cap=1000)
    first = run(sdk_client)
    assert set(first) == {"SUCCESS", "UNKNOWN_EXCEPTION"}  # a mix, so the order means something
    datahub_endpoint.reset()
    assert run(sdk_client) == first
    datahub_endpoint.faults(seed=7)  # posting the faults restarts the sequence too
    assert run(sdk_client) == first
    datahub_endpoint.faults(seed=8)
    assert run(sdk_client) != first

    # Another endpoint process given the same flags draws the same sequence.
    flags = ["--seed", "7", "--u-rate", "0.5"]
    with EmulatorProcess(db_path=tmp_path / "other.db", cap=1000, extra_args=flags) as other:
        other_keys = tmp_path / "other" / "keys.properties"
        register_keys(other.url, other_keys, [user_profile_contract])
        assert run(sdk_client_factory(other_keys)) == first


def test_scripted_outcomes_pick_requests_by_number(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    datahub_endpoint.faults(
        scripted=[
            {"request": 2, "outcome": "U/UNKNOWN_EXCEPTION"},
            {"request": 3, "outcome": "lost_ack"},
            {"request": 4, "outcome": "U/THROTTLED"},
            {"request": 5, "outcome": "F/DATA_CHECK_FAILED"},
            {"request": 6, "outcome": "F/NO_PERMISSION"},
        ]
    )
    ids = [f"scripted-{n}" for n in range(1, 8)]
    results = [upload(sdk_client, user_profile_uuid, [good_row(row_id)]) for row_id in ids]
    assert [(r.status, r.code) for r in results] == [
        ("S", "SUCCESS"),
        ("U", "UNKNOWN_EXCEPTION"),
        ("U", "UNKNOWN_EXCEPTION"),  # lost ack: stored, answered U
        ("U", "THROTTLED"),
        ("F", "DATA_CHECK_FAILED"),
        ("F", "NO_PERMISSION"),
        ("S", "SUCCESS"),
    ]
    # Requests 1, 3 (the lost ack) and 7 stored their row; the others did not.
    assert datahub_endpoint.reconcile(user_profile_uuid, ids)["missing_indexes"] == [1, 3, 4, 5]
    # The scripted throttle, like the real one, does not admit the request.
    per_second = datahub_endpoint.stats()["per_second"].values()
    assert sum(c["admitted"] for c in per_second) == len(ids) - 1

    # The count restarts on a reset and on every change of the faults.
    datahub_endpoint.reset()
    two = [upload(sdk_client, user_profile_uuid, [good_row("again")]).code for _ in range(2)]
    assert two == ["SUCCESS", "UNKNOWN_EXCEPTION"]
    datahub_endpoint.faults(cap=20)
    two = [upload(sdk_client, user_profile_uuid, [good_row("again")]).code for _ in range(2)]
    assert two == ["SUCCESS", "UNKNOWN_EXCEPTION"]


# --- the endpoint process: its own port, its own identity -----------------------------------


def test_endpoint_reports_the_port_it_bound_and_answers_with_its_pid(tmp_path: Path) -> None:
    endpoint = EmulatorProcess(db_path=tmp_path / "x.db", log_path=tmp_path / "x.log")
    with endpoint:
        port = endpoint.port
        assert port != 0 and endpoint.url == f"http://127.0.0.1:{port}"
        assert endpoint.health() == {"ok": True, "pid": endpoint.pid}
        assert not endpoint.port_file.exists()
        first_pid = endpoint.pid
    # Started again, it asks for that port by number (the clients' keys name it).
    with endpoint:
        assert endpoint.port == port
        assert endpoint.health() == {"ok": True, "pid": endpoint.pid}
        assert endpoint.pid != first_pid


def test_endpoint_start_fails_rather_than_trust_another_server_on_its_port(
    tmp_path: Path,
) -> None:
    class Impostor(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            payload = json.dumps({"ok": True, "pid": os.getpid()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = EmulatorProcess(db_path=tmp_path / "x.db", port=server.server_address[1])
        with pytest.raises(RuntimeError, match="exited"):
            endpoint.start()  # the child cannot bind the port; the impostor is not believed
    finally:
        server.shutdown()
        server.server_close()


# --- admin API hardening -------------------------------------------------------------------


def admin_request(
    endpoint: EmulatorProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Status and JSON answer of one raw admin call (no token unless given in headers)."""
    request = urllib.request.Request(
        endpoint.url + path, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def bearer(endpoint: EmulatorProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.admin_token}", "Content-Type": "application/json"}


def test_admin_api_requires_the_token(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    assert upload(sdk_client, user_profile_uuid, [good_row("1")]).code == "SUCCESS"
    json_type = {"Content-Type": "application/json"}
    for authorization in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer "}):
        headers = {**json_type, **authorization}
        assert admin_request(datahub_endpoint, "GET", "/admin/stats", None, headers)[0] == 401
        assert admin_request(datahub_endpoint, "POST", "/admin/reset", b"{}", headers)[0] == 401
    assert datahub_endpoint.stats()["requests"] == 1  # the refused resets reset nothing
    headers = bearer(datahub_endpoint)
    status, answer = admin_request(datahub_endpoint, "GET", "/admin/stats", None, headers)
    assert (status, answer["requests"]) == (200, 1)
    # The health check needs no token, and tells nothing secret.
    assert admin_request(datahub_endpoint, "GET", "/healthz") == (
        200, {"ok": True, "pid": datahub_endpoint.pid}
    )  # fmt: skip


def test_admin_api_refuses_a_host_that_does_not_name_the_endpoint(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    assert upload(sdk_client, user_profile_uuid, [good_row("1")]).code == "SUCCESS"
    port = datahub_endpoint.port
    # What a page on a rebound name (DNS rebinding) or a mistyped address would send.
    hosts = ("attacker.example", f"attacker.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}")
    for host in hosts:
        headers = {**bearer(datahub_endpoint), "Host": host}
        assert admin_request(datahub_endpoint, "POST", "/admin/reset", b"{}", headers)[0] == 421
    assert datahub_endpoint.stats()["requests"] == 1
    for host in (f"localhost:{port}", f"LOCALHOST:{port}", f"127.0.0.1:{port}"):
        headers = {**bearer(datahub_endpoint), "Host": host}
        assert admin_request(datahub_endpoint, "GET", "/admin/stats", None, headers)[0] == 200


def test_admin_posts_must_be_json(
    sdk_client: Any, datahub_endpoint: EmulatorProcess, user_profile_uuid: str
) -> None:
    assert upload(sdk_client, user_profile_uuid, [good_row("1")]).code == "SUCCESS"
    # The types a cross-origin form or fetch may send without asking first.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        headers = {**bearer(datahub_endpoint), "Content-Type": content_type}
        assert admin_request(datahub_endpoint, "POST", "/admin/reset", b"{}", headers)[0] == 415
    assert datahub_endpoint.stats()["requests"] == 1
    headers = {**bearer(datahub_endpoint), "Content-Type": "application/json; charset=utf-8"}
    assert admin_request(datahub_endpoint, "POST", "/admin/reset", b"{}", headers)[0] == 200
    assert datahub_endpoint.stats()["requests"] == 0


def raw_status(port: int, request: bytes) -> int:
    """Send raw bytes and return the HTTP status of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed before a status line: {answer!r}"
            answer += chunk
    return int(answer.split()[1])


def test_oversized_bodies_are_refused(datahub_endpoint: EmulatorProcess) -> None:
    port, token = datahub_endpoint.port, datahub_endpoint.admin_token
    head = (
        f"POST {{path}} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n{length}\r\n"
    )
    limits = {
        UPLOAD_PATH: app.MAX_UPLOAD_BYTES,
        "/admin/reconcile": app.MAX_RECONCILE_BYTES,
        "/admin/faults": app.MAX_OTHER_BYTES,
    }
    # A declared length over the limit is refused from the headers; no body is sent.
    for path, limit in limits.items():
        request = head.format(path=path, length=f"Content-Length: {limit + 1}\r\n")
        assert raw_status(port, request.encode()) == 413, path
    # A chunked body declares no length: it is counted as it arrives, and refused once
    # over the limit, before its end (the final chunk is never sent).
    chunk = b" " * (app.MAX_OTHER_BYTES + 1)
    request = head.format(path="/admin/faults", length="Transfer-Encoding: chunked\r\n")
    assert raw_status(port, request.encode() + f"{len(chunk):x}\r\n".encode() + chunk) == 413
    # A body of exactly the limit is read and handled.
    body = b" " * (app.MAX_OTHER_BYTES - 2) + b"{}"
    headers = bearer(datahub_endpoint)
    assert admin_request(datahub_endpoint, "POST", "/admin/faults", body, headers)[0] == 200
    assert datahub_endpoint.stats()["requests"] == 0  # the refused upload left no receipt


def _fresh_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return base64.b64encode(der).decode()


def test_a_registration_cannot_replace_another_clients_keys(
    sdk_client_factory: ClientFactory,
    sdk_client: Any,
    keys_file: Path,
    datahub_endpoint: EmulatorProcess,
    tmp_path: Path,
    user_profile_uuid: str,
    user_profile_contract: Path,
) -> None:
    schemas = [contract_schema(user_profile_contract)]
    owner = read_properties(keys_file)
    impostor_key = _fresh_private_key()
    claims = {
        "same clientId, another publicKey": {**owner, "clientPrivateKey": impostor_key},
        "another client, same dataKeyId, another dataKey": {
            **owner,
            "clientId": secrets.token_hex(16),
            "clientPrivateKey": impostor_key,
            "dataKey": base64.b64encode(os.urandom(32)).decode(),
        },
    }
    for name, keys in claims.items():
        with pytest.raises(urllib.error.HTTPError) as error:
            register(keys, schemas)
        assert error.value.code == 409, name

    # The owner registering again with the same keys is idempotent.
    register(owner, schemas)
    register(owner, schemas)
    assert upload(sdk_client, user_profile_uuid, [good_row("1")]).code == "SUCCESS"
    # The impostor's key still signs for nobody.
    impostor = keys_variant(keys_file, tmp_path, clientPrivateKey=impostor_key)
    result = upload(sdk_client_factory(impostor), user_profile_uuid, [good_row("2")])
    assert (result.status, result.code) == ("F", "SIGNATURE_INVALID")
