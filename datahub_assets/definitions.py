"""The whole platform on one screen: per contract, extract -> snapshot -> uploaded;
the resources they share; schedules and sensors.

Nothing here reads the environment, opens a connection or starts a JVM: resources
take their settings through EnvVar (datahub_assets/resources.py), resolved only when a
run (or sensor) uses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg

from datahub_assets.automation.daily import build_daily_delivery_schedule, build_upload_fan_out_sensor
from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contracts
from datahub_assets.extract.assets import build_extract_asset
from datahub_assets.monitoring.dead_runs import build_dead_run_sensor
from datahub_assets.monitoring.sensors import build_delivery_checks, build_watch_sensors
from datahub_assets.partitions import Stage, asset_key
from datahub_assets.resources import build_resources
from datahub_assets.snapshot.assets import build_snapshot_asset
from datahub_assets.upload.assets import build_uploaded_asset


def build_dataset_assets(contracts_dir: Path) -> list[dg.AssetsDefinition]:
    assets = []
    for contract in load_contracts(contracts_dir):
        extract = build_extract_asset(contract)
        snapshot = build_snapshot_asset(contract, extract)
        assets += [extract, snapshot, build_uploaded_asset(contract, snapshot)]
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


def build_definitions(contracts_dir: Path = DEFAULT_CONTRACTS_DIR, parts: tuple[Part, ...] = ("prepare", "deliver")) -> dg.Definitions:
    """The definitions of the given parts: extract, snapshot and their schedule
    (`prepare`); uploaded, its checks and the sensors (`deliver`)."""
    contracts = load_contracts(contracts_dir)
    assets = build_dataset_assets(contracts_dir)
    uploaded_keys = {asset_key(c, Stage.UPLOADED) for c in contracts}
    kept, checks, schedules, sensors = [], [], [], []
    if "prepare" in parts:
        kept += [a for a in assets if a.key not in uploaded_keys]
        schedules += [build_daily_delivery_schedule(c) for c in contracts]
    if "deliver" in parts:
        kept += [a for a in assets if a.key in uploaded_keys]
        # Declares the watching checks on each <dataset>_uploaded; the sensors report them.
        checks += [build_delivery_checks(c) for c in contracts]
        sensors += [
            *(build_upload_fan_out_sensor(c) for c in contracts),
            *build_watch_sensors(contracts),
            build_dead_run_sensor(contracts),
        ]
    resources = build_resources()
    used = {key for part in parts for key in PART_RESOURCES[part]}
    return dg.Definitions(
        assets=kept,
        asset_checks=checks,
        schedules=schedules,
        sensors=sensors,
        resources={key: resource for key, resource in resources.items() if key in used},
    )


defs = build_definitions()
