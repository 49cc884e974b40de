"""The deadline planner: from the work left, the cap and the measured rate, when will
the day be done, and how much slack is left before 10:00 GMT+8?

One function serves the CLI, the upload metadata and the at-risk sensor.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from datahub_assets.partitions import PARTNER_TZ
from datahub_assets.upload.batches import batch_count

DEADLINE = time(10, 0)  # GMT+8, on the day after the business date


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


def deadline_for(day: str) -> datetime:
    """The business date `day` is due at 10:00 GMT+8 on the next calendar day."""
    return datetime.combine(date.fromisoformat(day) + timedelta(days=1), DEADLINE, tzinfo=PARTNER_TZ)


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


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    sign = "-" if seconds < 0 else ""
    m = int(abs(seconds)) // 60
    return f"{sign}{m // 60} h {m % 60:02d} min"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plan a day's upload against the 10:00 GMT+8 deadline.")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--cap", type=float, default=20.0, help="partner cap, batches/s across all machines")
    parser.add_argument("--machines", "-N", type=int, default=1)
    parser.add_argument("--rate-per-machine", "-M", type=float, help="batches/s one machine sends (skips latency)")
    parser.add_argument("--latency-ms", type=float, default=150.0)
    parser.add_argument("--in-flight", type=int, default=8, help="requests in flight per machine")
    parser.add_argument("--start", default="06:00", help="HH:MM GMT+8 on the delivery morning")
    parser.add_argument("--date", default=None, help="business date (default: yesterday in GMT+8)")
    args = parser.parse_args(argv)

    day = args.date or str(datetime.now(PARTNER_TZ).date() - timedelta(days=1))
    deadline = deadline_for(day)
    hh, mm = (int(x) for x in args.start.split(":"))
    start = datetime.combine(deadline.date(), time(hh, mm), tzinfo=PARTNER_TZ)
    measured = args.machines * args.rate_per_machine if args.rate_per_machine else None
    p = plan(
        batches=batch_count(args.rows), cap=args.cap, start=start, deadline=deadline, machines=args.machines,
        in_flight_per_machine=args.in_flight, latency_s=args.latency_ms / 1000, measured_rate=measured,
    )
    print(f"batches            {p.batches}")
    print(f"N*M                {args.machines} x {p.rate_per_machine:.2f} = {p.total_rate:.2f} batches/s (cap {args.cap:g})")
    print(f"duration           {_fmt(p.duration_s)} ({p.duration_s / 3600:.2f} h)")
    print(f"start              {start:%Y-%m-%d %H:%M} GMT+8")
    print(f"ETA                {p.eta:%Y-%m-%d %H:%M} GMT+8")
    print(f"deadline           {p.deadline:%Y-%m-%d %H:%M} GMT+8")
    print(f"slack              {_fmt(p.slack_s)}{'  LATE' if p.at_risk else ''}")


if __name__ == "__main__":
    main()
