"""keys.properties is opened once, without following a symlink, checked on the open
descriptor (a regular file of this user, private to them, in a folder only they or root
can change), and the SDK reads those same bytes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from datahub_assets.upload.sdk import DataHubSdkResource, KeysFileError, SdkConfigError, open_keys_file
from datahub_emulator.toolkit import read_properties, write_properties

OTHER_UID = 65534  # nobody


def _private_copy(keys_file: Path, folder: Path) -> Path:
    folder.mkdir(mode=0o700)
    copy = folder / "keys.properties"
    write_properties(copy, read_properties(keys_file))
    return copy


def _refusal(path: Path) -> str:
    with pytest.raises(KeysFileError) as caught:
        open_keys_file(str(path))
    message = str(caught.value)
    assert "DATAHUB_KEYS_PATH" in message
    return message


def test_a_private_file_in_a_private_folder_is_accepted(keys_file, tmp_path):
    keys = open_keys_file(str(_private_copy(keys_file, tmp_path / "ok")))
    try:
        written = read_properties(keys_file)
        # The settings kept are no secret: no private key, no data key.
        assert keys.settings == {"endpoint": written["endpoint"], "dataKeyId": written["dataKeyId"]}
        assert os.readlink(keys.proc_path) == str(tmp_path / "ok" / "keys.properties")
    finally:
        keys.close()


def test_a_symlink_is_refused_even_to_a_private_file(keys_file, tmp_path):
    target = _private_copy(keys_file, tmp_path / "real")
    link = tmp_path / "real" / "link.properties"
    link.symlink_to(target)
    message = _refusal(link)
    assert "symbolic link" in message and str(link) in message


def test_a_file_owned_by_another_user_is_refused(keys_file, tmp_path):
    path = _private_copy(keys_file, tmp_path / "theirs")
    os.chown(path, OTHER_UID, -1)
    message = _refusal(path)
    assert f"owned by another user (uid {OTHER_UID})" in message and f"chown {os.geteuid()}" in message


@pytest.mark.parametrize("mode", [0o770, 0o730, 0o1777, 0o703])
def test_a_folder_group_or_others_can_write_is_refused(keys_file, tmp_path, mode):
    path = _private_copy(keys_file, tmp_path / "shared")
    path.parent.chmod(mode)
    message = _refusal(path)
    assert f"folder writable by group or others (mode {mode:o})" in message and "chmod go-w" in message


def test_a_folder_owned_by_another_user_is_refused(keys_file, tmp_path):
    path = _private_copy(keys_file, tmp_path / "their-folder")
    os.chown(path.parent, OTHER_UID, -1)
    assert f"folder owned by another user (uid {OTHER_UID})" in _refusal(path)


def test_a_fifo_at_the_path_is_refused_without_blocking(tmp_path):
    folder = tmp_path / "fifo"
    folder.mkdir(mode=0o700)
    os.mkfifo(folder / "keys.properties", 0o600)
    assert "not a regular file" in _refusal(folder / "keys.properties")


def test_the_sdk_reads_the_bytes_that_were_checked_not_the_file_now_at_the_path(
    keys_file, sdk_jar, tmp_path, datahub_endpoint, user_profile_uuid
):
    path = _private_copy(keys_file, tmp_path / "swap")
    sdk = DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(path))
    with dg.build_init_resource_context() as context:
        sdk.setup_for_execution(context)
        checked_fd = sdk._keys.fd
        # After the check, the path is replaced by a file whose private key is not the
        # registered one: a client built from it would be refused (checked below).
        write_properties(path, {**read_properties(keys_file), "clientPrivateKey": "bm90IGEga2V5"})
        try:
            sdk.start()
            outcome = sdk.upload(data_uuid=user_profile_uuid, rows=[json.dumps({"id": "k-1", "userName": "Ada"})])
        finally:
            sdk.teardown_after_execution(context)
    assert (outcome.status, outcome.code) == ("S", "SUCCESS")
    assert datahub_endpoint.stats()["by_code"] == {"SUCCESS": 1}
    # Teardown closed the descriptor the SDK was given.
    proc = f"/proc/self/fd/{checked_fd}"
    assert not (os.path.exists(proc) and os.readlink(proc).startswith(str(path)))

    # The control: the file now at the path does not make a client.
    fresh = DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(path))
    with dg.build_init_resource_context() as context:
        fresh.setup_for_execution(context)
        try:
            with pytest.raises(SdkConfigError, match="DATAHUB_KEYS_PATH"):
                fresh.start()
        finally:
            fresh.teardown_after_execution(context)


@contextlib.contextmanager
def acting_as(uid: int, gid: int) -> Iterator[None]:
    """This process's effective user and group, for the checks that read them."""
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing the effective user needs root")
@pytest.mark.parametrize(
    ("group", "mode", "accepted"),
    [
        (OTHER_UID, 0o440, True),  # a Kubernetes Secret: root-owned, the pod's fsGroup may read
        (OTHER_UID, 0o400, False),  # the uploader cannot read it
        (OTHER_UID, 0o460, False),  # the group may write
        (OTHER_UID, 0o444, False),  # others may read
        (0, 0o440, False),  # root's group, not the uploader's
    ],
)
def test_a_non_root_uploader_accepts_a_root_owned_file_only_its_own_group_may_read(
    keys_file, group, mode, accepted
):
    folder = Path(tempfile.mkdtemp(prefix="k8s-secret-"))  # root-owned, 0755, like a Secret's mount
    try:
        folder.chmod(0o755)
        path = folder / "keys.properties"
        write_properties(path, read_properties(keys_file))
        os.chown(path, 0, group)
        path.chmod(mode)
        with acting_as(OTHER_UID, OTHER_UID):
            if accepted:
                open_keys_file(str(path)).close()
            else:
                with pytest.raises(KeysFileError, match="DATAHUB_KEYS_PATH"):
                    open_keys_file(str(path))
    finally:
        shutil.rmtree(folder)
