"""Authentication and authorization failures, as the platform's sender meets them.

tests/test_emulator.py checks that the endpoint rejects each of these requests; here a
real upload run sends a day's batches through the stand-in SDK with a bad key, another
client's key, a wrong data key, a body tampered or replayed on the way (a proxy in
between), or after the grant was revoked. Each batch must be rejected with F/<code>,
recorded by the endpoint (a receipt) and the ledger, sent once and never retried, and
the run must fail with a summary that names the code.
"""

from __future__ import annotations

import base64
import http.server
import json
import secrets
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import DATAHUB_ANT_INSTITUTION_ID, DATAHUB_INSTITUTION_ID, USER_PROFILE_CONTRACT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support import DAY, Day, endpoint_receipts, write_contract

from datahub_dev.stack import contract_schema, register_keys
from datahub_dev.synthetic import generate, write_table
from datahub_assets.upload.outcome import KEY_CODES
from datahub_emulator.client import EmulatorProcess
from datahub_emulator.toolkit import init_keys, read_properties, write_properties

BATCHES = 3


class Proxy:
    """Forwards the SDK's requests to the endpoint, after `alter(index, body, headers)`."""

    def __init__(self, target: str, alter: Callable[[int, bytes, dict], tuple[bytes, dict]]):
        proxy = self
        self.seen = 0
        lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-")}
                with lock:
                    index, proxy.seen = proxy.seen, proxy.seen + 1
                    body, headers = alter(index, body, headers)
                request = urllib.request.Request(
                    target + self.path, data=body, method="POST",
                    headers={"Content-Type": "application/json", **headers},
                )  # fmt: skip
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = response.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class AuthStack:
    root: Path
    endpoint: EmulatorProcess
    keys_file: Path  # client A, registered with the grant on the dataset
    contracts_dir: Path
    sdk_jar: Path


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory: pytest.TempPathFactory, sdk_jar: Path) -> Iterator[AuthStack]:
    root = tmp_path_factory.mktemp("auth")
    with EmulatorProcess(db_path=root / "datahub.db", log_path=root / "datahub.log") as endpoint:
        keys_file = root / "keys" / "keys.properties"
        register_a(endpoint, keys_file)
        contracts = write_contract(root / "contracts", batch_ranges=1)
        with dg.instance_for_test() as instance:
            day = Day(root, sdk_jar, keys_file, f"sqlite:///{root / 'prepare.db'}", instance, contracts)
            write_table(generate(BATCHES * 100, DAY, seed=3), day.source_url)
            day.prepare()
        yield AuthStack(root, endpoint, keys_file, contracts, sdk_jar)


def register_a(endpoint: EmulatorProcess, keys_file: Path) -> None:
    # Idempotent: re-registering restores a revoked grant.
    register_keys(endpoint.url, keys_file, [USER_PROFILE_CONTRACT])


def variant(keys_file: Path, tmp_path: Path, **changes: str) -> Path:
    path = tmp_path / f"keys-{secrets.token_hex(4)}.properties"
    write_properties(path, {**read_properties(keys_file), **changes})
    return path


def fresh_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return base64.b64encode(der).decode()


def client_b(stack: AuthStack, tmp_path: Path, institution: str) -> Path:
    """Another registered client, of `institution`, granted only another dataset."""
    other = yaml.safe_load(USER_PROFILE_CONTRACT.read_text())
    other["data_uuid"] = secrets.token_hex(16)
    contract = tmp_path / "other.yaml"
    contract.write_text(yaml.safe_dump(other))
    out = tmp_path / "b" / "keys.properties"
    init_keys(endpoint=stack.endpoint.url, out=out, institution_id=institution,
              ant_institution_id=DATAHUB_ANT_INSTITUTION_ID, schemas=[contract_schema(contract)])  # fmt: skip
    return out


def drop_last_row(index: int, body: bytes, headers: dict) -> tuple[bytes, dict]:
    envelope = json.loads(body)
    envelope["data"] = envelope["data"][:-1]  # still well-formed, no longer what was signed
    return json.dumps(envelope).encode(), headers


def replay_first(captured: list) -> Callable[[int, bytes, dict], tuple[bytes, dict]]:
    def alter(index: int, body: bytes, headers: dict) -> tuple[bytes, dict]:
        if not captured:
            captured.append((body, headers))
            return body, headers
        return captured[0]  # an eavesdropper's copy of the first request, sent again

    return alter


# case -> (the code each refused batch gets, batches the endpoint accepts)
CASES = {
    "wrong_private_key": ("SIGNATURE_INVALID", 0),
    "other_clients_private_key": ("SIGNATURE_INVALID", 0),
    "other_clients_keys": ("NO_PERMISSION", 0),
    "unknown_client_id": ("CLIENT_UNKNOWN", 0),
    "wrong_data_key": ("DATA_CHECK_FAILED", 0),
    "tampered_body": ("SIGNATURE_INVALID", 0),
    "replayed_request": ("REPLAY_REJECTED", 1),
    "revoked_grant": ("NO_PERMISSION", 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_rejected_request_is_recorded_and_never_retried(case: str, auth_stack: AuthStack, tmp_path: Path) -> None:
    code, accepted = CASES[case]
    stack, endpoint, keys_a = auth_stack, auth_stack.endpoint, auth_stack.keys_file
    endpoint.reset()
    register_a(endpoint, keys_a)
    proxy = None
    keys = keys_a
    if case == "wrong_private_key":
        keys = variant(keys_a, tmp_path, clientPrivateKey=fresh_private_key())
    elif case == "other_clients_private_key":
        b = read_properties(client_b(stack, tmp_path, DATAHUB_INSTITUTION_ID))
        keys = variant(keys_a, tmp_path, clientPrivateKey=b["clientPrivateKey"])
    elif case == "other_clients_keys":
        keys = variant(client_b(stack, tmp_path, "WALLET_02"), tmp_path)
    elif case == "unknown_client_id":
        keys = variant(keys_a, tmp_path, clientId=secrets.token_hex(16))
    elif case == "wrong_data_key":
        keys = variant(keys_a, tmp_path, dataKey=base64.b64encode(secrets.token_bytes(32)).decode())
    elif case == "tampered_body":
        proxy = Proxy(endpoint.url, drop_last_row)
    elif case == "replayed_request":
        proxy = Proxy(endpoint.url, replay_first([]))
    elif case == "revoked_grant":
        endpoint.revoke(DATAHUB_INSTITUTION_ID, read_contract_uuid(stack))
    if proxy is not None:
        keys = variant(keys_a, tmp_path, endpoint=proxy.url)

    try:
        with dg.instance_for_test() as instance:
            day = Day(stack.root, stack.sdk_jar, keys, f"sqlite:///{tmp_path / 'delivery.db'}", instance, stack.contracts_dir)
            # One thread: the range stops at a key refusal before the next batch is sent.
            result = day.upload_range("0", {"max_attempts": 8, "threads": 1}, raise_on_error=False)
    finally:
        if proxy is not None:
            proxy.close()

    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    # A refusal of the client's keys would meet every batch: the range stops at the first.
    refused = 1 if code in KEY_CODES else BATCHES - accepted
    assert f"{refused} of {BATCHES} batches of range 0 ({DAY}) did not succeed: {code} x{refused}" in message
    if code in KEY_CODES:
        assert f"the other {BATCHES - 1} batches were not sent" in message and "DATAHUB_KEYS_PATH" in message
    ledger = day.ledger()
    assert Counter((e.status, e.result_code, e.attempts) for e in ledger.values()) == Counter(
        {("F", code, 1): refused, **({("S", "SUCCESS", 1): accepted} if accepted else {})}
    )  # every batch sent once: F is final, never retried
    receipts = endpoint_receipts(endpoint.db_path)
    assert Counter((r["status"], r["code"]) for r in receipts) == Counter(
        {("F", code): refused, **({("S", "SUCCESS"): accepted} if accepted else {})}
    )  # and each refusal is on the partner's record
    assert endpoint.stats()["rows_stored"].get(day.contract.data_uuid, 0) == accepted * 100


def read_contract_uuid(stack: AuthStack) -> str:
    return yaml.safe_load((stack.contracts_dir / "user_profile.yaml").read_text())["data_uuid"]

