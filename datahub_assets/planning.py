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
