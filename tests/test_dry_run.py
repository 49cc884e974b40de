"""A dry run reads and checks a range against the contract and reports what a real run
would do, while sending nothing (the client refuses any call), writing no ledger row
and materializing nothing."""

from __future__ import annotations

import json

import dagster as dg
from support import DAY, Day, NoSendClient, write_contract

from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contract
from datahub_assets.upload.batches import Batch, batch_problems, content_hash
from datahub_dev.synthetic import generate, write_table


def test_a_dry_run_checks_and_counts_the_range_and_sends_and_records_nothing(tmp_path):
    with dg.instance_for_test() as instance:
        contracts = write_contract(tmp_path / "contracts", batch_ranges=2)
        day = Day(tmp_path, tmp_path / "no-sdk.jar", tmp_path / "no-keys", f"sqlite:///{tmp_path / 'd.db'}", instance, contracts)
        write_table(generate(1_000, DAY), day.source_url)
        day.prepare()
        day.resources["sdk"] = NoSendClient()

        result = day.upload_range("0", {"dry_run": True})

        assert result.success
        assert result.asset_materializations_for_node(day.uploaded.op.name) == []
        (observation,) = [e.event_specific_data.asset_observation for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
        meta = {k: v.value for k, v in observation.metadata.items()}
        assert (meta["batches"], meta["rows"], meta["problems"], meta["batches_to_send"]) == (5, 500, 0, 5)
        assert meta["day_batches_remaining"] == 10 and meta["day_eta_at_cap_s"] > 0
        assert day.ledger() == {}
        status = instance.get_status_by_partition(day.uploaded.key, [day.partition_key("0")], day.uploaded.partitions_def)
        assert status.get(day.partition_key("0")) != dg.AssetPartitionStatus.MATERIALIZED


def test_batch_problems_names_each_kind_and_column_never_a_value():
    contract = load_contract(DEFAULT_CONTRACTS_DIR / "user_profile.yaml")
    rows = [
        json.dumps({"id": "u1", "userAge": "42", "screenWidth": "390.5"}),  # good
        json.dumps({"userName": "no id"}),
        json.dumps({"id": "u3", "userAge": "042", "screenWidth": "NaN"}),
        json.dumps({"id": "u4", "nickname": "x"}),
        json.dumps({"id": "u5", "userAge": 5}),
        "not json",
        *[json.dumps({"id": f"v{i}"}) for i in range(99)],
    ]
    problems = batch_problems(contract, Batch(0, rows, content_hash(rows)))
    assert problems == {
        "rows_over_batch_size": 5, "missing_id": 1, "bad_bigint:userAge": 1, "bad_double:screenWidth": 1,
        "unknown_column:nickname": 1, "not_an_object_of_strings": 1, "not_json": 1,
    }
