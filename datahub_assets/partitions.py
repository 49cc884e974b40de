"""Partitions shared by every dataset: daily dates in GMT+8, and date x batch range."""

from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import dagster as dg

from datahub_assets.contract import Contract
from datahub_assets.upload.batches import range_keys

PARTNER_TZ_NAME = "Asia/Shanghai"  # the partner's deadline is 10:00 GMT+8
PARTNER_TZ = ZoneInfo(PARTNER_TZ_NAME)
DATE_DIM = "date"
RANGE_DIM = "batch_range"


def daily_partitions_def(contract: Contract) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=contract.start_date, timezone=PARTNER_TZ_NAME)


def upload_partitions_def(contract: Contract) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {
            DATE_DIM: daily_partitions_def(contract),
            RANGE_DIM: dg.StaticPartitionsDefinition(range_keys(contract.batch_ranges)),
        }
    )


def split_upload_key(partitions_def: dg.MultiPartitionsDefinition, partition_key: str) -> tuple[str, str]:
    """(date, range key) of an uploaded partition; never parse the joined key by position."""
    keys = partitions_def.get_partition_key_from_str(partition_key).keys_by_dimension
    return keys[DATE_DIM], keys[RANGE_DIM]


def partner_today(now: datetime | None = None) -> date:
    return (now or datetime.now(timezone.utc)).astimezone(PARTNER_TZ).date()


def is_current_day(day: str, now: datetime | None = None) -> bool:
    """True for the delivery due today: yesterday's date (or later) in GMT+8.

    Its uploads get the limiter's priority lane; older dates are backfills.
    """
    return (partner_today(now) - date.fromisoformat(day)).days <= 1
