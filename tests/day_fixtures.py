"""A materialized day for the platform tests: the assets of a contracts folder, their
resources and a Dagster instance, with helpers to prepare the snapshot and upload ranges.

Used by tests/test_platform_day.py and the reliability suite (tests/test_reliability_*.py).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import yaml

from datahub_assets.contract import Contract, load_contract, load_contracts
from datahub_assets.definitions import build_dataset_assets
from datahub_assets.extract.sources import LandingFiles, SourceDatabase
from datahub_assets.extract.synthetic import BAD_ROW_KINDS
from datahub_assets.lake import DataLake
from datahub_assets.partitions import DATE_DIM, RANGE_DIM
from datahub_assets.upload.batches import range_keys
from datahub_assets.upload.delivery_db import DeliveryDatabase, Ledger, LedgerEntry, create_delivery_engine
from datahub_assets.upload.sdk import DataHubSdkResource

DAY = "2026-11-26"
REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = REPO_ROOT / "datahub_assets" / "contracts"
CONTRACT = load_contract(CONTRACTS_DIR / "user_profile.yaml")
FAST_RETRY = {"retry_base_delay_s": 0.05, "progress_every_s": 1.0}


def is_bad(frame: pl.DataFrame) -> pl.Series:
    """The generator's broken rows, found independently of the conform code."""
    mask = pl.Series([False] * frame.height)
    for col, value in BAD_ROW_KINDS:
        mask = mask | (
            frame[col].is_null() if value is None else (frame[col] == value).fill_null(False)
        )
    return mask


def write_contract(directory: Path, **changes: Any) -> Path:
    """A contracts folder holding the demo contract with some top-level keys changed
    (batch_ranges, source, ...). Same dataUuid and columns, so the registration that
    the `keys_file` fixture made with the endpoint still applies."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((CONTRACTS_DIR / "user_profile.yaml").read_text())
    raw.update(changes)
    (directory / "user_profile.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return directory


class Day:
    """A materialized day: the assets, their resources and a Dagster instance."""

    def __init__(
        self,
        tmp_path: Path,
        sdk_jar: Path,
        keys_file: Path,
        delivery_url: str,
        instance: dg.DagsterInstance,
        contracts_dir: Path = CONTRACTS_DIR,
        day: str = DAY,
    ):
        self.day = day
        self.contracts_dir = contracts_dir
        (self.contract,) = load_contracts(contracts_dir)
        self.source_url = f"sqlite:///{tmp_path / 'source.db'}"
        self.landing_dir = tmp_path / "landing"
        self.lake = DataLake(root=str(tmp_path / "lake"))
        self.delivery_url = delivery_url
        self.sdk_jar = sdk_jar
        self.keys_file = keys_file
        self.resources = {
            "lake": self.lake,
            "source_db": SourceDatabase(url=self.source_url),
            "landing": LandingFiles(url=str(self.landing_dir)),
            "sdk": DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(keys_file)),
            "delivery_db": DeliveryDatabase(url=delivery_url),
        }
        self.extract, self.snapshot, self.uploaded = build_dataset_assets(contracts_dir)
        self.instance = instance

    @property
    def range_keys(self) -> list[str]:
        return range_keys(self.contract.batch_ranges)

    def env(self) -> dict[str, str]:
        """The DATAHUB_* settings (definitions.py's EnvVars) for a run in another process."""
        return {
            "DATAHUB_DATA_DIR": self.lake.root,
            "DATAHUB_SOURCE_DB_URL": self.source_url,
            "DATAHUB_LANDING_URL": str(self.landing_dir),
            "DATAHUB_SDK_CLASSPATH": str(self.sdk_jar),
            "DATAHUB_KEYS_PATH": str(self.keys_file),
            "DATAHUB_DELIVERY_DB_URL": self.delivery_url,
        }

    def prepare(self, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            [self.extract, self.snapshot],
            partition_key=self.day,
            resources=self.resources,
            instance=self.instance,
            raise_on_error=raise_on_error,
        )
        assert result.success or not raise_on_error
        return result

    def partition_key(self, range_key: str) -> dg.MultiPartitionKey:
        return dg.MultiPartitionKey({DATE_DIM: self.day, RANGE_DIM: range_key})

    def upload_range(
        self, range_key: str, config: dict | None = None, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [self.uploaded],
            partition_key=self.partition_key(range_key),
            resources=self.resources,
            instance=self.instance,
            raise_on_error=raise_on_error,
            run_config={"ops": {self.uploaded.op.name: {"config": {**FAST_RETRY, **(config or {})}}}},
        )

    def upload_all(self, config: dict | None = None) -> list[dict]:
        """Materialize every range of the day; return each range's metadata."""
        metadata = []
        for key in self.range_keys:
            result = self.upload_range(key, config)
            assert result.success
            metadata.append(materialization_metadata(result, self.uploaded))
        return metadata

    def ledger(self) -> dict[int, LedgerEntry]:
        engine = create_delivery_engine(self.delivery_url)
        try:
            return Ledger(engine).entries(self.contract.data_uuid, self.day)
        finally:
            engine.dispose()

    def snapshot_frame(self) -> pl.DataFrame:
        return pl.read_parquet(self.lake.snapshot_path(self.contract.dataset, self.day))

    def quarantine_frame(self) -> pl.DataFrame:
        return pl.read_parquet(self.lake.quarantine_path(self.contract.dataset, self.day))


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: dg.AssetsDefinition) -> dict:
    (mat,) = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in mat.metadata.items()}


def endpoint_receipts(db_path: Path) -> list[dict]:
    """The endpoint's receipts (one per request it answered), read from its database.

    Read-only, beside the running endpoint (WAL mode allows it); receipts hold no values.
    """
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM receipts ORDER BY arrived_at")]
    finally:
        conn.close()


def contract_of(contracts_dir: Path) -> Contract:
    (contract,) = load_contracts(contracts_dir)
    return contract
