"""Upload runs whose worker is gone: found from their range lease, ended, and reported.

A run worker killed with its step (SIGKILL, an evicted pod, a lost machine) leaves its
run STARTED: Dagster's default launcher has no worker health check, so run monitoring
cannot see it, and the run keeps its upload pool slot. Its range lease tells: a live
uploader renews the lease every few seconds and releases it when done, so a lease that
expired unreleased belongs to a process that is gone. The sensor marks such a run
failed with that cause, frees its pool slots and sends one alert; Dagster's run retries
(`run_retries` in the instance configuration) then start it again, and the retry
resumes from the ledger.

Dagster can retry only runs launched from a code location (the UI, GraphQL, schedules,
sensors). A run started by `dagster asset materialize` has none ("Run does not have an
external job origin, unable to retry the run"), so for such a run the sensor requests
the retry itself, within the same retry budget and with the same tags and config.
"""

from collections.abc import Sequence

import dagster as dg

from datahub_assets.contract import Contract
from datahub_assets.monitoring.notifier import Alert, Notifier
from datahub_assets.partitions import (
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
    Stage,
    asset_key,
    upload_partition_key,
)
from datahub_assets.upload.lease import AbandonedLease, abandoned_leases
from datahub_assets.upload.resources import DeliveryDatabase

DEAD_RUN_INTERVAL_S = 30
GRACE_S = 30.0  # past the lease's expiry: a stalled database is not a dead worker
RETRY_NUMBER_TAG = "dagster/retry_number"
MAX_RETRIES_TAG = "dagster/max_retries"


def _next_retry_number(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The retry this run is due under the instance's run retries; None if off or spent."""
    if not instance.run_retries_enabled:
        return None
    number = int(run.tags.get(RETRY_NUMBER_TAG, "0")) + 1
    return number if number <= int(run.tags.get(MAX_RETRIES_TAG, instance.run_retries_max_retries)) else None


def retry_job_name(contract: Contract) -> str:
    return f"{contract.dataset}_upload_retry"


def _retry_job(contract: Contract):  # noqa: ANN202 - an unresolved asset job
    """The job of the sensor's retries: one per contract, since each contract's uploaded
    asset has its own partitions (one job cannot hold several)."""
    return dg.define_asset_job(
        retry_job_name(contract),
        selection=dg.AssetSelection.assets(asset_key(contract, Stage.UPLOADED)).without_checks(),
        description=f"Retries, requested by dead_upload_run_sensor, of {contract.dataset} upload runs Dagster cannot retry.",
    )


def _retry_request(run: dg.DagsterRun, number: int, lease: AbandonedLease, contract: Contract) -> dg.RunRequest:
    """The retry Dagster would start, for a run it cannot retry: same partitions (one range
    or a block of them), config and tags."""
    kept_dagster_tags = ("dagster/priority", MAX_RETRIES_TAG, PARTITION_RANGE_START_TAG, PARTITION_RANGE_END_TAG)
    kept = {k: v for k, v in run.tags.items() if not k.startswith("dagster/") or k in kept_dagster_tags}
    block = PARTITION_RANGE_START_TAG in kept
    return dg.RunRequest(
        job_name=retry_job_name(contract),
        run_key=f"{run.run_id}:retry",
        partition_key=None if block else upload_partition_key(lease.day, lease.range_key),
        run_config=run.run_config,
        tags={
            **kept,
            "dagster/parent_run_id": run.run_id,
            "dagster/root_run_id": run.root_run_id or run.run_id,
            RETRY_NUMBER_TAG: str(number),
        },
    )


def build_dead_run_sensor(contracts: Sequence[Contract], *, grace_s: float = GRACE_S) -> dg.SensorDefinition:
    by_uuid = {c.data_uuid: c for c in contracts}

    @dg.sensor(
        name="dead_upload_run_sensor",
        # The runs it may request: retries of CLI-launched upload runs.
        jobs=[_retry_job(c) for c in contracts],
        minimum_interval_seconds=DEAD_RUN_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Fails upload runs whose worker is gone (their range lease expired unreleased), frees their "
            "pool slots and alerts once; run retries then resume them from the ledger."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext, delivery_db: DeliveryDatabase, notifier: Notifier
    ) -> dg.SensorResult | dg.SkipReason:
        started = context.instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        runs = {r.dagster_run.run_id: r.dagster_run for r in started}
        # Only upload runs hold range leases.
        dead = [
            lease
            for lease in abandoned_leases(delivery_db.engine(), list(runs))
            if lease.silent_s > grace_s and lease.data_uuid in by_uuid
        ]
        retries = []
        for lease in dead:
            run, contract = runs[lease.run_id], by_uuid[lease.data_uuid]
            silent = int(lease.silent_s)
            number = _next_retry_number(context.instance, run)
            if number is not None and run.remote_job_origin is None:
                retries.append(_retry_request(run, number, lease, contract))
            then = (
                "it is retried and resumes from the ledger"
                if number is not None
                else "run retries are off or spent: launch the range again, it resumes from the ledger"
            )
            context.instance.report_run_failed(
                run,
                message=(
                    f"the worker of range {lease.range_key} of {lease.day} is gone: its lease expired "
                    f"{silent} s ago unrenewed. Marked failed; {then}."
                ),
            )
            context.instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            alert = Alert(
                "worker_gone", contract.dataset, lease.day, (lease.range_key,),
                f"the upload run's worker is gone (its lease expired {silent} s ago unrenewed); the run was "
                f"marked failed and {then}: nothing is lost or sent twice",
                {"seconds_silent": silent},
            )
            # Once per run: a failed run is not seen again, so a refusing channel is logged.
            for channel in notifier.channels:
                try:
                    notifier.send(alert, channel)
                except Exception as error:  # noqa: BLE001 - the other channels still get it
                    context.log.error("worker_gone alert not sent to %s: %s", channel, error.__class__.__name__)
            context.log.info("failed a run whose worker is gone: %s %s range %s", contract.dataset, lease.day, lease.range_key)
        if not dead:
            return dg.SkipReason(f"{len(runs)} runs started, none an upload whose worker is gone")
        return dg.SensorResult(run_requests=retries)

    return _sensor
