"""<dataset>_uploaded: the day's batches delivered to Alipay+ DataHub, per (date, batch range)."""

from datetime import datetime, timezone

import dagster as dg

from datahub_assets.contract import Contract
from datahub_assets.lake import DataLake
from datahub_assets.partitions import (
    DATE_DIM,
    Stage,
    asset_name,
    batch_count,
    batch_slice,
    deadline_for,
    is_current_day,
    range_keys,
    split_upload_key,
    upload_partitions_def,
)
from datahub_assets.planning import plan
from datahub_assets.upload.batches import read_batches, snapshot_row_count
from datahub_assets.upload.outcome import BatchStatus
from datahub_assets.upload.resources import DeliveryDatabase
from datahub_assets.upload.sdk import DataHubSdkResource
from datahub_assets.upload.sender import RangeSender, RetryPolicy

UPLOAD_POOL = "datahub_upload"


class UploadConfig(dg.Config):
    threads: int = 8  # requests in flight from this run; the limiter holds the global cap
    max_attempts: int = 8  # per batch and run, for U outcomes and SDK exceptions
    retry_base_delay_s: float = 1.0
    progress_every_s: float = 10.0


def build_uploaded_asset(contract: Contract, snapshot: dg.AssetsDefinition) -> dg.AssetsDefinition:
    partitions_def = upload_partitions_def(contract)
    keys = range_keys(contract.batch_ranges)

    @dg.asset(
        name=asset_name(contract, Stage.UPLOADED),
        group_name=contract.dataset,
        partitions_def=partitions_def,
        deps=[
            dg.AssetDep(
                snapshot,
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=DATE_DIM),
            )
        ],
        kinds={"java", "alipay"},
        pool=UPLOAD_POOL,
        description=(
            f"{contract.dataset} delivered to Alipay+ DataHub (dataUuid in {contract.path.name}). "
            f"Each partition sends one of {contract.batch_ranges} contiguous ranges of the day's "
            "100-row batches through the partner's SDK, under the global cap; the ledger makes "
            "reruns send only what is not yet acknowledged."
        ),
    )
    def _uploaded(
        context: dg.AssetExecutionContext,
        config: UploadConfig,
        lake: DataLake,
        sdk: DataHubSdkResource,
        delivery_db: DeliveryDatabase,
    ) -> dg.MaterializeResult:
        day, range_key = split_upload_key(partitions_def, context.partition_key)
        snapshot_path = lake.snapshot_path(contract.dataset, day)
        if not snapshot_path.exists():
            raise dg.Failure(f"no snapshot of {contract.dataset} for {day}: materialize {contract.dataset}_snapshot first")
        total_batches = batch_count(snapshot_row_count(snapshot_path))
        numbers = batch_slice(keys.index(range_key), len(keys), total_batches)
        batches = read_batches(snapshot_path, numbers)
        ledger = delivery_db.ledger()

        sender = RangeSender(
            client=sdk,
            ledger=ledger,
            limiter=delivery_db.limiter(),
            data_uuid=contract.data_uuid,
            day=day,
            priority=is_current_day(day),
            threads=config.threads,
            retry=RetryPolicy(max_attempts=config.max_attempts, base_delay_s=config.retry_base_delay_s),
            log=context.log,
            progress_every_s=config.progress_every_s,
        )
        context.log.info(
            "range %s of %s: batches %d..%d of %d", range_key, day, numbers.start, numbers.stop - 1, total_batches
        )
        report = sender.send(batches)

        # The day's outlook from the whole ledger (every range, every machine) at its
        # measured rate: the same arithmetic as the planner CLI and the at-risk sensor.
        remaining = total_batches - ledger.status_counts(contract.data_uuid, day).get(BatchStatus.SUCCESS, 0)
        day_plan = plan(
            batches=remaining,
            cap=delivery_db.cap_per_second,
            start=datetime.now(timezone.utc),
            deadline=deadline_for(day),
            measured_rate=ledger.acked_rate(contract.data_uuid, day) or delivery_db.cap_per_second,
        )
        metadata = {
            "first_batch": numbers.start,
            "last_batch": numbers.stop - 1,
            "batches": report.batches_total,
            "batches_skipped": report.batches_skipped,
            "batches_sent": report.batches_sent,
            "batches_failed": report.batches_failed,
            "rows_sent": report.rows_sent,
            "attempts": report.attempts,
            "retries": report.retries,
            "throttled": report.throttled,
            "seconds": round(report.seconds, 3),
            "rows_per_s": round(report.rows_per_s, 1),
            "day_batches_total": total_batches,
            "day_batches_remaining": remaining,
            "day_eta_s": round(day_plan.duration_s, 1),
            "day_slack_s": round(day_plan.slack_s, 1),
        }
        if report.batches_failed:
            codes = ", ".join(f"{code} x{n}" for code, n in sorted(report.failed_codes.items()))
            raise dg.Failure(
                description=(
                    f"{report.batches_failed} of {report.batches_total} batches of range {range_key} ({day}) "
                    f"did not succeed: {codes}. The other batches were sent; see the ledger for traceIds."
                ),
                metadata={**metadata, "failed_batch_numbers": dg.MetadataValue.json(sorted(report.failed_batches))},
            )
        return dg.MaterializeResult(metadata=metadata)

    return _uploaded
