"""The daily chain, per contract: a schedule extracts and snapshots yesterday's business
date (GMT+8); when that run succeeds, a sensor fans out the date's batch ranges; once every
range is uploaded, the proof of delivery follows (delivered/assets.py).

Each step is a named job, so a run of the chain says what it is wherever it starts (the
schedule, the fan-out, a launchpad, a job backfill, `datahub-deliver`): `<dataset>_prepare_job`
(extract + snapshot), `<dataset>_upload_job` (a block of batch ranges) and `<dataset>_proof_job`.
Their runs carry `datahub/dataset`, `datahub/date` and, for uploads, `datahub/range`.
Dagster sets run tags per partition only through a job's partitioned config, so a run the
asset page's Materialize button starts (Dagster's own asset job) has only Dagster's
`dagster/partition/date` and `dagster/partition/range` tags.

Why a schedule plus a fan-out sensor:
- Dagster has no dependency between runs. Upload runs requested by the schedule next to
  the snapshot run would start before the snapshot exists and fail.
- The fan-out waits for the snapshot run to *succeed*. A snapshot whose blocking
  reject-share check failed is materialized but its run fails, so it never reaches the
  partner.
- A date's ranges go in `upload_runs` runs (the upload pool holds them and a backfill
  run), each a contiguous block of ranges under a run key, so a repeated tick never
  starts a range twice. A run pays its start-up (queue, launch, resources, JVM, first
  call: 10-25 s) once for its block, and the runs never stop together to start the next
  wave, which left the cap idle at each change when every range was its own run. A
  range stays its own partition: the unit a rerun, a lease and the UI work on
  (docs/performance.md, "Upload runs").
- Declarative automation (`AutomationCondition.eager()` on the uploaded asset) would fan
  out too, but it fires on every snapshot update, including hand runs and backfills, and
  the timetable would hide in a condition. Here the start time is one readable cron, and
  a hand run joins the chain only when it carries FAN_OUT_TAG.
"""

from datetime import datetime, time, timedelta, timezone

import dagster as dg

from datahub_assets.contract import Contract
from datahub_assets.partitions import (
    PARTNER_TZ_NAME,
    Stage,
    asset_key,
    block_partition_tags,
    business_date,
    daily_partitions_def,
    is_current_day,
    range_blocks,
    split_upload_key,
    upload_partitions_def,
)

# The reference day (25M rows = 250,000 batches) takes 12,500 s (3 h 28 min) at the
# partner's cap, so its uploads must begin by 06:31 GMT+8; 05:30 leaves an hour for the
# extract, the snapshot and queueing.
DEFAULT_START = time(5, 30)

# On a run of extract + snapshot: "when this run succeeds, upload this dataset's ranges of
# its date". The schedule sets it; add it by hand to a launched run to join the chain.
FAN_OUT_TAG = "datahub/fan_out_uploads"
FAN_OUT_INTERVAL_S = 30
TODAY_PRIORITY = "10"
FAN_OUT_FIRST_LOOKBACK = timedelta(days=1)  # a newly started sensor ignores older runs

DATASET_TAG, DATE_TAG, RANGE_TAG = "datahub/dataset", "datahub/date", "datahub/range"


def run_tags(contract: Contract, day: str, range_key: str | None = None) -> dict[str, str]:
    """What a run of the chain works on, as run tags (the UI filters runs by them); an
    upload run's range is one key (`07`) or a block of them (`block_label`)."""
    return {DATASET_TAG: contract.dataset, DATE_TAG: day, **({RANGE_TAG: range_key} if range_key is not None else {})}


def block_label(first: str, last: str) -> str:
    return first if first == last else f"{first}-{last}"


def _tagged(partitions_def: dg.PartitionsDefinition, tags_for_key) -> dg.PartitionedConfig:  # noqa: ANN001
    """A job's per-partition run tags; its run config stays the launcher's (defaults otherwise)."""
    return dg.PartitionedConfig(
        partitions_def=partitions_def, run_config_for_partition_key_fn=lambda key: {}, tags_for_partition_key_fn=tags_for_key
    )


def prepare_job_name(contract: Contract) -> str:
    return f"{contract.dataset}_prepare_job"


def upload_job_name(contract: Contract) -> str:
    return f"{contract.dataset}_upload_job"


def proof_job_name(contract: Contract) -> str:
    return f"{contract.dataset}_proof_job"


def build_prepare_job(contract: Contract):  # noqa: ANN201 - an unresolved asset job
    """Extract and snapshot one date (the snapshot's checks included)."""
    return dg.define_asset_job(
        prepare_job_name(contract),
        selection=dg.AssetSelection.assets(asset_key(contract, Stage.EXTRACT), asset_key(contract, Stage.SNAPSHOT)),
        config=_tagged(daily_partitions_def(contract), lambda day: run_tags(contract, day)),
        description=f"Extract and snapshot one business date of {contract.dataset}.",
    )


def build_upload_job(contract: Contract):  # noqa: ANN201 - an unresolved asset job
    """Upload one (date, range), or a block of one date's ranges (a partition range)."""
    partitions_def = upload_partitions_def(contract)
    return dg.define_asset_job(
        upload_job_name(contract),
        selection=dg.AssetSelection.assets(asset_key(contract, Stage.UPLOADED)),
        config=_tagged(partitions_def, lambda key: run_tags(contract, *split_upload_key(partitions_def, key))),
        description=(
            f"Upload batch ranges of one business date of {contract.dataset}: one partition `<date>|<range>`, "
            "or a block of them (the daily fan-out's runs)."
        ),
    )


def build_proof_job(contract: Contract):  # noqa: ANN201 - an unresolved asset job
    """Build one date's proof of delivery (and evaluate the watching checks on it)."""
    return dg.define_asset_job(
        proof_job_name(contract),
        selection=dg.AssetSelection.assets(asset_key(contract, Stage.DELIVERED)),
        config=_tagged(daily_partitions_def(contract), lambda day: run_tags(contract, day)),
        description=f"Record the proof of delivery of one business date of {contract.dataset}, once every range is uploaded.",
    )


def build_daily_delivery_schedule(contract: Contract, prepare_job, *, start: time = DEFAULT_START) -> dg.ScheduleDefinition:  # noqa: ANN001
    """Run `prepare_job` (build_prepare_job) for the business date at `start` GMT+8: one
    schedule per contract, since one run can only hold assets of one partitions definition
    (start dates differ)."""

    @dg.schedule(
        name=f"{contract.dataset}_daily_schedule",
        cron_schedule=f"{start.minute} {start.hour} * * *",
        execution_timezone=PARTNER_TZ_NAME,
        target=prepare_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Every day at {start:%H:%M} GMT+8: extract and snapshot yesterday's {contract.dataset}; "
            f"{contract.dataset}_upload_fan_out_sensor then starts the upload runs of its batch ranges."
        ),
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        day = business_date(context.scheduled_execution_time)
        if day < contract.start_date:
            return dg.SkipReason(f"{day} is before the contract's start date {contract.start_date}")
        return dg.RunRequest(run_key=f"{contract.dataset}:{day}", partition_key=day, tags={FAN_OUT_TAG: contract.dataset})

    return _schedule


def build_upload_fan_out_sensor(contract: Contract, upload_job) -> dg.SensorDefinition:  # noqa: ANN001
    """After each successful snapshot run tagged for this dataset: one run of `upload_job`
    (build_upload_job) per (date, range). One sensor per contract, for the same reason as
    the schedule."""
    snapshot = asset_key(contract, Stage.SNAPSHOT)

    @dg.sensor(
        name=f"{contract.dataset}_upload_fan_out_sensor",
        minimum_interval_seconds=FAN_OUT_INTERVAL_S,
        target=upload_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Starts every batch range of a date once a run tagged {FAN_OUT_TAG}={contract.dataset} "
            "has built its snapshot."
        ),
    )
    def _fan_out(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # The cursor is the update time of the last run handled: SUCCESS is final, so each
        # run is seen once; the run keys make a repeat harmless anyway.
        since = (
            datetime.fromtimestamp(float(context.cursor), tz=timezone.utc)
            if context.cursor
            else datetime.now(timezone.utc) - FAN_OUT_FIRST_LOOKBACK
        )
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(
                tags={FAN_OUT_TAG: contract.dataset}, statuses=[dg.DagsterRunStatus.SUCCESS], updated_after=since
            ),
            order_by="update_timestamp",
            ascending=True,
        )
        requests = []
        for record in records:
            run = record.dagster_run
            day = run.tags.get("dagster/partition")
            built = context.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            if day is None or not any(e.asset_materialization.asset_key == snapshot for e in built):
                context.log.warning("run %s carries %s but built no snapshot partition: no fan-out", run.run_id, FAN_OUT_TAG)
                continue
            blocks = range_blocks(contract.batch_ranges, contract.upload_runs)
            requests += [
                dg.RunRequest(
                    run_key=f"{run.run_id}:{first}-{last}",
                    tags={
                        **block_partition_tags(day, first, last),
                        **run_tags(contract, day, block_label(first, last)),
                        # Today's delivery leaves the run queue before anything else.
                        "dagster/priority": TODAY_PRIORITY if is_current_day(day) else "0",
                    },
                )
                for first, last in blocks
            ]
            context.log.info(
                "fan out %s %s: %d ranges in %d upload runs", contract.dataset, day, contract.batch_ranges, len(blocks)
            )
        cursor = str(records[-1].update_timestamp.timestamp()) if records else context.cursor
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return _fan_out
