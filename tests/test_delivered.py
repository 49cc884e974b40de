"""A date's proof of delivery, <dataset>_delivered, on days delivered through the real
parts: the local endpoint, the stand-in SDK in a JVM, both ledger backends and a Dagster
instance. Also the date-first partition keys, the automation that requests the proof,
and `datahub-deliver`, which delivers a date from the command line."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster_graphql.test.utils import define_out_of_process_workspace, execute_dagster_graphql
from support import CONTRACT, DAY, Day, configured_resources, environment_of, materialization_metadata, write_contract

from datahub_assets.contract import load_contract
from datahub_assets.delivered.assets import PROOF_COLUMNS
from datahub_assets.partitions import (
    deadline_for,
    range_keys,
    split_upload_key,
    upload_partition_key,
    upload_partitions_def,
)
from datahub_assets.upload.resources import create_delivery_engine
from datahub_dev.synthetic import generate, write_table

DELIVERED = dg.AssetKey("user_profile_delivered")
DELIVER = Path(sys.executable).parent / "datahub-deliver"


@pytest.fixture
def day(tmp_path, sdk_jar, keys_file, delivery_url) -> Day:  # noqa: ANN001
    contracts = write_contract(tmp_path / "contracts", batch_ranges=4)
    with dg.instance_for_test() as instance:
        yield Day(tmp_path, sdk_jar, keys_file, delivery_url, instance, contracts)


def ledger_rows(day: Day) -> list[sa.Row]:
    engine = create_delivery_engine(day.delivery_url)
    try:
        with engine.connect() as conn:
            query = sa.text("select * from upload_ledger where day = :d order by batch_no")
            return conn.execute(query, {"d": day.day}).all()
    finally:
        engine.dispose()


def test_partition_keys_read_date_first():
    partitions = upload_partitions_def(CONTRACT)
    assert str(upload_partition_key("2026-11-29", "07")) == "2026-11-29|07"
    assert split_upload_key(partitions, "2026-11-29|07") == ("2026-11-29", "07")
    assert partitions.get_partition_keys()[:2] == [f"{CONTRACT.start_date}|00", f"{CONTRACT.start_date}|01"]


def test_a_block_run_sends_each_range_on_its_own_and_a_failed_range_stops_none_after_it(day: Day, datahub_endpoint):
    write_table(generate(1_050, DAY), day.source_url)  # 11 batches: ranges 0..3 hold 2, 3, 3, 3
    day.prepare()
    datahub_endpoint.faults(scripted=[{"request": 2, "outcome": "F/DATA_CHECK_FAILED"}])  # in range 1

    result = day.upload_block("1", "3", raise_on_error=False)

    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert f"1 of 3 batches of range 1 ({DAY}) did not succeed: DATA_CHECK_FAILED x1" in failure.step_failure_data.error.message
    # Each range is its own partition, materialized when its last batch is acknowledged.
    sent = [(m.partition, {k: v.value for k, v in m.metadata.items()}) for m in result.asset_materializations_for_node(day.uploaded.op.name)]
    assert [(p, m["first_batch_number"], m["last_batch_number"], m["batches_sent"]) for p, m in sent] == [
        (f"{DAY}|2", 5, 7, 3), (f"{DAY}|3", 8, 10, 3),
    ]  # fmt: skip
    ledger = day.ledger()
    assert sorted(ledger) == list(range(2, 11)) and sorted(e.status for e in ledger.values()) == ["F"] + ["S"] * 8
    status = day.instance.get_status_by_partition(day.uploaded.key, [day.partition_key(k) for k in day.range_keys], upload_partitions_def(day.contract))
    assert [status.get(day.partition_key(k)) for k in day.range_keys] == [
        None, dg.AssetPartitionStatus.FAILED, dg.AssetPartitionStatus.MATERIALIZED, dg.AssetPartitionStatus.MATERIALIZED,
    ]  # fmt: skip

    # The whole date in one run: range 0, and the refused batch again; nothing else is sent twice.
    datahub_endpoint.faults(scripted=[])
    again = day.upload_block("0", "3")
    metadata = [{k: v.value for k, v in m.metadata.items()} for m in again.asset_materializations_for_node(day.uploaded.op.name)]
    assert [m["batches_sent"] for m in metadata] == [2, 1, 0, 0]
    assert {e.status for e in day.ledger().values()} == {"S"} and len(day.ledger()) == 11
    assert day.prove().success


def test_a_delivered_dates_proof_matches_the_ledger_and_names_no_row(day: Day, datahub_endpoint):
    source = generate(1_050, DAY, bad_share=0.02)
    write_table(source, day.source_url)
    day.prepare()
    runs = [day.upload_range(key) for key in day.range_keys]
    assert [r.dagster_run.tags["dagster/partition"] for r in runs] == [f"{DAY}|{k}" for k in day.range_keys]
    # No figure that does not apply: DAY's deadline passed before it was sent (no slack),
    # nothing remains after the last range (no ETA), a rerun sends nothing (no rate).
    uploads = [materialization_metadata(r, day.uploaded) for r in runs]
    assert not [m for m in uploads if "day_slack_s" in m] and "day_eta_s" in uploads[0] and "day_eta_s" not in uploads[-1]
    rerun = materialization_metadata(day.upload_range(day.range_keys[0]), day.uploaded)
    assert rerun["batches_sent"] == 0 and "rows_per_s" not in rerun and "rows_per_s" in uploads[0]

    result = day.prove()

    (materialization,) = result.asset_materializations_for_node(DELIVERED.path[-1])
    meta = {k: v.value for k, v in materialization.metadata.items()}
    rows = ledger_rows(day)
    snapshot = day.snapshot_frame()
    batches = -(-snapshot.height // 100)
    assert (meta["rows_expected"], meta["batches_expected"]) == (snapshot.height, batches) and len(rows) == batches
    assert (meta["batches_acknowledged_S"], meta["batches_unknown_U"], meta["batches_refused_F"]) == (batches, 0, 0)
    assert meta["rows_quarantined"] == day.quarantine_frame().height > 0
    assert meta["send_attempts"] == sum(r.attempts for r in rows)
    first, last, completed = min(r.first_sent_at for r in rows), max(r.last_sent_at for r in rows), max(r.acked_at for r in rows)
    assert (meta["first_send_at"], meta["last_send_at"], meta["completed_at"]) == (first, last, completed)
    assert meta["send_duration_s"] == round(completed - first, 1)
    assert meta["slack_at_completion_s"] == round(deadline_for(DAY).timestamp() - completed, 1) < 0  # long past due
    assert meta["delivered_by_deadline"] is False

    # The proof file: every batch with its traceId and content hash, private to the user.
    path = Path(meta["proof_path"])
    assert path == day.lake.proof_path("user_profile", DAY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with path.open(newline="") as f:
        header, *lines = list(csv.reader(f))
    assert tuple(header) == PROOF_COLUMNS
    assert [(int(n), trace, digest) for n, trace, digest, _ in lines] == [(r.batch_no, r.trace_id, r.content_hash) for r in rows]
    assert meta["proof_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    # Dagster holds counts, times and the path: no traceId, id or row value.
    logged = [e.message for e in day.instance.all_logs(result.run_id)]
    recorded = json.dumps({k: str(v) for k, v in meta.items()}) + json.dumps(logged)
    assert not [r.trace_id for r in rows if r.trace_id in recorded]
    assert not [i for i in source["user_id"].drop_nulls() if i in recorded]
    assert not [n for n in source["user_name"].drop_nulls().unique() if len(n) > 3 and n in recorded]


@pytest.mark.parametrize("delivery_url", ["sqlite"], indirect=True)
def test_a_date_with_a_range_not_uploaded_gets_no_proof(day: Day, datahub_endpoint):
    write_table(generate(1_000, DAY), day.source_url)
    day.prepare()
    for key in day.range_keys[:-1]:
        assert day.upload_range(key).success

    result = day.prove(raise_on_error=False)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert f"Upload ranges {day.range_keys[-1]} again" in failure.event_specific_data.error.message
    assert not day.lake.proof_path("user_profile", DAY).exists()
    assert result.asset_materializations_for_node(DELIVERED.path[-1]) == []


@pytest.mark.parametrize("delivery_url", ["sqlite"], indirect=True)
@pytest.mark.filterwarnings("ignore:Parameter `include_sources`")  # inside Dagster's evaluate_automation_conditions
def test_the_proof_is_requested_once_every_range_is_uploaded_and_again_after_a_rerun(day: Day, datahub_endpoint):
    defs = dg.Definitions(assets=[day.extract, day.snapshot, day.uploaded, day.delivered], resources=day.resources)

    def requested(cursor):  # noqa: ANN001, ANN202
        result = dg.evaluate_automation_conditions(defs=defs, instance=day.instance, cursor=cursor)
        return result.get_requested_partitions(DELIVERED), result.cursor

    _, cursor = requested(None)
    write_table(generate(1_000, DAY), day.source_url)
    day.prepare()
    for key in day.range_keys[:-1]:
        day.upload_range(key)
    waiting, cursor = requested(cursor)
    day.upload_range(day.range_keys[-1])
    ready, cursor = requested(cursor)
    day.prove()
    proved, cursor = requested(cursor)
    day.upload_range(day.range_keys[0])  # a rerun of one range (it sends nothing)
    again, cursor = requested(cursor)

    assert (waiting, ready, proved, again) == (set(), {DAY}, set(), {DAY})


@pytest.mark.parametrize("delivery_url", ["sqlite"], indirect=True)
def test_datahub_deliver_delivers_one_date_and_a_rerun_sends_only_what_failed(
    tmp_path, sdk_jar, keys_file, delivery_url, datahub_endpoint  # noqa: ANN001
):
    contracts = write_contract(tmp_path / "contracts", batch_ranges=2)
    resources = configured_resources(tmp_path, delivery_url=delivery_url, sdk_jar=sdk_jar, keys_file=keys_file)
    source = generate(250, DAY)  # 3 batches: range 0 holds batch 0, range 1 batches 1 and 2
    write_table(source, resources["source_db"].url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, **environment_of(resources), "DAGSTER_HOME": str(home)}
    command = [str(DELIVER), "--dataset", "user_profile", "--date", DAY, "--contracts-dir", str(contracts)]
    datahub_endpoint.faults(scripted=[{"request": 1, "outcome": "F/PARAM_ILLEGAL"}])  # range 0's batch

    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    assert refused.returncode == 1, refused.stdout + refused.stderr
    prepared, failed, uploaded, verdict = refused.stdout.splitlines()  # a line per step
    assert prepared == f"user_profile {DAY}: snapshot of 250 rows from 250 source rows (0 quarantined, 0 duplicates)"
    assert failed.startswith(f"user_profile {DAY}: range 0 failed (run ") and "PARAM_ILLEGAL" in failed
    assert uploaded == f"user_profile {DAY}: 1 of 2 ranges uploaded: 2 batches sent, 0 already delivered"
    assert verdict == f"user_profile {DAY}: not delivered, range 0 failed; run this again, it sends only what is missing"
    assert not resources["lake"].proof_path("user_profile", DAY).exists()

    delivered = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    assert delivered.returncode == 0, delivered.stdout + delivered.stderr
    _, uploaded, verdict = delivered.stdout.splitlines()
    assert uploaded == f"user_profile {DAY}: 2 of 2 ranges uploaded: 1 batches sent, 2 already delivered"
    proof = resources["lake"].proof_path("user_profile", DAY)
    assert verdict.startswith(f"user_profile {DAY}: delivered ") and verdict.endswith(f"after the 10:00 GMT+8 deadline; proof in {proof}")
    reconciled = datahub_endpoint.reconcile(load_contract(contracts / "user_profile.yaml").data_uuid, source["user_id"].to_list())
    assert (reconciled["stored"], reconciled["missing"], reconciled["unexpected"]) == (250, 0, 0)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"datahub/dataset": "user_profile", "datahub/date": DAY}))
        assert sorted((r.job_name, r.tags.get("datahub/range"), r.status.value) for r in runs) == sorted(
            [("user_profile_prepare_job", None, "SUCCESS")] * 2
            + [("user_profile_upload_job", "0", "FAILURE"), ("user_profile_upload_job", "0", "SUCCESS")]
            + [("user_profile_upload_job", "1", "SUCCESS")] * 2
            + [("user_profile_proof_job", None, "SUCCESS")]
        )
        assert instance.get_latest_materialization_event(DELIVERED) is not None


LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


def test_the_uis_one_action_backfills_the_whole_chain_of_a_date():
    """What the README's UI action sends: the dataset's four assets and one date, picked
    on the root of the selection (the extract)."""
    chain = ["user_profile_extract", "user_profile_snapshot", "user_profile_uploaded", "user_profile_delivered"]
    definitions_file = str(Path(__file__).parents[1] / "datahub_assets" / "definitions.py")
    with dg.instance_for_test() as instance:
        with define_out_of_process_workspace(definitions_file, "defs", instance) as workspace:
            params = {"assetSelection": [{"path": [name]} for name in chain], "partitionNames": [DAY]}
            launched = execute_dagster_graphql(workspace.create_request_context(), LAUNCH_BACKFILL, {"params": params})
        answer = launched.data["launchPartitionBackfill"]
        assert answer["__typename"] == "LaunchBackfillSuccess", answer
        target = instance.get_backfill(answer["backfillId"]).asset_backfill_data.target_subset

    partitions = {}
    for asset_partition in target.iterate_asset_partitions():
        partitions.setdefault(asset_partition.asset_key.to_user_string(), set()).add(asset_partition.partition_key)
    ranges = {upload_partition_key(DAY, k) for k in range_keys(CONTRACT.batch_ranges)}
    assert partitions == {
        "user_profile_extract": {DAY}, "user_profile_snapshot": {DAY}, "user_profile_uploaded": ranges,
        "user_profile_delivered": {DAY},
    }  # fmt: skip
