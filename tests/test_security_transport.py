"""The adapter refuses to send over plain http anywhere but loopback, whichever SDK is on
the classpath: the check reads the `endpoint` of keys.properties at resource setup."""

from __future__ import annotations

import dagster as dg
import pytest

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
