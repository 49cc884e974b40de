"""Shared fixtures.

The DataHub fixtures below (datahub_endpoint, sdk_jar, keys_file, sdk_client) run the
real parts: the local endpoint as a subprocess on loopback, the Java stand-in SDK in a
JVM started through JPype, and the toolkit that creates and registers the keys.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contract
from datahub_dev.stack import ANT_INSTITUTION_ID, INSTITUTION_ID, register_keys
from datahub_emulator.client import EmulatorProcess

# Fixture modules beside this file (tests/ is on pythonpath, see pyproject.toml).
pytest_plugins = ["support", "sftp_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
USER_PROFILE_CONTRACT = DEFAULT_CONTRACTS_DIR / "user_profile.yaml"
BUILD_SDK_SCRIPT = REPO_ROOT / "scripts" / "build_sdk.sh"
DATAHUB_INSTITUTION_ID = INSTITUTION_ID
DATAHUB_ANT_INSTITUTION_ID = ANT_INSTITUTION_ID


@pytest.fixture
def datahub_endpoint(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """A fresh local endpoint per test (it starts in about 0.3 s), with the partner's cap.

    The handle has .url, .db_path, .faults(**patch), .stats(), .reconcile(uuid, ids),
    .reset(), .revoke(institution_id, uuid) and .stop().
    """
    endpoint = EmulatorProcess(db_path=tmp_path / "datahub.db", log_path=tmp_path / "datahub.log")
    with endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def sdk_jar() -> Path:
    """The stand-in SDK jar, built once per session (the script skips an up-to-date jar)."""
    result = subprocess.run(
        ["bash", str(BUILD_SDK_SCRIPT)], check=True, capture_output=True, text=True
    )
    jar = Path(result.stdout.strip().splitlines()[-1])
    assert jar.is_file(), jar
    return jar


@pytest.fixture
def user_profile_contract() -> Path:
    """The demo contract (the partner's example dataset)."""
    return USER_PROFILE_CONTRACT


@pytest.fixture
def user_profile_uuid() -> str:
    return load_contract(USER_PROFILE_CONTRACT).data_uuid


@pytest.fixture
def keys_file(datahub_endpoint: EmulatorProcess, tmp_path: Path) -> Path:
    """keys.properties made by the toolkit and registered with the endpoint."""
    out = tmp_path / "keys" / "keys.properties"
    register_keys(datahub_endpoint.url, out, [USER_PROFILE_CONTRACT])
    return out


def start_datahub_jvm(jar: Path) -> None:
    """Start the JVM once per process: JPype cannot restart one, so it is never shut down."""
    import jpype

    if not jpype.isJVMStarted():
        jpype.startJVM(classpath=[str(jar)], convertStrings=False)


@pytest.fixture
def sdk_client_factory(sdk_jar: Path) -> Iterator[Callable[[Path], Any]]:
    """Makes Java `DataUploadClient`s for any keys file; closes them after the test."""
    start_datahub_jvm(sdk_jar)
    import jpype

    client_class = jpype.JClass("com.alipay.idatahub.client.DataUploadClient")
    clients: list[Any] = []

    def make(keys_path: Path) -> Any:
        clients.append(client_class(str(keys_path)))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def sdk_client(sdk_client_factory: Callable[[Path], Any], keys_file: Path) -> Any:
    """A Java `DataUploadClient` for keys_file (a JPype proxy; pass java.util.ArrayList)."""
    return sdk_client_factory(keys_file)
