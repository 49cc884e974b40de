"""The alert rules: which state (failed, late, at risk) a business date is in, and the
numbers behind it. Pure functions of a `DayProgress` and the time."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from datahub_assets.monitoring.notifier import ranges_text
from datahub_assets.monitoring.progress import DayProgress
from datahub_assets.partitions import PARTNER_TZ, deadline_for

# Checks on <dataset>_delivered; the watch sensors report them over the watched dates.
NOT_FAILED_CHECK = "not_failed"
ON_TIME_CHECK = "on_time"
NOT_AT_RISK_CHECK = "not_at_risk"
NOT_STALLED_CHECK = "not_stalled"
STALL_AFTER = timedelta(minutes=5)  # no acknowledgement this long while batches remain: stalled


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
        f"{len(ranges)} of {len(p.range_keys)} ranges failed: {len(p.runs_failed)} failed runs, {batches} batches "
        "refused (F). A rerun is safe: it sends only what is not acknowledged"
        + ("; refused batches are refused again until their data or keys are fixed (the ledger has the codes)" if batches else ""),
        {"ranges_failed": len(ranges), "runs_failed": len(p.runs_failed), "batches_failed": batches},
    )


def late_finding(p: DayProgress, now: datetime) -> Finding | None:
    deadline = deadline_for(p.day)
    # A superseded date is not late: sending it would overwrite a newer one.
    if now < deadline or p.complete or p.superseded_by:
        return None
    ranges = p.missing_ranges
    minutes = int((now - deadline).total_seconds() // 60)
    numbers = {"ranges_missing": len(ranges), "minutes_past_deadline": minutes}
    eta = ""
    if p.remaining_batches is not None:
        numbers["batches_remaining"] = p.remaining_batches
        outlook = p.outlook(now)
        eta = (
            f"; new ETA {outlook.eta.astimezone(PARTNER_TZ):%H:%M} GMT+8 at {outlook.total_rate:.2f} batches/s"
            if outlook.duration_s < float("inf")
            else "; no ETA: nothing is being acknowledged"
        )
        if outlook.duration_s < float("inf"):
            numbers["eta_s"] = round(outlook.duration_s, 1)
    return Finding(
        p.day,
        ranges,
        f"{len(ranges)} of {len(p.range_keys)} ranges not delivered {minutes} min after the 10:00 GMT+8 deadline{eta}",
        numbers,
    )


def at_risk_finding(p: DayProgress, now: datetime) -> Finding | None:
    if p.complete or p.superseded_by or p.total_batches is None:
        return None
    if now >= deadline_for(p.day):
        # Past the deadline the date is late, not "on course": the late rule has it.
        minutes = int((now - deadline_for(p.day)).total_seconds() // 60)
        return Finding(
            p.day, p.missing_ranges, "10:00 GMT+8 has passed: see the late alert", {"minutes_past_deadline": minutes}
        )
    outlook = p.outlook(now)
    if not outlook.at_risk:
        return None
    needed = p.needed_rate(now)
    allows = (
        f"the cap ({p.cap:g}/s) allows it: e.g. N·M = {_n_times_m(needed, p.cap)}"
        if needed <= p.cap
        else f"beyond the cap ({p.cap:g}/s): the date cannot finish by 10:00"
    )
    eta = (
        f"ETA {outlook.eta.astimezone(PARTNER_TZ):%H:%M} GMT+8, {-outlook.slack_s / 60:.0f} min after the deadline"
        if outlook.duration_s < float("inf")
        else "no ETA (nothing acknowledged lately)"
    )
    numbers = {
        "rate_needed_batches_per_s": round(needed, 3),
        "batches_total": p.total_batches,
        "batches_remaining": outlook.batches,
        "rate_batches_per_s": round(outlook.total_rate, 3),
        "total_is_estimate": int(p.total_is_estimate),
    }
    if outlook.duration_s < float("inf"):  # no ETA while nothing is acknowledged
        numbers |= {"eta_s": round(outlook.duration_s, 1), "slack_s": round(outlook.slack_s, 1)}
    return Finding(
        p.day,
        p.missing_ranges,
        f"{eta}: {outlook.batches} batches left at {outlook.total_rate:.2f} batches/s; "
        f"{needed:.2f} batches/s would finish by 10:00 and {allows}",
        numbers,
    )


def _n_times_m(rate: float, cap: float) -> str:
    """A machines x per-machine split for `rate` within the cap (M at most 5/s a machine)."""
    machines = max(1, math.ceil(rate / 5))
    return f"{machines} x {rate / machines:.2f}"


def stalled_finding(p: DayProgress, now: datetime) -> Finding | None:
    if not p.started or p.complete or p.superseded_by or not p.remaining_batches:
        return None
    silent = now - p.last_acked_at
    if silent < STALL_AFTER:
        return None
    minutes = int(silent.total_seconds() // 60)
    return Finding(
        p.day,
        p.missing_ranges,
        f"no batch acknowledged for {minutes} min while {p.remaining_batches} remain: check the upload runs "
        "and the partner endpoint",
        {"minutes_since_last_ack": minutes, "batches_remaining": p.remaining_batches},
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


_STALL_MINUTES = int(STALL_AFTER.total_seconds() // 60)
# state, check, severity, rule, what the check means, and its all-clear text.
WATCHES = FAILED, LATE, AT_RISK, STALLED = tuple(
    Watch(*spec)
    for spec in (
        ("failed", NOT_FAILED_CHECK, dg.AssetCheckSeverity.ERROR, failed_finding,
         "No upload run of a watched date failed and no batch was refused (F).",
         "No range of a watched date has failed."),
        ("late", ON_TIME_CHECK, dg.AssetCheckSeverity.ERROR, late_finding,
         "Every batch range of each watched date was delivered by 10:00 GMT+8 the next day.",
         "No watched date is late."),
        ("at_risk", NOT_AT_RISK_CHECK, dg.AssetCheckSeverity.WARN, at_risk_finding,
         "At the measured rate (the cap before sending began), the date due today finishes before 10:00 GMT+8.",
         "The date due today is on course for 10:00 GMT+8."),
        ("stalled", NOT_STALLED_CHECK, dg.AssetCheckSeverity.ERROR, stalled_finding,
         f"Once sending began, a batch was acknowledged within the last {_STALL_MINUTES} min while batches remain.",
         "No watched date is stalled."),
    )
)  # fmt: skip


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    severity: dg.AssetCheckSeverity
    description: str
    metadata: Mapping[str, float]
    fingerprint: str  # the dates and ranges flagged; the numbers alone (an ETA) change every tick

    @classmethod
    def of(cls, watch: Watch, findings: Sequence[Finding], days: Sequence[DayProgress]) -> "CheckOutcome":
        fingerprint = json.dumps([[f.day, *f.ranges] for f in findings])
        # A superseded date is never flagged late, at risk or stalled; the check says why.
        superseded = [
            f"{p.day} superseded by {p.superseded_by}: not sent, it would overwrite the newer date at the partner"
            for p in days
            if p.superseded_by and not p.complete
        ]
        counts = {"dates_superseded": len(superseded)}
        if not findings:
            return cls(
                True, watch.severity, "; ".join([watch.all_clear, *superseded]), {"dates_flagged": 0, **counts}, fingerprint
            )
        newest = findings[0]  # watched days come newest first
        return cls(
            False,
            watch.severity,
            "; ".join([*(f"{f.day}: {f.summary} (ranges {ranges_text(f.ranges)})" for f in findings), *superseded]),
            {
                "dates_flagged": len(findings),
                "ranges_flagged": sum(len(f.ranges) for f in findings),
                **counts,
                **newest.numbers,
            },
            fingerprint,
        )


