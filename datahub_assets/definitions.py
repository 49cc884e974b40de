"""The whole platform on one screen: per contract, extract -> snapshot -> uploaded;
the resources they share; schedules and sensors.

Nothing here reads the environment, opens a connection or starts a JVM: resources
take their settings through EnvVar, resolved only when a run (or sensor) uses them.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contracts
from datahub_assets.extract.assets import build_extract_asset
from datahub_assets.extract.sources import LandingFiles, SourceDatabase
from datahub_assets.lake import DataLake
from datahub_assets.monitoring.notifier import Notifier
from datahub_assets.monitoring.schedules import build_daily_delivery_schedule, build_upload_fan_out_sensor
from datahub_assets.monitoring.sensors import build_delivery_checks, build_watch_sensors
from datahub_assets.snapshot.assets import build_snapshot_asset
from datahub_assets.upload.assets import build_uploaded_asset
from datahub_assets.upload.delivery_db import DeliveryDatabase
from datahub_assets.upload.sdk import DataHubSdkResource


def build_dataset_assets(contracts_dir: Path) -> list[dg.AssetsDefinition]:
    assets = []
    for contract in load_contracts(contracts_dir):
        extract = build_extract_asset(contract)
        snapshot = build_snapshot_asset(contract, extract)
        assets += [extract, snapshot, build_uploaded_asset(contract, snapshot)]
    return assets


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "lake": DataLake(root=dg.EnvVar("DATAHUB_DATA_DIR")),
        "source_db": SourceDatabase(url=dg.EnvVar("DATAHUB_SOURCE_DB_URL")),
        "landing": LandingFiles(url=dg.EnvVar("DATAHUB_LANDING_URL")),
        "sdk": DataHubSdkResource(
            classpath=dg.EnvVar("DATAHUB_SDK_CLASSPATH"), keys_path=dg.EnvVar("DATAHUB_KEYS_PATH")
        ),
        "delivery_db": DeliveryDatabase(url=dg.EnvVar("DATAHUB_DELIVERY_DB_URL")),
        # Each may be set empty: an empty token/channel or URL disables that channel.
        "notifier": Notifier(
            slack_token=dg.EnvVar("DATAHUB_SLACK_TOKEN"),
            slack_channel=dg.EnvVar("DATAHUB_SLACK_CHANNEL"),
            webhook_url=dg.EnvVar("DATAHUB_ALERT_WEBHOOK_URL"),
        ),
    }


def build_definitions(contracts_dir: Path = DEFAULT_CONTRACTS_DIR) -> dg.Definitions:
    contracts = load_contracts(contracts_dir)
    return dg.Definitions(
        assets=build_dataset_assets(contracts_dir),
        # Declares the watching checks on each <dataset>_uploaded; the sensors report them.
        asset_checks=[build_delivery_checks(c) for c in contracts],
        schedules=[build_daily_delivery_schedule(c) for c in contracts],
        sensors=[*(build_upload_fan_out_sensor(c) for c in contracts), *build_watch_sensors(contracts)],
        resources=build_resources(),
    )


defs = build_definitions()
