"""The deadline arithmetic: from the work left, the cap and the rate, when will the day
be done, and how much slack is left before 10:00 GMT+8?

One function serves the `datahub-plan` CLI, the upload metadata and the at-risk sensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from datahub_assets.partitions import PARTNER_TZ


@dataclass(frozen=True)
class Plan:
    batches: int
    machines: int
    rate_per_machine: float  # M: batches/s one machine can send
    total_rate: float  # N*M after the cap
    duration_s: float
    eta: datetime
    deadline: datetime
    slack_s: float  # negative: late

    @property
    def at_risk(self) -> bool:
        return self.slack_s < 0


def plan(
    *,
    batches: int,
    cap: float,
    start: datetime,
    deadline: datetime,
    machines: int = 1,
    in_flight_per_machine: int = 8,
    latency_s: float | None = None,
    measured_rate: float | None = None,
) -> Plan:
    """Plan the remaining batches.

    The rate is the measured one when given; otherwise each machine keeps
    `in_flight_per_machine` requests in flight at `latency_s` each (M = in flight /
    latency), and N*M is capped at the partner's cap.
    """
    if measured_rate is not None:
        total = min(measured_rate, cap)
        per_machine = total / machines
    else:
        if not latency_s:
            raise ValueError("give latency_s or measured_rate")
        per_machine = in_flight_per_machine / latency_s
        total = min(machines * per_machine, cap)
    duration = batches / total if total > 0 else math.inf
    eta = start + timedelta(seconds=duration) if math.isfinite(duration) else datetime.max.replace(tzinfo=PARTNER_TZ)
    slack = (deadline - eta).total_seconds() if math.isfinite(duration) else -math.inf
    return Plan(batches, machines, per_machine, total, duration, eta, deadline, slack)


# A day's first minute and a half: its upload runs start one after another, their JVMs
# warm up, and each run's first call goes alone. What is acknowledged meanwhile is a
# start-up transient, far below the rate the day then holds (docs/rehearsal.md), so the
# measured rate starts after RAMP_UP_S, and is used once it spans MEASURED_SPAN_S.
RAMP_UP_S = 60.0
MEASURED_SPAN_S = 30.0
# An acknowledgement this recent: the day is sending, not stalled.
SENDING_WITHIN_S = 10.0


def measured_since(acked_span: tuple[float, float] | None, now: float) -> float | None:
    """Where the measured rate of a day with these first and latest acknowledgements
    starts: after the ramp-up once there is enough past it (None before any)."""
    if acked_span is None:
        return None
    first = acked_span[0]
    return first + RAMP_UP_S if now - first >= RAMP_UP_S + MEASURED_SPAN_S else first


def rate_to_plan(*, now: float, acked_span: tuple[float, float] | None, measured_rate: float, limiter_rate: float) -> float:
    """The rate the rest of a day is planned at (epoch seconds throughout).

    Before the first acknowledgement, and through the ramp-up while acknowledgements
    come in: the limiter's rate (cap x headroom), the best the day can do and what a
    day holds once its runs are sending. After the ramp-up, or once acknowledgements
    stop: the measured rate, which a stall drives toward 0. It is never replaced by the
    cap: a stalled day is not "on course".
    """
    if acked_span is None:
        return limiter_rate
    first, last = acked_span
    ramping_up = now - first < RAMP_UP_S + MEASURED_SPAN_S
    return limiter_rate if ramping_up and now - last <= SENDING_WITHIN_S else measured_rate


def plan_rest_of_day(
    *, batches: int, now: datetime, deadline: datetime, cap: float, limiter_rate: float,
    acked_span: tuple[float, float] | None, measured_rate: float,
) -> Plan:
    """The rest of a day, planned at `rate_to_plan`: what the at-risk sensor and the upload
    metadata both show."""
    rate = rate_to_plan(now=now.timestamp(), acked_span=acked_span, measured_rate=measured_rate, limiter_rate=limiter_rate)
    return plan(batches=batches, cap=cap, start=now, deadline=deadline, measured_rate=rate)
