"""Watching the deliveries: failed, late and at-risk dates, per (date, batch range).

Each state is read from the Dagster instance (per-partition status of <dataset>_uploaded),
the ledger (batches acknowledged S or refused F) and the snapshot (the day's batch count),
then shown twice:
- as an asset-check result on <dataset>_uploaded (the checks are declared by
  `build_delivery_checks`; executing them by hand runs the same evaluation), and
- as an alert through the notifier, once per (dataset, date, range) and state: each sensor
  keeps what it already sent in its cursor.

"Now" comes from an injectable clock, so a test can stand at 09:00 or 10:01 GMT+8.
"""

import json
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import dagster as dg

from datahub_assets.contract import Contract
from datahub_assets.lake import DataLake
from datahub_assets.monitoring.notifier import Alert, Notifier, ranges_text
from datahub_assets.monitoring.planner import Plan, deadline_for, plan
from datahub_assets.monitoring.schedules import stage_key
from datahub_assets.partitions import DATE_DIM, PARTNER_TZ, RANGE_DIM, partner_today, upload_partitions_def
from datahub_assets.upload.batches import batch_count, batch_slice, range_keys, snapshot_row_count
from datahub_assets.upload.delivery_db import DeliveryDatabase, Ledger

NOT_FAILED_CHECK = "uploaded_not_failed"
ON_TIME_CHECK = "uploaded_on_time"
NOT_AT_RISK_CHECK = "uploaded_not_at_risk"

DEFAULT_LOOKBACK_DAYS = 3  # business dates watched: yesterday (GMT+8) and the two before
WATCH_INTERVAL_S = 120

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


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
    measured_rate: float  # batches/s acknowledged lately; 0 when nothing was measured
    cap: float

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

    def outlook(self, now: datetime) -> Plan:
        """The planner's view from `now`: the measured rate, or the cap when none was measured."""
        return plan(
            batches=self.remaining_batches or 0,
            cap=self.cap,
            start=now,
            deadline=deadline_for(self.day),
            measured_rate=self.measured_rate or self.cap,
        )


def _failed_batches_by_range(ledger: Ledger, contract: Contract, day: str, total_batches: int) -> dict[str, int]:
    keys = range_keys(contract.batch_ranges)
    starts = [batch_slice(i, len(keys), total_batches).start for i in range(len(keys))]
    by_range: dict[str, int] = {}
    for number, entry in ledger.entries(contract.data_uuid, day).items():
        if entry.status == "F" and number < total_batches:
            # The last range starting at or before the batch holds it (empty ranges share starts).
            key = keys[bisect_right(starts, number) - 1]
            by_range[key] = by_range.get(key, 0) + 1
    return by_range


def _day_batches(lake: DataLake, dataset: str, day: str) -> int | None:
    path = lake.snapshot_path(dataset, day)
    return batch_count(snapshot_row_count(path)) if path.exists() else None


def read_day_progress(
    instance: dg.DagsterInstance, contract: Contract, day: str, *, ledger: Ledger, lake: DataLake, cap: float
) -> DayProgress:
    keys = tuple(range_keys(contract.batch_ranges))
    key_of = {dg.MultiPartitionKey({DATE_DIM: day, RANGE_DIM: k}): k for k in keys}
    status = (
        instance.get_status_by_partition(stage_key(contract, "uploaded"), list(key_of), upload_partitions_def(contract))
        or {}
    )
    counts = ledger.status_counts(contract.data_uuid, day)
    total = _day_batches(lake, contract.dataset, day)
    estimate = None
    if total is None:
        # Before the snapshot exists, the day before's size is the best guess of the work.
        estimate = _day_batches(lake, contract.dataset, (date.fromisoformat(day) - timedelta(days=1)).isoformat())
    # Only a day with F rows pays for reading its ledger rows; uploads read the snapshot,
    # so F rows imply one exists.
    failed = _failed_batches_by_range(ledger, contract, day, total) if counts.get("F") and total is not None else {}
    return DayProgress(
        day=day,
        range_keys=keys,
        materialized=frozenset(k for pk, k in key_of.items() if status.get(pk) == dg.AssetPartitionStatus.MATERIALIZED),
        runs_failed=frozenset(k for pk, k in key_of.items() if status.get(pk) == dg.AssetPartitionStatus.FAILED),
        batches_failed=failed,
        total_batches=total if total is not None else estimate,
        total_is_estimate=total is None and estimate is not None,
        acked_batches=counts.get("S", 0),
        measured_rate=ledger.acked_rate(contract.data_uuid, day),
        cap=cap,
    )


def watched_days(contract: Contract, now: datetime, lookback_days: int) -> list[str]:
    """Yesterday in GMT+8 (the delivery due today) and the dates before it, newest first."""
    yesterday = partner_today(now) - timedelta(days=1)
    days = [(yesterday - timedelta(days=i)).isoformat() for i in range(lookback_days)]
    return [d for d in days if d >= contract.start_date]


def read_watched_days(
    instance: dg.DagsterInstance, contract: Contract, now: datetime, *,
    delivery_db: DeliveryDatabase, lake: DataLake, lookback_days: int,
) -> list[DayProgress]:
    ledger = delivery_db.ledger()
    return [
        read_day_progress(instance, contract, day, ledger=ledger, lake=lake, cap=delivery_db.cap_per_second)
        for day in watched_days(contract, now, lookback_days)
    ]


@dataclass(frozen=True)
class Finding:
    """One business date in a state: the ranges concerned and the numbers behind it."""

    day: str
    ranges: tuple[str, ...]
    summary: str  # numbers and dates only
    numbers: Mapping[str, float]


def failed_finding(p: DayProgress, now: datetime) -> Finding | None:
    ranges = tuple(sorted(p.runs_failed | set(p.batches_failed)))
    if not ranges:
        return None
    batches = sum(p.batches_failed.values())
    return Finding(
        p.day,
        ranges,
        f"{len(ranges)} of {len(p.range_keys)} ranges failed: {len(p.runs_failed)} failed runs, {batches} batches refused (F)",
        {"ranges_failed": len(ranges), "runs_failed": len(p.runs_failed), "batches_failed": batches},
    )


def late_finding(p: DayProgress, now: datetime) -> Finding | None:
    deadline = deadline_for(p.day)
    if now < deadline or p.complete:
        return None
    ranges = p.missing_ranges
    minutes = int((now - deadline).total_seconds() // 60)
    numbers = {"ranges_missing": len(ranges), "minutes_past_deadline": minutes}
    if p.remaining_batches is not None:
        numbers["batches_remaining"] = p.remaining_batches
    return Finding(
        p.day,
        ranges,
        f"{len(ranges)} of {len(p.range_keys)} ranges not delivered {minutes} min after the 10:00 GMT+8 deadline",
        numbers,
    )


def at_risk_finding(p: DayProgress, now: datetime) -> Finding | None:
    # At risk only while there is time to act; after the deadline the date is late.
    if now >= deadline_for(p.day) or p.complete or p.total_batches is None:
        return None
    outlook = p.outlook(now)
    if not outlook.at_risk:
        return None
    return Finding(
        p.day,
        p.missing_ranges,
        f"ETA {outlook.eta.astimezone(PARTNER_TZ):%H:%M} GMT+8, {-outlook.slack_s / 60:.0f} min after the deadline: "
        f"{outlook.batches} batches left at {outlook.total_rate:.2f} batches/s",
        {
            "batches_total": p.total_batches,
            "batches_remaining": outlook.batches,
            "rate_batches_per_s": round(outlook.total_rate, 3),
            "eta_s": round(outlook.duration_s, 1),
            "slack_s": round(outlook.slack_s, 1),
            "total_is_estimate": int(p.total_is_estimate),
        },
    )


@dataclass(frozen=True)
class Watch:
    """One state the sensors watch for, and the asset check that shows it."""

    state: str
    check_name: str
    severity: dg.AssetCheckSeverity
    find: Callable[[DayProgress, datetime], Finding | None]
    check_description: str
    all_clear: str

    def findings(self, days: Sequence[DayProgress], now: datetime) -> list[Finding]:
        return [f for p in days if (f := self.find(p, now)) is not None]


FAILED = Watch(
    "failed", NOT_FAILED_CHECK, dg.AssetCheckSeverity.ERROR, failed_finding,
    "No upload run of a watched date failed and no batch was refused (F).",
    "No range of a watched date has failed.",
)
LATE = Watch(
    "late", ON_TIME_CHECK, dg.AssetCheckSeverity.ERROR, late_finding,
    "Every batch range of each watched date was delivered by 10:00 GMT+8 the next day.",
    "No watched date is late.",
)
AT_RISK = Watch(
    "at_risk", NOT_AT_RISK_CHECK, dg.AssetCheckSeverity.WARN, at_risk_finding,
    "At the measured rate (the cap when nothing is measured), the date due today finishes before 10:00 GMT+8.",
    "The date due today is on course for 10:00 GMT+8.",
)
WATCHES = (FAILED, LATE, AT_RISK)


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    severity: dg.AssetCheckSeverity
    description: str
    metadata: Mapping[str, float]
    fingerprint: str  # the dates and ranges flagged; the numbers alone (an ETA) change every tick

    @classmethod
    def of(cls, watch: Watch, findings: Sequence[Finding]) -> "CheckOutcome":
        fingerprint = json.dumps([[f.day, *f.ranges] for f in findings])
        if not findings:
            return cls(True, watch.severity, watch.all_clear, {"dates_flagged": 0}, fingerprint)
        newest = findings[0]  # watched days come newest first
        return cls(
            False,
            watch.severity,
            "; ".join(f"{f.day}: {f.summary} (ranges {ranges_text(f.ranges)})" for f in findings),
            {"dates_flagged": len(findings), "ranges_flagged": sum(len(f.ranges) for f in findings), **newest.numbers},
            fingerprint,
        )


def build_delivery_checks(
    contract: Contract, *, clock: Clock = utc_now, lookback_days: int = DEFAULT_LOOKBACK_DAYS
) -> dg.AssetChecksDefinition:
    """Declares the three checks on <dataset>_uploaded, so the UI shows the sensors' results.

    They are executable as well: a hand run evaluates the watched dates exactly as the
    sensors do, without notifying anyone.
    """
    uploaded = stage_key(contract, "uploaded")

    @dg.multi_asset_check(
        name=f"{contract.dataset}_delivery_checks",
        specs=[dg.AssetCheckSpec(w.check_name, asset=uploaded, description=w.check_description) for w in WATCHES],
        can_subset=True,
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, delivery_db: DeliveryDatabase, lake: DataLake
    ) -> Iterable[dg.AssetCheckResult]:
        now = clock()
        days = read_watched_days(
            context.instance, contract, now, delivery_db=delivery_db, lake=lake, lookback_days=lookback_days
        )
        for watch in WATCHES:
            if dg.AssetCheckKey(uploaded, watch.check_name) not in context.selected_asset_check_keys:
                continue
            outcome = CheckOutcome.of(watch, watch.findings(days, now))
            yield dg.AssetCheckResult(
                asset_key=uploaded, check_name=watch.check_name, passed=outcome.passed,
                severity=outcome.severity, description=outcome.description, metadata=dict(outcome.metadata),
            )

    return _checks


@dataclass
class WatchMemory:
    """A sensor's cursor: what it already sent, and the check result it last reported."""

    notified: set[tuple[str, str, str]] = field(default_factory=set)  # (dataset, date, range key)
    outcomes: dict[str, str] = field(default_factory=dict)  # dataset -> the result last reported

    @classmethod
    def from_cursor(cls, cursor: str | None) -> "WatchMemory":
        if not cursor:
            return cls()
        raw = json.loads(cursor)
        return cls({tuple(n) for n in raw["notified"]}, dict(raw["outcomes"]))

    def to_cursor(self) -> str:
        return json.dumps({"notified": sorted(self.notified), "outcomes": self.outcomes}, sort_keys=True)

    def prune(self, oldest_day: str) -> None:
        """Forget dates no longer watched: they cannot be flagged again."""
        self.notified = {n for n in self.notified if n[1] >= oldest_day}


def build_watch_sensor(
    watch: Watch, contracts: Sequence[Contract], *, clock: Clock = utc_now, lookback_days: int = DEFAULT_LOOKBACK_DAYS
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"delivery_{watch.state}_sensor",
        minimum_interval_seconds=WATCH_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Reports {watch.check_name} on each <dataset>_uploaded and alerts the notifier once per "
            f"(date, range) that is {watch.state.replace('_', ' ')}."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext, delivery_db: DeliveryDatabase, lake: DataLake, notifier: Notifier
    ) -> dg.SensorResult:
        now = clock()
        memory = WatchMemory.from_cursor(context.cursor)
        events = []
        for contract in contracts:
            days = read_watched_days(
                context.instance, contract, now, delivery_db=delivery_db, lake=lake, lookback_days=lookback_days
            )
            findings = watch.findings(days, now)
            outcome = CheckOutcome.of(watch, findings)
            # Report a result when it changes, or when a range was materialized since: the UI
            # shows a check's result only while it is newer than the asset's latest
            # materialization. Not every tick: the event log keeps every result.
            uploaded = stage_key(contract, "uploaded")
            latest = context.instance.fetch_materializations(uploaded, limit=1).records
            reported = f"{outcome.fingerprint}@{latest[0].storage_id if latest else 0}"
            if memory.outcomes.get(contract.dataset) != reported:
                # SQLite keeps a check result's time in whole seconds: a result reported in
                # the second of the latest materialization may count as older, so it is
                # reported once more on the next tick.
                settled = not latest or time.time() - latest[0].timestamp > 1.0
                memory.outcomes[contract.dataset] = reported if settled else "unsettled"
                events.append(
                    dg.AssetCheckEvaluation(
                        asset_key=uploaded, check_name=watch.check_name,
                        passed=outcome.passed, severity=outcome.severity,
                        description=outcome.description, metadata=dict(outcome.metadata),
                    )
                )
            for finding in findings:
                fresh = tuple(r for r in finding.ranges if (contract.dataset, finding.day, r) not in memory.notified)
                if not fresh:
                    continue
                channels = notifier.send(
                    Alert(watch.state, contract.dataset, finding.day, fresh, finding.summary, finding.numbers)
                )
                context.log.info(
                    "%s %s %s: %d ranges, sent to %d channels", watch.state, contract.dataset, finding.day, len(fresh), channels
                )
                memory.notified |= {(contract.dataset, finding.day, r) for r in fresh}
        memory.prune((partner_today(now) - timedelta(days=lookback_days)).isoformat())
        return dg.SensorResult(asset_events=events, cursor=memory.to_cursor())

    return _sensor


def build_watch_sensors(
    contracts: Sequence[Contract], *, clock: Clock = utc_now, lookback_days: int = DEFAULT_LOOKBACK_DAYS
) -> list[dg.SensorDefinition]:
    return [build_watch_sensor(w, contracts, clock=clock, lookback_days=lookback_days) for w in WATCHES]
