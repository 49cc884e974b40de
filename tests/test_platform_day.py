"""A whole day through extract -> snapshot -> every uploaded range, against the real
endpoint, the stand-in SDK in a real JVM, and both ledger backends."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa
from support import CONTRACT, DAY, Day, is_bad, write_contract

from datahub_dev.synthetic import generate, write_table
from datahub_assets.snapshot.conform import REASON
from datahub_assets.upload.ledger import Ledger
from datahub_assets.upload.resources import create_delivery_engine


RANGES = 4  # the demo contract's 32 would make each pass 32 runs, and test nothing more


@pytest.fixture
def day(tmp_path, sdk_jar, keys_file, delivery_url) -> Day:  # noqa: ANN001
    contracts = write_contract(tmp_path / "contracts", batch_ranges=RANGES)
    with dg.instance_for_test() as instance:
        yield Day(tmp_path, sdk_jar, keys_file, delivery_url, instance, contracts)


def test_a_whole_day_delivers_exactly_the_good_rows(day, datahub_endpoint):
    source = generate(10_000, DAY, bad_share=0.02)
    write_table(source, day.source_url)
    bad = is_bad(source)
    good_ids = source.filter(~bad)["user_id"].to_list()
    assert 150 < bad.sum() < 250  # 2% of 10,000, by the generator's hash

    day.prepare()
    uploads = day.upload_all()

    assert len(uploads) == RANGES
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
def test_unknown_outcomes_still_deliver_every_row(day, datahub_endpoint):
    source = generate(3_000, DAY)
    write_table(source, day.source_url)
    # Three U answers at fixed request numbers (the endpoint counts retries too).
    datahub_endpoint.faults(scripted=[{"request": n, "outcome": "U/UNKNOWN_EXCEPTION"} for n in (4, 9, 17)])
    day.prepare()
    uploads = day.upload_all()

    assert sum(m["batches_failed"] for m in uploads) == 0
    retries = sum(m["retries"] for m in uploads)
    ids = source["user_id"].to_list()
    assert datahub_endpoint.reconcile(CONTRACT.data_uuid, ids)["missing"] == 0
    entries = Ledger(create_delivery_engine(day.delivery_url)).entries(CONTRACT.data_uuid, DAY)
    assert {e.status for e in entries.values()} == {"S"}
    assert sum(e.attempts for e in entries.values()) == 30 + retries
    by_code = datahub_endpoint.stats()["by_code"]
    assert by_code.get("UNKNOWN_EXCEPTION", 0) == 3
    assert retries == 3 + by_code.get("THROTTLED", 0)
