"""A second contract file adds a second chain of assets with no code change; ranges
uploading in parallel as separate processes share one Postgres-backed limiter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl

from datahub_assets.contract import load_contract
from datahub_assets.definitions import build_definitions, build_dataset_assets
from datahub_assets.extract.sources import SourceDatabase
from datahub_dev.stack import register_keys
from datahub_dev.synthetic import generate, write_landing_file, write_table
from datahub_assets.lake import DataLake
from datahub_assets.partitions import DATE_DIM, RANGE_DIM, business_date, is_current_day, previous_date
from datahub_assets.upload.resources import DeliveryDatabase
from datahub_assets.upload.sdk import DataHubSdkResource
from support import configured_resources, environment_of, write_contract

DAY = "2026-11-26"
WORKER = Path(__file__).with_name("worker.py")
DEVICE_CONTRACT = """
dataset: device_profile
data_uuid: 0f6d3a0c5b7e4a1e9c2d8b6a4f1e3c5d
description: Devices seen per user, from the daily landing file.
source: {kind: files, pattern: "devices/{date}.csv"}
columns:
  - {name: id, type: String, required: true, source: user_id}
  - {name: screenWidth, type: Double, source: screen_width}
  - {name: userName, type: String, expression: "upper(user_name)"}
batch_ranges: 4
"""


def test_a_second_contract_file_adds_a_second_chain(
    tmp_path, sftp_server, datahub_endpoint, sdk_jar
):
    contracts = write_contract(tmp_path / "contracts")
    (contracts / "device_profile.yaml").write_text(DEVICE_CONTRACT)

    defs = build_definitions(contracts)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        f"{d}_{s}"
        for d in ("user_profile", "device_profile")
        for s in ("extract", "snapshot", "uploaded", "delivered")
    }
    for d in ("user_profile", "device_profile"):
        assert graph.get(dg.AssetKey(f"{d}_delivered")).parent_keys == {dg.AssetKey(f"{d}_uploaded")}
        assert graph.get(dg.AssetKey(f"{d}_uploaded")).parent_keys == {dg.AssetKey(f"{d}_snapshot")}
        assert graph.get(dg.AssetKey(f"{d}_snapshot")).parent_keys == {dg.AssetKey(f"{d}_extract")}

    # The new dataset runs end to end from an SFTP landing file, with no code change.
    keys_file = tmp_path / "keys" / "keys.properties"
    register_keys(datahub_endpoint.url, keys_file, sorted(contracts.glob("*.yaml")))
    source = generate(800, DAY)
    write_landing_file(source, sftp_server.root / "devices" / f"{DAY}.csv")
    resources = {
        "lake": DataLake(root=str(tmp_path / "lake")),
        "source_db": SourceDatabase(url="sqlite://"),
        "landing": sftp_server.landing(),
        "sdk": DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(keys_file)),
        "delivery_db": DeliveryDatabase(url=f"sqlite:///{tmp_path / 'delivery.db'}"),
    }
    device = [
        a
        for a in build_dataset_assets(contracts)
        if a.key.to_user_string().startswith("device_profile")
    ]
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            device[:2], partition_key=DAY, resources=resources, instance=instance
        ).success
        for r in ("0", "1", "2", "3"):
            key = dg.MultiPartitionKey({DATE_DIM: DAY, RANGE_DIM: r})
            assert dg.materialize(
                [device[2]], partition_key=key, resources=resources, instance=instance
            ).success
        proof = dg.materialize([device[3]], partition_key=DAY, resources=resources, instance=instance)
        (proved,) = proof.asset_materializations_for_node("device_profile_delivered")
        assert proved.metadata["batches_acknowledged_S"].value == 8

    snapshot = pl.read_parquet(tmp_path / "lake" / "device_profile" / "snapshot" / f"{DAY}.parquet")
    assert snapshot.columns == ["id", "screenWidth", "userName"]
    assert (
        snapshot["userName"].sort().to_list()
        == source["user_name"].str.to_uppercase().sort().to_list()
    )
    device_uuid = load_contract(contracts / "device_profile.yaml").data_uuid
    reconciled = datahub_endpoint.reconcile(device_uuid, source["user_id"].to_list())
    assert reconciled["stored"] == 800 and reconciled["missing"] == 0
    assert datahub_endpoint.stats()["by_code"].get("DATA_CHECK_FAILED", 0) == 0


def test_four_ranges_in_four_processes_never_exceed_the_cap(
    tmp_path, pg_url, datahub_endpoint, sdk_jar
):
    # Both lanes of the limiter at once: two ranges of the business date (the priority
    # lane) and two ranges of an older date (the backfill lane), one process each. The
    # dates are taken from the clock here, in the test: `is_current_day` reads it too.
    current = business_date()
    older = previous_date(current)
    assert is_current_day(current) and not is_current_day(older)
    contracts = write_contract(tmp_path / "contracts", batch_ranges=2)
    contract = load_contract(contracts / "user_profile.yaml")
    keys_file = tmp_path / "keys" / "keys.properties"
    register_keys(datahub_endpoint.url, keys_file, sorted(contracts.glob("*.yaml")))
    resources = configured_resources(tmp_path, delivery_url=pg_url, sdk_jar=sdk_jar, keys_file=keys_file)
    # Disjoint ids per date: the partner keeps one row per id, so each date's rows stay countable.
    sources = {
        current: generate(18_000, current),
        older: generate(18_000, older).with_columns(pl.col("user_id").str.replace("^2188", "2199")),
    }
    for frame in sources.values():
        write_table(frame, resources["source_db"].url)
    env = {**os.environ, **environment_of(resources)}
    env.pop("DAGSTER_HOME", None)
    extract, snapshot, *_ = build_dataset_assets(contracts)
    with dg.instance_for_test() as instance:
        for day in sources:
            assert dg.materialize(
                [extract, snapshot], partition_key=day, resources=resources, instance=instance
            ).success

    # Latency makes the ranges overlap in time, as on separate machines.
    datahub_endpoint.faults(latency_ms={"median": 60, "jitter": 30})
    runs = [(day, r) for day in sources for r in ("0", "1")]
    logs = [tmp_path / f"worker-{day}-{r}.log" for day, r in runs]
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(contracts), day, "--ranges", r],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        for (day, r), log in zip(runs, logs)
    ]
    codes = [w.wait(timeout=600) for w in workers]  # a hang guard, generous for a loaded machine
    assert codes == [0, 0, 0, 0], "\n".join(log.read_text()[-3000:] for log, c in zip(logs, codes) if c)

    # What the design guarantees, whatever the machine's load: every batch acknowledged
    # exactly once, no more than the cap admitted in any sliding second, and every
    # throttled request retried until acknowledged. Arrivals per sliding second, cap use
    # and how the lanes share the cap depend on scheduling jitter: bench/cap_use.py
    # measures them.
    stats = datahub_endpoint.stats()
    assert stats["max_admitted_per_sliding_second"] <= 20
    throttled = stats["by_code"].get("THROTTLED", 0)
    assert stats["by_code"].get("SUCCESS", 0) == 360
    assert stats["requests"] == 360 + throttled, stats["by_code"]
    assert stats["rows_accepted"] == 36_000
    ids = [i for frame in sources.values() for i in frame["user_id"].to_list()]
    reconciled = datahub_endpoint.reconcile(contract.data_uuid, ids)
    assert (reconciled["stored"], reconciled["missing"], reconciled["unexpected"]) == (36_000, 0, 0)
    ledger = DeliveryDatabase(url=pg_url).ledger()
    for day in sources:
        assert ledger.status_counts(contract.data_uuid, day) == {"S": 180}, day
