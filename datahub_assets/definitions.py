"""The whole platform on one screen: per contract, extract -> snapshot -> uploaded ->
delivered; the jobs that run them; the resources they share; schedules and sensors.

Nothing here reads the environment, opens a connection or starts a JVM: resources
take their settings through EnvVar (datahub_assets/resources.py), resolved only when a
run (or sensor) uses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg

from datahub_assets.automation.daily import (
    build_daily_delivery_schedule,
    build_prepare_job,
    build_proof_job,
    build_upload_fan_out_sensor,
    build_upload_job,
)
from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contracts
from datahub_assets.delivered.assets import build_delivered_asset, build_proof_sensor
from datahub_assets.extract.assets import build_extract_asset
from datahub_assets.monitoring.dead_runs import build_dead_run_sensor
from datahub_assets.monitoring.sensors import build_delivery_checks, build_watch_sensors
from datahub_assets.partitions import Stage, asset_key
from datahub_assets.resources import build_resources
from datahub_assets.snapshot.assets import build_snapshot_asset
from datahub_assets.upload.assets import build_uploaded_asset


def build_dataset_assets(contracts_dir: Path) -> list[dg.AssetsDefinition]:
    """Per contract, its chain in order: extract, snapshot, uploaded, delivered."""
    assets = []
    for contract in load_contracts(contracts_dir):
        extract = build_extract_asset(contract)
        snapshot = build_snapshot_asset(contract, extract)
        uploaded = build_uploaded_asset(contract, snapshot)
        assets += [extract, snapshot, uploaded, build_delivered_asset(contract, uploaded)]
    return assets


# The platform's two parts and the resources (so the secrets) each uses. One machine
# serves both from one code location (`defs`). On Kubernetes each is its own code
# location, whose run pods then get only that part's secrets (deploy/helm/values.yaml):
# preparing a day reads the sources, delivering it holds the partner keys.
Part = Literal["prepare", "deliver"]
PART_RESOURCES: dict[Part, tuple[str, ...]] = {
    "prepare": ("lake", "source_db", "landing"),
    "deliver": ("lake", "delivery_db", "sdk", "notifier", "watch_clock"),
}


def build_definitions(
    contracts_dir: Path = DEFAULT_CONTRACTS_DIR,
    parts: tuple[Part, ...] = ("prepare", "deliver"),
    **resources: dg.ConfigurableResource,
) -> dg.Definitions:
    """The definitions of the given parts: extract, snapshot, their job and schedule
    (`prepare`); uploaded, delivered and its checks, their jobs and the sensors (`deliver`).
    `resources` replace the ones configured from the environment (build_resources)."""
    contracts = load_contracts(contracts_dir)
    assets = build_dataset_assets(contracts_dir)
    prepared = {asset_key(c, stage) for c in contracts for stage in (Stage.EXTRACT, Stage.SNAPSHOT)}
    kept, checks, jobs, schedules, sensors = [], [], [], [], []
    if "prepare" in parts:
        kept += [a for a in assets if a.key in prepared]
        for contract in contracts:
            prepare_job = build_prepare_job(contract)
            jobs.append(prepare_job)
            schedules.append(build_daily_delivery_schedule(contract, prepare_job))
    if "deliver" in parts:
        kept += [a for a in assets if a.key not in prepared]
        for contract in contracts:
            upload_job = build_upload_job(contract)
            jobs += [upload_job, build_proof_job(contract)]
            sensors.append(build_upload_fan_out_sensor(contract, upload_job))
            # Declares the watching checks on <dataset>_delivered; the sensors report them.
            checks.append(build_delivery_checks(contract))
        sensors += [
            *build_watch_sensors(contracts),
            build_dead_run_sensor(contracts),
            build_proof_sensor([asset_key(c, Stage.DELIVERED) for c in contracts]),
        ]
    used = {key for part in parts for key in PART_RESOURCES[part]}
    return dg.Definitions(
        assets=kept,
        asset_checks=checks,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources={key: resource for key, resource in build_resources(**resources).items() if key in used},
    )


defs = build_definitions()
