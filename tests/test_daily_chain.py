"""The daily chain around the uploads: the snapshot's checks, the schedule, the fan-out
per contract, and the planner's command line. Real Dagster runs on a test instance,
real files in a lake under tmp_path; the sensors and the schedule are evaluated as the
daemon evaluates them."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest
import polars as pl

from datahub_assets.automation.daily import FAN_OUT_TAG, build_daily_delivery_schedule, build_prepare_job
from datahub_assets.contract import Contract, load_contract
from datahub_assets.definitions import build_dataset_assets, build_definitions
from datahub_assets.extract.sources import LandingFiles, SourceDatabase
from datahub_assets.lake import DataLake
from datahub_assets.partitions import range_keys, upload_partitions_def
from datahub_assets.snapshot.assets import ROW_COUNT_CHANGE_CHECK, SCHEMA_CHECK, schema_violations
from datahub_dev.synthetic import generate, write_table
from support import CONTRACT, CONTRACTS_DIR, write_contract

DAY = "2026-11-25"
PLAN = Path(sys.executable).parent / "datahub-plan"


def lake_resources(tmp_path: Path) -> dict:
    return {
        "lake": DataLake(root=str(tmp_path / "lake")),
        "source_db": SourceDatabase(url=f"sqlite:///{tmp_path / 'source.db'}"),
        "landing": LandingFiles(url=str(tmp_path / "landing")),
    }


def fan_out(defs: dg.Definitions, dataset: str, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    sensor = defs.resolve_sensor_def(f"{dataset}_upload_fan_out_sensor")
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs)).run_requests


def targets(request: dg.RunRequest, contract: Contract = CONTRACT) -> list[str]:
    """The uploaded partitions a fan-out run covers: its block of one date's ranges."""
    return [str(k) for k in upload_partitions_def(contract).get_partition_keys_in_range(request.partition_key_range)]


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_snapshot_that_fails_its_blocking_check_is_never_fanned_out(tmp_path: Path):
    resources = lake_resources(tmp_path)
    rejected_day, good_day = "2026-11-24", DAY
    # 20 % broken rows on one day: over the contract's 5 % reject share.
    write_table(generate(1_000, rejected_day, bad_share=0.2), resources["source_db"].url)
    write_table(generate(1_000, good_day), resources["source_db"].url)
    extract, snapshot, *_ = build_dataset_assets(CONTRACTS_DIR)
    defs = build_definitions()
    tags = {FAN_OUT_TAG: CONTRACT.dataset}
    with dg.instance_for_test() as instance:
        blocked = dg.materialize(
            [extract, snapshot], partition_key=rejected_day, resources=resources, instance=instance,
            tags=tags, raise_on_error=False,
        )  # fmt: skip
        passed = dg.materialize([extract, snapshot], partition_key=good_day, resources=resources, instance=instance, tags=tags)
        requests = fan_out(defs, CONTRACT.dataset, instance)

    assert not blocked.success and passed.success
    assert not check_results(blocked)["reject_share_under_threshold"].passed
    # Only the date whose snapshot passed is uploaded: its 32 ranges in 4 runs of 8.
    assert [len(targets(r)) for r in requests] == [8, 8, 8, 8]
    assert sorted(k for r in requests for k in targets(r)) == [f"{good_day}|{k}" for k in range_keys(CONTRACT.batch_ranges)]


def test_the_row_count_check_fails_beyond_the_contracts_change(tmp_path: Path):
    resources = lake_resources(tmp_path)
    write_table(generate(1_000, "2026-11-24"), resources["source_db"].url)
    write_table(generate(400, DAY), resources["source_db"].url)  # -60 %: over the 50 % allowed
    extract, snapshot, *_ = build_dataset_assets(CONTRACTS_DIR)
    with dg.instance_for_test() as instance:
        for day in ("2026-11-24", DAY):
            result = dg.materialize([extract, snapshot], partition_key=day, resources=resources, instance=instance)
            assert result.success  # a warning: the upload goes on

    check = check_results(result)[ROW_COUNT_CHANGE_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert {k: v.value for k, v in check.metadata.items()} == {"previous_rows": 1_000, "rows": 400, "change_share": 0.6}
    assert check_results(result)[SCHEMA_CHECK].passed


def test_the_schema_check_counts_what_would_break_the_partners_schema(tmp_path: Path):
    good = {"id": ["a1", "a2", "a3"], "userName": ["x", None, "z"], "userAge": ["1", "20", None], "screenWidth": ["1.5", "2", None]}
    pl.DataFrame(good).write_parquet(tmp_path / "good.parquet")
    assert not any(schema_violations(CONTRACT, pl.scan_parquet(tmp_path / "good.parquet")).values())

    bad = {"id": ["a2", "a1", "a1", None], "userName": ["x"] * 4, "userAge": ["01", "+1", "2", "x"],
           "screenWidth": ["NaN", "inf", "1.5", "wide"]}  # fmt: skip
    pl.DataFrame(bad).write_parquet(tmp_path / "bad.parquet")
    assert schema_violations(CONTRACT, pl.scan_parquet(tmp_path / "bad.parquet")) == {
        "missing_id": 1, "duplicate_id": 1, "unsorted_id": 1, "bad_userAge": 3, "bad_screenWidth": 3,
    }  # fmt: skip

    pl.DataFrame(good).drop("screenWidth").write_parquet(tmp_path / "short.parquet")
    assert schema_violations(CONTRACT, pl.scan_parquet(tmp_path / "short.parquet")) == {"wrong_columns": 1}
    pl.DataFrame(good).with_columns(pl.col("userAge").cast(pl.Int64)).write_parquet(tmp_path / "typed.parquet")
    assert schema_violations(CONTRACT, pl.scan_parquet(tmp_path / "typed.parquet")) == {"wrong_columns": 1}


def test_the_fan_out_of_two_contracts_starts_each_datasets_own_ranges(tmp_path: Path):
    contracts = write_contract(tmp_path / "contracts", batch_ranges=4)
    write_contract(contracts, dataset="device_profile", data_uuid="0" * 32, batch_ranges=5, upload_runs=2)
    resources = lake_resources(tmp_path)
    write_table(generate(500, DAY), resources["source_db"].url)
    defs = build_definitions(contracts)
    assets = {a.key.to_user_string(): a for a in build_dataset_assets(contracts)}
    with dg.instance_for_test() as instance:
        for dataset in ("user_profile", "device_profile"):
            run = dg.materialize(
                [assets[f"{dataset}_extract"], assets[f"{dataset}_snapshot"]], partition_key=DAY,
                resources=resources, instance=instance, tags={FAN_OUT_TAG: dataset},
            )  # fmt: skip
            assert run.success
        requests = {d: fan_out(defs, d, instance) for d in ("user_profile", "device_profile")}

    # One run per range where there are no more ranges than upload runs, else blocks.
    for dataset, blocks in (("user_profile", [["0"], ["1"], ["2"], ["3"]]), ("device_profile", [["0", "1"], ["2", "3", "4"]])):
        assert defs.resolve_sensor_def(f"{dataset}_upload_fan_out_sensor").job_name == f"{dataset}_upload_job"
        contract = load_contract(contracts / f"{dataset}.yaml")
        assert sorted(targets(r, contract) for r in requests[dataset]) == [[f"{DAY}|{k}" for k in block] for block in blocks]
        # Run tags name the dataset, date and range block; an old date gets no queue priority.
        assert sorted((r.tags["datahub/dataset"], r.tags["datahub/date"], r.tags["datahub/range"]) for r in requests[dataset]) == [
            (dataset, DAY, block[0] if len(block) == 1 else f"{block[0]}-{block[-1]}") for block in blocks
        ]
        assert {r.tags["dagster/priority"] for r in requests[dataset]} == {"0"}


def test_the_schedule_skips_a_business_date_before_the_contracts_start(tmp_path: Path):
    contract = load_contract(write_contract(tmp_path, start_date="2026-11-26") / "user_profile.yaml")
    schedule = build_daily_delivery_schedule(contract, build_prepare_job(contract))

    def tick(utc: datetime) -> dg.RunRequest | dg.SkipReason:
        with dg.instance_for_test() as instance:
            context = dg.build_schedule_context(instance=instance, scheduled_execution_time=utc)
            return schedule(context)

    # 05:30 GMT+8 on the 26th: the business date is the 25th, before the start.
    skipped = tick(datetime(2026, 11, 25, 21, 30, tzinfo=timezone.utc))
    assert isinstance(skipped, dg.SkipReason) and "2026-11-25" in skipped.skip_message
    started = tick(datetime(2026, 11, 26, 21, 30, tzinfo=timezone.utc))
    assert isinstance(started, dg.RunRequest) and started.partition_key == "2026-11-26"


def plan(*args: str) -> dict[str, str]:
    result = subprocess.run([str(PLAN), *args], capture_output=True, text=True, timeout=60, check=True)
    return {line[:19].strip(): line[19:].strip() for line in result.stdout.splitlines()}


def test_the_planner_cli_prints_the_days_duration_for_n_machines():
    # 25M rows = 250,000 batches. At 10 x 1 batch/s: 25,000 s; at 20 x 1: 12,500 s (the cap).
    ten = plan("--rows", "25000000", "-N", "10", "-M", "1", "--date", DAY, "--start", "06:00")
    assert ten["batches"] == "250000"
    assert ten["N*M"] == "10 x 1.00 = 10.00 batches/s (cap 20)"
    assert ten["duration"] == "6 h 56 min (6.94 h)"
    assert ten["ETA"] == "2026-11-26 12:56 GMT+8" and ten["slack"].endswith("LATE")

    twenty = plan("--rows", "25000000", "-N", "20", "-M", "1", "--date", DAY, "--start", "06:00")
    assert twenty["duration"] == "3 h 28 min (3.47 h)"
    assert twenty["ETA"] == "2026-11-26 09:28 GMT+8" and twenty["slack"] == "0 h 31 min"
    # 12,500 s before 10:00 GMT+8.
    assert twenty["latest start"].startswith("2026-11-26 06:31 GMT+8")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rows", "25000000", "-N", "10", "-M", "3"], "over the partner's cap of 20 across all machines: use -M 2 with 10"),
        (["--rows", "-5"], "argument --rows: -5 must be more than 0"),
        (["--rows", "100", "-N", "0", "-M", "1"], "argument --machines/-N: 0 must be more than 0"),
        (["--rows", "100", "-M", "0"], "must be more than 0"),
        (["--rows", "100", "--start", "25:99"], "'25:99' is not a time of day"),
        (["--rows", "100", "--latency-ms", "0"], "argument --latency-ms: 0 must be more than 0"),
        (["--rows", "100", "--date", "2026-13-45"], "'2026-13-45' is not a date"),
        (["--rows", "many"], "'many' is not a number"),
    ],
)
def test_the_planner_refuses_bad_input_with_a_message_and_exit_2(args, says):
    result = subprocess.run([str(PLAN), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and says in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
