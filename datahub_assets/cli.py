"""The command-line tools: `datahub-plan` (the deadline arithmetic) and `datahub-schema`
(a contract's schema as the partner's toolkit registers it)."""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, time
from pathlib import Path

from datahub_assets.contract import load_contract
from datahub_assets.partitions import PARTNER_TZ, batch_count, business_date, deadline_for
from datahub_assets.planning import plan


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    sign = "-" if seconds < 0 else ""
    m = int(abs(seconds)) // 60
    return f"{sign}{m // 60} h {m % 60:02d} min"


def plan_main(argv: list[str] | None = None) -> None:
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

    day = args.date or business_date()
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


def schema_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print a data contract's schema as JSON, for the key toolkit.")
    parser.add_argument("contract", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(load_contract(args.contract).partner_schema(), indent=2))
