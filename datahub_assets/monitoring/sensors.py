"""Watching the deliveries, wired into Dagster: each rule's state per business date is
shown twice:
- as a check result on that date's partition of <dataset>_delivered, while the date is
  under way (the checks are declared by the delivered asset, whose materialization
  records the date's final verdicts once it is delivered; a delivered date is left to
  it), and
- as an alert through the notifier, once per (dataset, date, range), state and channel:
  each sensor keeps in its cursor what each channel already received. A channel that
  refuses is logged as an error and tried again on the next tick; the others are not
  sent the alert again.

"Now" is the `watch_clock` resource's time, which configuration can freeze, so a test or
a rehearsal can stand at 09:00 or 10:01 GMT+8.
"""

import json
from collections.abc import Sequence
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


@dataclass
class WatchMemory:
    """A sensor's cursor: what each channel already received, and the check result it last reported."""

    notified: set[tuple[str, str, str, str]] = field(default_factory=set)  # (dataset, date, range key, channel)
    outcomes: dict[str, str] = field(default_factory=dict)  # "dataset/date" -> the result last reported

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
        self.outcomes = {k: v for k, v in self.outcomes.items() if k.partition("/")[2] >= oldest_day}


def build_watch_sensor(
    watch: Watch, contracts: Sequence[Contract], *, lookback_days: int = DEFAULT_LOOKBACK_DAYS
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"delivery_{watch.state}_sensor",
        minimum_interval_seconds=WATCH_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Reports {watch.check_name} per date on each <dataset>_delivered and alerts the notifier once "
            f"per (date, range) that is {watch.state.replace('_', ' ')}."
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
            # Each date's result, on its partition of the delivered asset, when it changes:
            # the event log keeps every result. A delivered date is its proof's to judge.
            delivered = asset_key(contract, Stage.DELIVERED)
            by_day = {f.day: f for f in findings}
            for p in days:
                reported = f"{contract.dataset}/{p.day}"
                if p.complete:
                    memory.outcomes.pop(reported, None)
                    continue
                outcome = CheckOutcome.of(watch, p, by_day.get(p.day))
                if memory.outcomes.get(reported) != outcome.fingerprint:
                    memory.outcomes[reported] = outcome.fingerprint
                    events.append(
                        dg.AssetCheckEvaluation(
                            asset_key=delivered, check_name=watch.check_name, partition=p.day,
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
