"""Upload runs whose worker is gone: found from their range lease, ended, and reported.

A run worker killed with its step (SIGKILL, an evicted pod, a lost machine) leaves its
run STARTED: Dagster's default launcher has no worker health check, so run monitoring
cannot see it, and the run keeps its upload pool slot. Its range lease tells: a live
uploader renews the lease every few seconds and releases it when done, so a lease that
expired unreleased belongs to a process that is gone. The sensor marks such a run
failed with that cause, frees its pool slots and sends one alert; Dagster's run retries
(`run_retries` in the instance configuration) then start it again, and the retry
resumes from the ledger.
"""

from collections.abc import Sequence

import dagster as dg

from datahub_assets.contract import Contract
from datahub_assets.monitoring.notifier import Alert, Notifier
from datahub_assets.upload.lease import abandoned_leases
from datahub_assets.upload.resources import DeliveryDatabase

DEAD_RUN_INTERVAL_S = 30
GRACE_S = 30.0  # past the lease's expiry: a stalled database is not a dead worker


def build_dead_run_sensor(contracts: Sequence[Contract], *, grace_s: float = GRACE_S) -> dg.SensorDefinition:
    by_uuid = {c.data_uuid: c for c in contracts}

    @dg.sensor(
        name="dead_upload_run_sensor",
        minimum_interval_seconds=DEAD_RUN_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Fails upload runs whose worker is gone (their range lease expired unreleased), frees their "
            "pool slots and alerts once; run retries then resume them from the ledger."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext, delivery_db: DeliveryDatabase, notifier: Notifier
    ) -> dg.SkipReason | None:
        started = context.instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        runs = {r.dagster_run.run_id: r.dagster_run for r in started}
        # Only upload runs hold range leases.
        dead = [
            lease
            for lease in abandoned_leases(delivery_db.engine(), list(runs))
            if lease.silent_s > grace_s and lease.data_uuid in by_uuid
        ]
        for lease in dead:
            run, contract = runs[lease.run_id], by_uuid[lease.data_uuid]
            silent = int(lease.silent_s)
            context.instance.report_run_failed(
                run,
                message=(
                    f"the worker of range {lease.range_key} of {lease.day} is gone: its lease expired "
                    f"{silent} s ago unrenewed. Marked failed so that run retries resume it from the ledger."
                ),
            )
            context.instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            alert = Alert(
                "worker_gone", contract.dataset, lease.day, (lease.range_key,),
                f"the upload run's worker is gone (its lease expired {silent} s ago unrenewed); the run was "
                "marked failed and is retried from the ledger: nothing is lost or sent twice",
                {"seconds_silent": silent},
            )
            # Once per run: a failed run is not seen again, so a refusing channel is logged.
            for channel in notifier.channels:
                try:
                    notifier.send(alert, channel)
                except Exception as error:  # noqa: BLE001 - the other channels still get it
                    context.log.error("worker_gone alert not sent to %s: %s", channel, error.__class__.__name__)
            context.log.info("failed a run whose worker is gone: %s %s range %s", contract.dataset, lease.day, lease.range_key)
        return None if dead else dg.SkipReason(f"{len(runs)} runs started, none an upload whose worker is gone")

    return _sensor
