"""Data-key rotation in the middle of a day, through the real toolkit, endpoint and SDK:
every batch is recorded with the key it was sent under, runs started before the
rotation still deliver, and the ledger gains its key column in place."""

from __future__ import annotations

import shutil

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa
from support import DAY, Day, write_contract

from datahub_assets.sql import create_engine
from datahub_assets.upload.database import metadata
from datahub_assets.upload.ledger import Ledger, ledger_table
from datahub_assets.upload.resources import create_delivery_engine
from datahub_assets.upload.sdk import DataHubSdkResource
from datahub_dev.synthetic import generate, write_table
from datahub_emulator.toolkit import read_properties, rotate_data_key


def test_a_data_key_rotated_mid_day_is_recorded_per_batch_and_the_previous_key_still_delivers(
    tmp_path, sdk_jar, keys_file, datahub_endpoint
):
    with dg.instance_for_test() as instance:
        contracts = write_contract(tmp_path / "contracts", batch_ranges=3)
        day = Day(tmp_path, sdk_jar, keys_file, f"sqlite:///{tmp_path / 'delivery.db'}", instance, contracts)
        write_table(generate(1_500, DAY), day.source_url)
        day.prepare()
        before = read_properties(keys_file)["dataKeyId"]
        earlier_copy = tmp_path / "earlier" / "keys.properties"  # what a run started before the rotation read
        earlier_copy.parent.mkdir(mode=0o700)
        shutil.copy2(keys_file, earlier_copy)

        day.upload_range("0")
        rotate_data_key(keys_file)
        after = read_properties(keys_file)["dataKeyId"]
        day.upload_range("1")
        day.resources["sdk"] = DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(earlier_copy))
        day.upload_range("2")

    assert after != before
    entries = day.ledger()
    keys_by_range = {}
    for key, numbers in zip(day.range_keys, (range(0, 5), range(5, 10), range(10, 15)), strict=True):
        keys_by_range[key] = {entries[n].data_key_id for n in numbers}
    assert keys_by_range == {"0": {before}, "1": {after}, "2": {before}}
    assert {e.status for e in entries.values()} == {"S"} and len(entries) == 15
    ids = pl.read_parquet(day.lake.snapshot_path(day.contract.dataset, DAY))["id"].to_list()
    reconciliation = datahub_endpoint.reconcile(day.contract.data_uuid, ids)
    assert (reconciliation["stored"], reconciliation["missing"], reconciliation["unexpected"]) == (1_500, 0, 0)
    assert datahub_endpoint.stats()["by_code"] == {"SUCCESS": 15}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_ledger_from_before_key_ids_gains_the_column_in_place(backend, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    old_schema = sa.MetaData()
    sa.Table(
        ledger_table.name, old_schema,
        *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
          for c in ledger_table.columns if c.name != "data_key_id"),
    )  # fmt: skip
    plain = create_engine(url)
    try:
        old_schema.create_all(plain)
        with plain.begin() as conn:
            conn.execute(
                sa.insert(old_schema.tables[ledger_table.name]).values(
                    data_uuid="u", day=DAY, batch_no=0, content_hash="h", status="S", attempts=1
                )
            )
    finally:
        plain.dispose()

    for _ in range(2):  # the second creation finds the column there
        engine = create_delivery_engine(url)
        try:
            ledger = Ledger(engine)
            ledger.mark_sending("u", DAY, 1, "h1", key_id="key-b")
            entries = ledger.entries("u", DAY)
            assert (entries[0].data_key_id, entries[1].data_key_id) == (None, "key-b")
        finally:
            engine.dispose()
    assert "data_key_id" in {c.name for c in metadata.tables[ledger_table.name].columns}
