"""The whole platform on one screen: per contract, extract -> snapshot -> uploaded;
the resources they share; schedules and sensors.

Nothing here reads the environment, opens a connection or starts a JVM: resources
take their settings through EnvVar (datahub_assets/resources.py), resolved only when a
run (or sensor) uses them.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from datahub_assets.automation.daily import build_daily_delivery_schedule, build_upload_fan_out_sensor
from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contracts
from datahub_assets.extract.assets import build_extract_asset
from datahub_assets.monitoring.dead_runs import build_dead_run_sensor
from datahub_assets.monitoring.sensors import build_delivery_checks, build_watch_sensors
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


def build_definitions(contracts_dir: Path = DEFAULT_CONTRACTS_DIR) -> dg.Definitions:
    contracts = load_contracts(contracts_dir)
    return dg.Definitions(
        assets=build_dataset_assets(contracts_dir),
        # Declares the watching checks on each <dataset>_uploaded; the sensors report them.
        asset_checks=[build_delivery_checks(c) for c in contracts],
        schedules=[build_daily_delivery_schedule(c) for c in contracts],
        sensors=[
            *(build_upload_fan_out_sensor(c) for c in contracts),
            *build_watch_sensors(contracts),
            build_dead_run_sensor(contracts),
        ],
        resources=build_resources(),
    )


defs = build_definitions()
