"""The lake is private to the user that runs the steps (folders 0700, files 0600, also
for files written by polars while the resource is set up) and keeps each contract's
`retention_days`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from support import DAY, Day, write_contract

from datahub_assets.contract import ContractError, load_contract
from datahub_assets.lake import DataLake
from datahub_dev.synthetic import generate, write_table

DATASET = "user_profile"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_files_written_while_the_lake_is_set_up_are_private_and_the_umask_is_restored(tmp_path):
    lake = DataLake(root=str(tmp_path / "lake"))
    before = os.umask(0o022)
    try:
        with dg.build_init_resource_context() as context:
            lake.setup_for_execution(context)
            try:
                out = lake.extract_dir(DATASET, "2026-11-26")
                out.mkdir(parents=True)
                pl.DataFrame({"id": ["1"]}).write_parquet(out / "part-00000.parquet")
                snap = lake.snapshot_path(DATASET, "2026-11-26")
                snap.parent.mkdir(parents=True)
                pl.DataFrame({"id": ["1"]}).write_parquet(snap)
            finally:
                lake.teardown_after_execution(context)
        assert os.umask(0o022) == 0o022  # teardown put the caller's umask back
    finally:
        os.umask(before)
    root = tmp_path / "lake"
    for folder in (root, root / DATASET, root / DATASET / "extract", out, snap.parent):
        assert _mode(folder) == 0o700, folder
    assert _mode(out / "part-00000.parquet") == 0o600 and _mode(snap) == 0o600


def test_setup_closes_existing_folders_and_secure_fixes_every_file(tmp_path):
    root = tmp_path / "lake"
    old = root / DATASET / "snapshot"
    old.mkdir(parents=True, mode=0o755)
    (root / DATASET).chmod(0o775)
    root.chmod(0o777)
    data = old / "2026-11-01.parquet"
    data.write_text("x")
    data.chmod(0o644)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("y")
    elsewhere.chmod(0o644)
    (old / "link").symlink_to(elsewhere)
    lake = DataLake(root=str(root))
    with dg.build_init_resource_context() as context:
        lake.setup_for_execution(context)
        lake.teardown_after_execution(context)
    assert [_mode(p) for p in (root, root / DATASET, old)] == [0o700, 0o700, 0o700]
    lake.secure(root)
    assert _mode(data) == 0o600
    assert _mode(elsewhere) == 0o644  # a symlink's target is not changed


def _day_files(root: Path, days: list[str]) -> None:
    for day in days:
        (root / DATASET / "extract" / day).mkdir(parents=True)
        (root / DATASET / "extract" / day / "part-00000.parquet").write_text("e")
        for stage in ("snapshot", "quarantine"):
            (root / DATASET / stage).mkdir(parents=True, exist_ok=True)
            (root / DATASET / stage / f"{day}.parquet").write_text("s")


def _left(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_retention_deletes_the_dates_older_than_the_setting_only(tmp_path):
    root = tmp_path / "lake"
    _day_files(root, ["2026-10-27", "2026-10-28", "2026-11-25", "2026-11-26"])
    (root / DATASET / "snapshot" / "notes.txt").write_text("kept: not a date")
    (root / "other_dataset" / "snapshot").mkdir(parents=True)
    (root / "other_dataset" / "snapshot" / "2020-01-01.parquet").write_text("kept: another dataset")

    lake = DataLake(root=str(root))
    assert lake.delete_older_than(DATASET, "2026-11-27", keep_days=0) == []  # 0: forever
    removed = lake.delete_older_than(DATASET, "2026-11-27", keep_days=30)
    assert sorted(str(p.relative_to(root)) for p in removed) == [
        f"{DATASET}/extract/2026-10-27", f"{DATASET}/quarantine/2026-10-27.parquet",
        f"{DATASET}/snapshot/2026-10-27.parquet",
    ]
    assert _left(root) == sorted(
        [f"{DATASET}/extract/{d}/part-00000.parquet" for d in ("2026-10-28", "2026-11-25", "2026-11-26")]
        + [f"{DATASET}/{s}/{d}.parquet" for s in ("quarantine", "snapshot") for d in ("2026-10-28", "2026-11-25", "2026-11-26")]
        + [f"{DATASET}/snapshot/notes.txt", "other_dataset/snapshot/2020-01-01.parquet"]
    )
    assert lake.delete_older_than(DATASET, "2026-11-27", keep_days=30) == []  # idempotent


def test_a_negative_retention_is_refused(tmp_path):
    with pytest.raises(ValueError, match="keep_days"):
        DataLake(root=str(tmp_path)).delete_older_than(DATASET, "2026-11-27", keep_days=-1)
    with pytest.raises(ContractError, match="retention_days"):
        load_contract(write_contract(tmp_path / "contracts", retention_days=-1) / "user_profile.yaml")


def test_building_a_snapshot_removes_the_dates_past_the_contracts_retention(tmp_path):
    with dg.instance_for_test() as instance:
        contracts = write_contract(tmp_path / "contracts", retention_days=3)
        day = Day(tmp_path, tmp_path / "no-sdk.jar", tmp_path / "no-keys", f"sqlite:///{tmp_path / 'd.db'}", instance, contracts)
        root = Path(day.lake.root)
        old, kept = "2026-11-22", "2026-11-23"  # DAY is 2026-11-26: 2026-11-23 is the oldest of the window
        _day_files(root, [old, kept])
        write_table(generate(200, DAY), day.source_url)
        day.prepare()

    left = _left(root)
    assert not [p for p in left if old in p]
    assert {f"{DATASET}/snapshot/{kept}.parquet", f"{DATASET}/snapshot/{DAY}.parquet"} <= set(left)
