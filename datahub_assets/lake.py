"""Where each stage's Parquet files live, one folder per dataset."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


class DataLake(dg.ConfigurableResource):
    """The local (or mounted) folder holding extracts, snapshots and quarantines."""

    root: str

    def extract_dir(self, dataset: str, day: str) -> Path:
        return Path(self.root) / dataset / "extract" / day

    def snapshot_path(self, dataset: str, day: str) -> Path:
        return Path(self.root) / dataset / "snapshot" / f"{day}.parquet"

    def quarantine_path(self, dataset: str, day: str) -> Path:
        return Path(self.root) / dataset / "quarantine" / f"{day}.parquet"
