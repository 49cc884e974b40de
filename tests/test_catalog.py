"""What Dagster's catalog shows of a contract: owners, the contract file as code
reference, the partner's columns, the row count and where the day's files are."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from support import DAY, Day, write_contract

from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, ContractError, load_contract
from datahub_assets.definitions import build_dataset_assets
from datahub_dev.synthetic import generate, write_table


def test_every_asset_names_its_owners_and_its_contract_and_the_snapshot_its_columns():
    assets = {a.key.to_user_string(): a for a in build_dataset_assets(DEFAULT_CONTRACTS_DIR)}
    contract_file = (DEFAULT_CONTRACTS_DIR / "user_profile.yaml").resolve()
    for name in ("user_profile_extract", "user_profile_snapshot", "user_profile_uploaded", "user_profile_delivered"):
        spec = assets[name].specs_by_key[dg.AssetKey(name)]
        assert spec.owners == ["team:wallet-data"]
        (reference,) = spec.metadata["dagster/code_references"].code_references
        assert Path(reference.file_path) == contract_file
    schema = assets["user_profile_snapshot"].specs_by_key[dg.AssetKey("user_profile_snapshot")].metadata[
        "dagster/column_schema"
    ]
    assert [(c.name, c.type, c.constraints.nullable) for c in schema.columns] == [
        ("id", "String", False), ("userName", "String", True), ("userAge", "Bigint", True), ("screenWidth", "Double", True)
    ]


@pytest.mark.parametrize("owner", ["wallet-data", "team:", "a@b", "team:data team"])
def test_an_owner_that_is_neither_an_email_nor_a_team_is_refused(tmp_path, owner):
    with pytest.raises(ContractError, match="owners"):
        load_contract(write_contract(tmp_path / "contracts", owners=[owner]) / "user_profile.yaml")


def test_a_snapshot_records_its_row_count_and_the_paths_of_its_files(tmp_path):
    with dg.instance_for_test() as instance:
        contracts = write_contract(tmp_path / "contracts")
        day = Day(tmp_path, tmp_path / "no-sdk.jar", tmp_path / "no-keys", f"sqlite:///{tmp_path / 'd.db'}", instance, contracts)
        write_table(generate(300, DAY, bad_share=0.05), day.source_url)
        result = day.prepare()

    (extract,) = result.asset_materializations_for_node("user_profile_extract")
    (snapshot,) = result.asset_materializations_for_node("user_profile_snapshot")
    meta = {k: v.value for k, v in snapshot.metadata.items()}
    assert extract.metadata["dagster/row_count"].value == meta["source_rows"] == 300
    assert meta["dagster/row_count"] == 300 - meta["rejected_rows"] - meta["duplicate_rows"] > 0
    assert Path(meta["snapshot_path"]) == day.lake.snapshot_path("user_profile", DAY) and Path(meta["snapshot_path"]).is_file()
    assert Path(meta["quarantine_path"]) == day.lake.quarantine_path("user_profile", DAY)
