"""Reading a business date's delivery: per-range status from the Dagster instance, batch
counts from the ledger, and the day's size from the snapshot in the lake."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import dagster as dg

from datahub_assets.contract import Contract
from datahub_assets.lake import DataLake
from datahub_assets.partitions import (
    Stage,
    asset_key,
    batch_count,
    batch_slice,
    business_date,
    deadline_for,
    previous_date,
    range_keys,
    upload_partition_key,
    upload_partitions_def,
)
from datahub_assets.planning import Plan, plan_rest_of_day
from datahub_assets.upload.batches import snapshot_row_count
from datahub_assets.upload.ledger import Ledger
from datahub_assets.upload.outcome import BatchStatus
from datahub_assets.upload.resources import DeliveryDatabase


@dataclass(frozen=True)
class DayProgress:
    """One business date of one dataset, as the instance, the ledger and the lake see it."""

    day: str
    range_keys: tuple[str, ...]
    materialized: frozenset[str]  # range keys whose latest materialization stands
    runs_failed: frozenset[str]  # range keys whose latest run failed
    batches_failed: Mapping[str, int]  # range key -> batches the ledger holds as F
    total_batches: int | None  # None: no snapshot yet, and none the day before either
    total_is_estimate: bool  # no snapshot yet: the day before's count stands in
    acked_batches: int  # acknowledged S in the ledger
    measured_rate: float  # batches/s acknowledged over the last minutes, after the ramp-up; 0 when they stopped
    first_acked_at: datetime | None  # the first acknowledgement; None before any
    last_acked_at: datetime | None  # the latest acknowledgement; None before any
    cap: float
    limiter_rate: float  # the rate the limiter gives out: the cap x its headroom
    superseded_by: str | None = None  # a newer date already (partly) delivered: this one will not be sent

    @property
    def complete(self) -> bool:
        every_range = len(self.materialized) == len(self.range_keys)
        every_batch = self.total_batches is not None and not self.total_is_estimate and self.acked_batches >= self.total_batches
        return every_range or every_batch

    @property
    def missing_ranges(self) -> tuple[str, ...]:
        return tuple(k for k in self.range_keys if k not in self.materialized)

    @property
    def remaining_batches(self) -> int | None:
        return None if self.total_batches is None else max(0, self.total_batches - self.acked_batches)

    @property
    def started(self) -> bool:
        return self.last_acked_at is not None

    @property
    def untouched(self) -> bool:
        """Nothing has happened for this date: no snapshot, no acknowledgement, no upload run."""
        no_snapshot = self.total_batches is None or self.total_is_estimate
        return no_snapshot and not self.started and not self.materialized and not self.runs_failed

    def outlook(self, now: datetime) -> Plan:
        """The planner's view from `now`: at the limiter's rate before sending and through
        the ramp-up, at the measured rate after it (a stall gives no ETA at all)."""
        span = None
        if self.first_acked_at is not None and self.last_acked_at is not None:
            span = (self.first_acked_at.timestamp(), self.last_acked_at.timestamp())
        return plan_rest_of_day(
            batches=self.remaining_batches or 0, now=now, deadline=deadline_for(self.day), cap=self.cap,
            limiter_rate=self.limiter_rate, acked_span=span, measured_rate=self.measured_rate,
        )

    def needed_rate(self, now: datetime) -> float:
        """Batches/s that would still finish by 10:00 GMT+8."""
        left_s = (deadline_for(self.day) - now).total_seconds()
        return (self.remaining_batches or 0) / left_s if left_s > 0 else float("inf")


def _failed_batches_by_range(ledger: Ledger, contract: Contract, day: str, total_batches: int) -> dict[str, int]:
    keys = range_keys(contract.batch_ranges)
    starts = [batch_slice(i, len(keys), total_batches).start for i in range(len(keys))]
    by_range: dict[str, int] = {}
    for number, entry in ledger.entries(contract.data_uuid, day).items():
        if entry.status is BatchStatus.FAILED and number < total_batches:
            # The last range starting at or before the batch holds it (empty ranges share starts).
            key = keys[bisect_right(starts, number) - 1]
            by_range[key] = by_range.get(key, 0) + 1
    return by_range


def _day_batches(lake: DataLake, dataset: str, day: str) -> int | None:
    path = lake.snapshot_path(dataset, day)
    return batch_count(snapshot_row_count(path)) if path.exists() else None


def read_day_progress(
    instance: dg.DagsterInstance, contract: Contract, day: str, now: datetime, *,
    ledger: Ledger, lake: DataLake, cap: float, limiter_rate: float,
) -> DayProgress:
    keys = tuple(range_keys(contract.batch_ranges))
    key_of = {upload_partition_key(day, k): k for k in keys}
    status = (
        instance.get_status_by_partition(asset_key(contract, Stage.UPLOADED), list(key_of), upload_partitions_def(contract))
        or {}
    )
    counts = ledger.status_counts(contract.data_uuid, day)
    span = ledger.acked_span(contract.data_uuid, day)
    total = _day_batches(lake, contract.dataset, day)
    estimate = None
    if total is None:
        # Before the snapshot exists, the day before's size is the best guess of the work.
        estimate = _day_batches(lake, contract.dataset, previous_date(day))
    # Only a day with F rows pays for reading its ledger rows; uploads read the snapshot,
    # so F rows imply one exists.
    failed = _failed_batches_by_range(ledger, contract, day, total) if counts.get(BatchStatus.FAILED) and total is not None else {}
    return DayProgress(
        day=day,
        range_keys=keys,
        materialized=frozenset(k for pk, k in key_of.items() if status.get(pk) == dg.AssetPartitionStatus.MATERIALIZED),
        runs_failed=frozenset(k for pk, k in key_of.items() if status.get(pk) == dg.AssetPartitionStatus.FAILED),
        batches_failed=failed,
        total_batches=total if total is not None else estimate,
        total_is_estimate=total is None and estimate is not None,
        acked_batches=counts.get(BatchStatus.SUCCESS, 0),
        measured_rate=ledger.acked_rate(contract.data_uuid, day, now=now.timestamp(), acked_span=span),
        first_acked_at=datetime.fromtimestamp(span[0], tz=timezone.utc) if span else None,
        last_acked_at=datetime.fromtimestamp(span[1], tz=timezone.utc) if span else None,
        cap=cap,
        limiter_rate=limiter_rate,
        superseded_by=ledger.newer_delivered_day(contract.data_uuid, day),
    )


def watched_days(contract: Contract, now: datetime, lookback_days: int) -> list[str]:
    """Yesterday in GMT+8 (the delivery due today) and the dates before it, newest first."""
    due = date.fromisoformat(business_date(now))
    days = [(due - timedelta(days=i)).isoformat() for i in range(lookback_days)]
    return [d for d in days if d >= contract.start_date]


def read_watched_days(
    instance: dg.DagsterInstance, contract: Contract, now: datetime, *,
    delivery_db: DeliveryDatabase, lake: DataLake, lookback_days: int,
) -> list[DayProgress]:
    ledger = delivery_db.ledger()
    return [
        read_day_progress(
            instance, contract, day, now, ledger=ledger, lake=lake, cap=delivery_db.cap_per_second, limiter_rate=delivery_db.limiter_rate
        )
        for day in watched_days(contract, now, lookback_days)
    ]


