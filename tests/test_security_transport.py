"""The transport: the adapter refuses plain http anywhere but loopback, whichever SDK is
on the classpath (the check reads the `endpoint` of keys.properties at resource setup),
and the SDK sends over HTTPS only to a certificate it verifies (a real TLS endpoint with
a test CA, a real JVM)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import USER_PROFILE_CONTRACT
from support import DAY, Day, write_contract

from datahub_dev.stack import register_keys
from datahub_dev.synthetic import generate, write_table
from datahub_dev.tls import make_test_tls
from datahub_emulator.client import EmulatorProcess

from datahub_assets.upload.sdk import DataHubSdkResource, SdkConfigError, check_transport
from datahub_emulator.toolkit import read_properties, write_properties


def _keys_with(keys_file, tmp_path, endpoint: str):  # noqa: ANN001, ANN202
    folder = tmp_path / "k"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "keys.properties"
    write_properties(path, {**read_properties(keys_file), "endpoint": endpoint})
    return path


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://192.0.2.10:8765",
        "http://datahub.example.com",
        "http://user:pa55word@10.0.0.1:80",
        "ftp://127.0.0.1:21",
        "http://127.0.0.1.example.com:8765",
    ],
)
def test_a_non_loopback_or_non_https_endpoint_is_refused_at_setup(endpoint, keys_file, sdk_jar, tmp_path, datahub_endpoint):
    sdk = DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(_keys_with(keys_file, tmp_path, endpoint)))
    with dg.build_init_resource_context() as context, pytest.raises(SdkConfigError) as caught:
        sdk.setup_for_execution(context)
    message = str(caught.value)
    assert "not https" in message and "DATAHUB_KEYS_PATH" in message and "loopback" in message
    assert "pa55word" not in message
    assert sdk._keys is None  # nothing left open
    assert datahub_endpoint.stats()["requests"] == 0


@pytest.mark.parametrize(
    "endpoint",
    ["https://datahub.example.com", "https://192.0.2.10:8443/", "http://127.0.0.1:8765", "http://127.8.9.10:1",
     "http://[::1]:8765", "http://localhost:8765"],
)
def test_https_anywhere_and_http_on_loopback_are_accepted(endpoint):
    check_transport(endpoint)


@pytest.mark.parametrize("endpoint", ["https://", "http:///x", "127.0.0.1:8765"])
def test_an_endpoint_without_a_host_is_refused(endpoint):
    with pytest.raises(SdkConfigError, match="names no host"):
        check_transport(endpoint)


def test_the_same_rule_holds_for_another_sdk_s_keys_file(keys_file, sdk_jar, tmp_path):
    """required_keys set for a different SDK: the endpoint, when the file names one, is
    still checked."""
    path = _keys_with(keys_file, tmp_path, "http://203.0.113.5:8080")
    sdk = DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(path), required_keys=["clientId"])
    with dg.build_init_resource_context() as context, pytest.raises(SdkConfigError, match="not https"):
        sdk.setup_for_execution(context)


WORKER = Path(__file__).with_name("worker.py")


@pytest.fixture
def https_day(tmp_path: Path, sdk_jar: Path) -> Iterator[tuple[Day, EmulatorProcess, Path]]:
    """A prepared day of 5 batches, and the stand-in endpoint serving HTTPS with a
    certificate from a test CA that only the returned trust store holds."""
    tls, trust_store = make_test_tls(tmp_path / "tls")
    with EmulatorProcess(db_path=tmp_path / "datahub.db", tls=tls) as endpoint, dg.instance_for_test() as instance:
        assert endpoint.url.startswith("https://")
        keys = tmp_path / "keys" / "keys.properties"
        register_keys(endpoint.url, keys, [USER_PROFILE_CONTRACT])
        contracts = write_contract(tmp_path / "contracts", batch_ranges=1)
        day = Day(tmp_path, sdk_jar, keys, f"sqlite:///{tmp_path / 'delivery.db'}", instance, contracts)
        write_table(generate(500, DAY), day.source_url)
        day.prepare()
        yield day, endpoint, trust_store


def upload_in_a_new_process(day: Day, **env: str) -> subprocess.CompletedProcess[str]:
    """Range 0 uploaded by tests/worker.py: a new process, so its JVM starts with these settings."""
    environment = {**os.environ, **day.env(), **env}
    environment.pop("DAGSTER_HOME", None)
    command = [sys.executable, str(WORKER), str(day.contracts_dir), DAY, "--ranges", "0", "--config", '{"max_attempts": 1}']
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)


def test_the_sdk_sends_over_https_only_to_a_certificate_it_trusts(https_day):
    day, endpoint, trust_store = https_day

    # The JVM's own CAs do not know the test CA: the step's TLS check refuses before the
    # first batch, naming the setting; no request, no ledger row.
    refused = upload_in_a_new_process(day, DATAHUB_SDK_TRUSTSTORE="")
    assert refused.returncode == 1
    assert "failed the TLS check: SSLHandshakeException" in refused.stderr and "DATAHUB_SDK_TRUSTSTORE" in refused.stderr
    assert endpoint.stats()["requests"] == 0 and day.ledger() == {}

    # With the trust store holding the CA: every batch delivered over TLS.
    assert upload_in_a_new_process(day, DATAHUB_SDK_TRUSTSTORE=str(trust_store)).returncode == 0
    assert {e.status for e in day.ledger().values()} == {"S"}
    ids = pl.read_parquet(day.lake.snapshot_path(day.contract.dataset, DAY))["id"].to_list()
    reconciliation = endpoint.reconcile(day.contract.data_uuid, ids)
    assert (reconciliation["stored"], reconciliation["missing"], reconciliation["unexpected"]) == (len(ids), 0, 0)


def test_a_certificate_for_another_name_is_refused_even_from_a_trusted_ca(tmp_path: Path, sdk_jar: Path):
    """The SDK checks the name too: a certificate for 127.0.0.1 alone does not serve
    https://localhost, although the CA is trusted (a man in the middle with a valid
    certificate of his own)."""
    tls, trust_store = make_test_tls(tmp_path / "tls", hosts=("127.0.0.1",))
    with EmulatorProcess(db_path=tmp_path / "datahub.db", tls=tls) as endpoint, dg.instance_for_test() as instance:
        keys = tmp_path / "keys" / "keys.properties"
        register_keys(endpoint.url, keys, [USER_PROFILE_CONTRACT])
        write_properties(keys, {**read_properties(keys), "endpoint": endpoint.url.replace("127.0.0.1", "localhost")})
        contracts = write_contract(tmp_path / "contracts", batch_ranges=1)
        day = Day(tmp_path, sdk_jar, keys, f"sqlite:///{tmp_path / 'delivery.db'}", instance, contracts)
        write_table(generate(200, DAY), day.source_url)
        day.prepare()

        refused = upload_in_a_new_process(day, DATAHUB_SDK_TRUSTSTORE=str(trust_store))
        assert refused.returncode == 1 and "failed the TLS check" in refused.stderr
        assert endpoint.stats()["requests"] == 0 and day.ledger() == {}
