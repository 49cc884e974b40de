"""Watching the deliveries, wired into Dagster: each rule's state per business date is
shown twice:
- as an asset-check result on <dataset>_delivered, the dates' proof of delivery (the
  checks are declared by `build_delivery_checks`; a proof run, or executing them by
  hand, runs the same evaluation without notifying anyone; upload runs never do), and
- as an alert through the notifier, once per (dataset, date, range), state and channel:
  each sensor keeps in its cursor what each channel already received. A channel that
  refuses is logged as an error and tried again on the next tick; the others are not
  sent the alert again.

"Now" is the `watch_clock` resource's time, which configuration can freeze, so a test or
a rehearsal can stand at 09:00 or 10:01 GMT+8.

Why one result per check over the watched dates, not one per date: Dagster 1.13 has
partitioned asset checks (a preview), but stores a sensor's result (a result outside any
run) under one key per check and partition, so a date's result could be reported once
and never updated. Each date's final verdict is therefore recorded by its proof of
delivery, as metadata per date (`delivered_by_deadline`, `slack_at_completion_s`,
`batches_refused_F`), which the UI plots over dates; the checks here show the watch's
current state. The delivered asset materializes once per date, not once per range, and
its run evaluates the checks for the new materialization, so the UI keeps showing them.
"""

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import dagster as dg

from datahub_assets.contract import Contract
from datahub_assets.lake import DataLake
from datahub_assets.monitoring.notifier import CHANNELS, Alert, Notifier
from datahub_assets.monitoring.progress import read_watched_days
from datahub_assets.monitoring.rules import WATCHES, CheckOutcome, Watch
from datahub_assets.monitoring.clock import WatchClock
from datahub_assets.partitions import Stage, asset_key, partner_today
from datahub_assets.upload.resources import DeliveryDatabase

DEFAULT_LOOKBACK_DAYS = 3  # business dates watched: the one due today and the two before
WATCH_INTERVAL_S = 120


def build_delivery_checks(
    contract: Contract, *, lookback_days: int = DEFAULT_LOOKBACK_DAYS
) -> dg.AssetChecksDefinition:
    """Declares the four checks on <dataset>_delivered, so the UI shows the sensors' results.

    They are executable as well: a hand run evaluates the watched dates exactly as the
    sensors do, without notifying anyone.
    """
    delivered = asset_key(contract, Stage.DELIVERED)

    @dg.multi_asset_check(
        name=f"{contract.dataset}_delivery_checks",
        specs=[dg.AssetCheckSpec(w.check_name, asset=delivered, description=w.check_description) for w in WATCHES],
        can_subset=True,
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, delivery_db: DeliveryDatabase, lake: DataLake, watch_clock: WatchClock
    ) -> Iterable[dg.AssetCheckResult]:
        now = watch_clock.now()
        days = read_watched_days(
            context.instance, contract, now, delivery_db=delivery_db, lake=lake, lookback_days=lookback_days
        )
        for watch in WATCHES:
            if dg.AssetCheckKey(delivered, watch.check_name) not in context.selected_asset_check_keys:
                continue
            outcome = CheckOutcome.of(watch, watch.findings(days, now), days)
            yield dg.AssetCheckResult(
                asset_key=delivered, check_name=watch.check_name, passed=outcome.passed,
                severity=outcome.severity, description=outcome.description, metadata=dict(outcome.metadata),
            )

    return _checks


@dataclass
class WatchMemory:
    """A sensor's cursor: what each channel already received, and the check result it last reported."""

    notified: set[tuple[str, str, str, str]] = field(default_factory=set)  # (dataset, date, range key, channel)
    outcomes: dict[str, str] = field(default_factory=dict)  # dataset -> the result last reported

    @classmethod
    def from_cursor(cls, cursor: str | None) -> "WatchMemory":
        if not cursor:
            return cls()
        raw = json.loads(cursor)
        notified = set()
        for entry in raw["notified"]:
            # A cursor written before channels were remembered: that alert reached every channel.
            notified |= {tuple(entry)} if len(entry) == 4 else {(*entry, c) for c in CHANNELS}
        return cls(notified, dict(raw["outcomes"]))

    def to_cursor(self) -> str:
        return json.dumps({"notified": sorted(self.notified), "outcomes": self.outcomes}, sort_keys=True)

    def prune(self, oldest_day: str) -> None:
        """Forget dates no longer watched: they cannot be flagged again."""
        self.notified = {n for n in self.notified if n[1] >= oldest_day}


def build_watch_sensor(
    watch: Watch, contracts: Sequence[Contract], *, lookback_days: int = DEFAULT_LOOKBACK_DAYS
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"delivery_{watch.state}_sensor",
        minimum_interval_seconds=WATCH_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Reports {watch.check_name} on each <dataset>_delivered and alerts the notifier once per "
            f"(date, range) that is {watch.state.replace('_', ' ')}."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        delivery_db: DeliveryDatabase,
        lake: DataLake,
        notifier: Notifier,
        watch_clock: WatchClock,
    ) -> dg.SensorResult:
        now = watch_clock.now()
        first_tick = not context.cursor
        memory = WatchMemory.from_cursor(context.cursor)
        events = []
        for contract in contracts:
            days = read_watched_days(
                context.instance, contract, now, delivery_db=delivery_db, lake=lake, lookback_days=lookback_days
            )
            findings = watch.findings(days, now)
            outcome = CheckOutcome.of(watch, findings, days)
            if first_tick:
                # A date nothing ever happened to before the watch began (a new deployment,
                # a new contract) is shown by the check but not alerted: nobody was meant to
                # deliver it through this platform.
                untouched = {p.day for p in days if p.untouched}
                for finding in findings:
                    if finding.day in untouched:
                        memory.notified |= {
                            (contract.dataset, finding.day, r, c) for r in finding.ranges for c in notifier.channels
                        }
                        context.log.info(
                            "%s %s %s: not alerted, nothing was started for it before the watch began",
                            watch.state, contract.dataset, finding.day,
                        )
            # Report a result when it changes, or when a proof was materialized since: the UI
            # shows a check's result only while it is newer than the asset's latest
            # materialization. Not every tick: the event log keeps every result.
            delivered = asset_key(contract, Stage.DELIVERED)
            latest = context.instance.fetch_materializations(delivered, limit=1).records
            reported = f"{outcome.fingerprint}@{latest[0].storage_id if latest else 0}"
            if memory.outcomes.get(contract.dataset) != reported:
                # SQLite keeps a check result's time in whole seconds: a result reported in
                # the second of the latest materialization may count as older, so it is
                # reported once more on the next tick.
                settled = not latest or time.time() - latest[0].timestamp > 1.0
                memory.outcomes[contract.dataset] = reported if settled else "unsettled"
                events.append(
                    dg.AssetCheckEvaluation(
                        asset_key=delivered, check_name=watch.check_name,
                        passed=outcome.passed, severity=outcome.severity,
                        description=outcome.description, metadata=dict(outcome.metadata),
                    )
                )
            for finding in findings:
                for channel in notifier.channels:
                    fresh = tuple(
                        r for r in finding.ranges if (contract.dataset, finding.day, r, channel) not in memory.notified
                    )
                    if not fresh:
                        continue
                    alert = Alert(watch.state, contract.dataset, finding.day, fresh, finding.summary, finding.numbers)
                    try:
                        notifier.send(alert, channel)
                    except Exception as error:  # noqa: BLE001  (any refusal: the next tick tries again)
                        # The class only: a message could quote the webhook URL, a secret.
                        context.log.error(
                            "%s %s %s: %s refused the alert (%s); sending again next tick",
                            watch.state, contract.dataset, finding.day, channel, type(error).__name__,
                        )
                        continue
                    context.log.info(
                        "%s %s %s: %d ranges sent to %s", watch.state, contract.dataset, finding.day, len(fresh), channel
                    )
                    memory.notified |= {(contract.dataset, finding.day, r, channel) for r in fresh}
        memory.prune((partner_today(now) - timedelta(days=lookback_days)).isoformat())
        return dg.SensorResult(asset_events=events, cursor=memory.to_cursor())

    return _sensor


def build_watch_sensors(
    contracts: Sequence[Contract], *, lookback_days: int = DEFAULT_LOOKBACK_DAYS
) -> list[dg.SensorDefinition]:
    return [build_watch_sensor(w, contracts, lookback_days=lookback_days) for w in WATCHES]
