"""The partner's calendar: business dates in GMT+8, the 10:00 deadline, batch ranges and
the partitions and asset keys built from them.

A day's snapshot is sorted by id, so batch i is rows [100 i, 100 i + 100) on every run.
Each day's batches are cut into a fixed number of contiguous ranges; a range key is the
zero-padded range number ("00".."31"), and its slice depends only on the day's batch
count. Never one partition per batch: 250k partitions a day would sink the UI.

An uploaded partition key reads date first, `2026-11-29|31`: Dagster orders the
dimensions of a multi-partition by name, and "date" sorts before "range".
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from enum import Enum
from zoneinfo import ZoneInfo

import dagster as dg

from datahub_assets.contract import Contract

PARTNER_TZ_NAME = "Asia/Shanghai"  # the partner's deadline is 10:00 GMT+8
PARTNER_TZ = ZoneInfo(PARTNER_TZ_NAME)
DEADLINE = time(10, 0)  # GMT+8, on the day after the business date
BATCH_ROWS = 100  # the partner's batch size

# Dagster's tags for a run over a range of partitions (not exported by name): the
# cartesian product of each dimension's range, here one date's block of ranges.
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

DATE_DIM = "date"
RANGE_DIM = "range"  # sorts after DATE_DIM, so keys read `<date>|<range>`


class Stage(str, Enum):
    """A dataset's assets, in order: each contract gives one chain of the four."""

    EXTRACT = "extract"
    SNAPSHOT = "snapshot"
    UPLOADED = "uploaded"
    DELIVERED = "delivered"  # the date's proof of delivery, once every range is uploaded


def asset_key(contract: Contract, stage: Stage) -> dg.AssetKey:
    return dg.AssetKey(asset_name(contract, stage))


def asset_name(contract: Contract, stage: Stage) -> str:
    return f"{contract.dataset}_{stage.value}"


# --- dates -------------------------------------------------------------------------


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def partner_today(now: datetime | None = None) -> date:
    return (now or utc_now()).astimezone(PARTNER_TZ).date()


def business_date(now: datetime | None = None) -> str:
    """The date being delivered: yesterday in GMT+8."""
    return (partner_today(now) - timedelta(days=1)).isoformat()


def previous_date(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def deadline_for(day: str) -> datetime:
    """The business date `day` is due at 10:00 GMT+8 on the next calendar day."""
    return datetime.combine(date.fromisoformat(day) + timedelta(days=1), DEADLINE, tzinfo=PARTNER_TZ)


def is_current_day(day: str, now: datetime | None = None) -> bool:
    """True for the delivery due today: the business date (or later).

    Its uploads get the limiter's priority lane; older dates are backfills.
    """
    return day >= business_date(now)


# --- batches and ranges ------------------------------------------------------------


def batch_count(row_count: int) -> int:
    return -(-row_count // BATCH_ROWS)


def range_keys(range_count: int) -> list[str]:
    width = len(str(range_count - 1))
    return [str(k).zfill(width) for k in range(range_count)]


def batch_slice(range_index: int, range_count: int, total_batches: int) -> range:
    """The batch numbers of one range: contiguous, disjoint, and covering every batch."""
    if not 0 <= range_index < range_count:
        raise ValueError(f"range {range_index} outside 0..{range_count - 1}")
    return range(range_index * total_batches // range_count, (range_index + 1) * total_batches // range_count)


def range_blocks(range_count: int, runs: int) -> list[tuple[str, str]]:
    """The first and last range key of each upload run of a date: `runs` contiguous blocks
    (fewer if there are fewer ranges), sizes differing by one at most."""
    keys = range_keys(range_count)
    runs = min(runs, range_count)
    cuts = [k * range_count // runs for k in range(runs + 1)]
    return [(keys[cuts[k]], keys[cuts[k + 1] - 1]) for k in range(runs)]


# --- partitions --------------------------------------------------------------------


def daily_partitions_def(contract: Contract) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=contract.start_date, timezone=PARTNER_TZ_NAME)


def upload_partitions_def(contract: Contract) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {
            DATE_DIM: daily_partitions_def(contract),
            RANGE_DIM: dg.StaticPartitionsDefinition(range_keys(contract.batch_ranges)),
        }
    )


def upload_partition_key(day: str, range_key: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({DATE_DIM: day, RANGE_DIM: range_key})


def block_partition_tags(day: str, first: str, last: str) -> dict[str, str]:
    """The run tags that make a run cover ranges first..last of `day` (a partition range)."""
    return {
        PARTITION_RANGE_START_TAG: str(upload_partition_key(day, first)),
        PARTITION_RANGE_END_TAG: str(upload_partition_key(day, last)),
    }


def split_upload_key(partitions_def: dg.MultiPartitionsDefinition, partition_key: str) -> tuple[str, str]:
    """(date, range key) of an uploaded partition; never parse the joined key by position."""
    keys = partitions_def.get_partition_key_from_str(partition_key).keys_by_dimension
    return keys[DATE_DIM], keys[RANGE_DIM]
