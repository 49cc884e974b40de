"""A whole day through extract -> snapshot -> every uploaded range, against the real
endpoint, the stand-in SDK in a real JVM, and both ledger backends."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa

from datahub_assets.contract import load_contract
from datahub_assets.definitions import build_dataset_assets
from datahub_assets.extract.sources import LandingFiles, SourceDatabase
from datahub_assets.extract.synthetic import BAD_ROW_KINDS, generate, write_table
from datahub_assets.lake import DataLake
from datahub_assets.partitions import DATE_DIM, RANGE_DIM
from datahub_assets.snapshot.conform import REASON
from datahub_assets.upload.batches import range_keys
from datahub_assets.upload.delivery_db import DeliveryDatabase, Ledger, create_delivery_engine
from datahub_assets.upload.sdk import DataHubSdkResource

DAY = "2026-11-26"
CONTRACTS_DIR = Path(__file__).resolve().parents[1] / "datahub_assets" / "contracts"
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


class Day:
    """A materialized day: the assets, their resources and a Dagster instance."""

    def __init__(self, tmp_path: Path, sdk_jar: Path, keys_file: Path, delivery_url: str, instance):
        self.source_url = f"sqlite:///{tmp_path / 'source.db'}"
        self.lake = DataLake(root=str(tmp_path / "lake"))
        self.delivery_url = delivery_url
        self.resources = {
            "lake": self.lake,
            "source_db": SourceDatabase(url=self.source_url),
            "landing": LandingFiles(url=str(tmp_path / "landing")),
            "sdk": DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(keys_file)),
            "delivery_db": DeliveryDatabase(url=delivery_url),
        }
        self.extract, self.snapshot, self.uploaded = build_dataset_assets(CONTRACTS_DIR)
        self.instance = instance

    def prepare(self) -> None:
        result = dg.materialize(
            [self.extract, self.snapshot],
            partition_key=DAY,
            resources=self.resources,
            instance=self.instance,
        )
        assert result.success

    def upload_all(self, config: dict | None = None) -> list[dict]:
        """Materialize every range of the day; return each range's metadata."""
        metadata = []
        for key in range_keys(CONTRACT.batch_ranges):
            result = dg.materialize(
                [self.uploaded],
                partition_key=dg.MultiPartitionKey({DATE_DIM: DAY, RANGE_DIM: key}),
                resources=self.resources,
                instance=self.instance,
                run_config={
                    "ops": {self.uploaded.op.name: {"config": {**FAST_RETRY, **(config or {})}}}
                },
            )
            assert result.success
            (mat,) = result.asset_materializations_for_node(self.uploaded.op.name)
            metadata.append({k: v.value for k, v in mat.metadata.items()})
        return metadata


@pytest.fixture
def day(tmp_path, sdk_jar, keys_file, delivery_url) -> Day:  # noqa: ANN001
    with dg.instance_for_test() as instance:
        yield Day(tmp_path, sdk_jar, keys_file, delivery_url, instance)


def test_a_whole_day_delivers_exactly_the_good_rows(day, datahub_endpoint):
    source = generate(10_000, DAY, bad_share=0.02)
    write_table(source, day.source_url)
    bad = is_bad(source)
    good_ids = source.filter(~bad)["user_id"].to_list()
    assert 150 < bad.sum() < 250  # 2% of 10,000, by the generator's hash

    day.prepare()
    uploads = day.upload_all()

    assert sum(m["batches_sent"] for m in uploads) == -(-len(good_ids) // 100)
    assert sum(m["rows_sent"] for m in uploads) == len(good_ids)
    reconciliation = datahub_endpoint.reconcile(CONTRACT.data_uuid, good_ids)
    assert reconciliation["missing"] == 0 and reconciliation["unexpected"] == 0
    assert reconciliation["stored"] == len(good_ids)

    quarantine = pl.read_parquet(day.lake.quarantine_path("user_profile", DAY))
    expected_bad = source.filter(bad)
    assert quarantine.height == expected_bad.height
    assert sorted(quarantine["user_id"].drop_nulls()) == sorted(
        expected_bad["user_id"].drop_nulls()
    )
    assert quarantine[REASON].null_count() == 0 and quarantine[REASON].str.len_chars().min() > 5

    entries = Ledger(create_delivery_engine(day.delivery_url)).entries(CONTRACT.data_uuid, DAY)
    assert len(entries) == sum(m["batches"] for m in uploads)
    assert {e.status for e in entries.values()} == {"S"}
    engine = create_delivery_engine(day.delivery_url)
    with engine.connect() as conn:
        traces = conn.execute(sa.text("select trace_id from upload_ledger")).scalars().all()
    assert all(t and t.isdigit() for t in traces) and len(set(traces)) == len(traces)

    # Rerun: nothing is sent again.
    before = datahub_endpoint.stats()
    rerun = day.upload_all()
    assert sum(m["batches_sent"] for m in rerun) == 0
    assert sum(m["batches_skipped"] for m in rerun) == len(entries)
    assert total_requests(datahub_endpoint.stats()) == total_requests(before)

    # One changed source row re-sends only the batch that holds it.
    with sa.create_engine(day.source_url).begin() as conn:
        conn.execute(
            sa.text("update user_profile set user_name = 'changed name' where user_id = :i"),
            {"i": good_ids[123]},
        )
    day.prepare()
    changed = day.upload_all()
    assert sum(m["batches_sent"] for m in changed) == 1
    assert total_requests(datahub_endpoint.stats()) == total_requests(before) + 1


def total_requests(stats: dict) -> int:
    return stats["requests"]


@pytest.mark.parametrize("delivery_url", ["sqlite"], indirect=True)
def test_ten_percent_unknown_outcomes_still_deliver_every_row(day, datahub_endpoint):
    source = generate(3_000, DAY)
    write_table(source, day.source_url)
    datahub_endpoint.faults(u_rate=0.1)
    day.prepare()
    uploads = day.upload_all()

    assert sum(m["batches_failed"] for m in uploads) == 0
    retries = sum(m["retries"] for m in uploads)
    ids = source["user_id"].to_list()
    assert datahub_endpoint.reconcile(CONTRACT.data_uuid, ids)["missing"] == 0
    entries = Ledger(create_delivery_engine(day.delivery_url)).entries(CONTRACT.data_uuid, DAY)
    assert {e.status for e in entries.values()} == {"S"}
    assert sum(e.attempts for e in entries.values()) == 30 + retries
    assert datahub_endpoint.stats()["by_code"].get("UNKNOWN_EXCEPTION", 0) == retries
