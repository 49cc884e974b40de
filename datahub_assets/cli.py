"""The command-line tools: `datahub-plan` (the deadline arithmetic) and `datahub-schema`
(a contract's schema as the partner's toolkit registers it)."""

from __future__ import annotations

import argparse
import json
import math
from datetime import date, datetime, time, timedelta
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


def _positive(kind: type) -> object:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be more than 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _clock_time(text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day (HH:MM)") from None


def _iso_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def plan_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plan a day's upload against the 10:00 GMT+8 deadline.")
    parser.add_argument("--rows", type=_positive(int), required=True)
    parser.add_argument("--cap", type=_positive(float), default=20.0, help="partner cap, batches/s across all machines")
    parser.add_argument("--machines", "-N", type=_positive(int), default=1)
    parser.add_argument(
        "--rate-per-machine", "-M", type=_positive(float), help="batches/s one machine sends (skips latency)"
    )
    parser.add_argument("--latency-ms", type=_positive(float), default=150.0)
    parser.add_argument("--in-flight", type=_positive(int), default=8, help="requests in flight per machine")
    parser.add_argument("--start", type=_clock_time, default=time(6, 0), help="HH:MM GMT+8 on the delivery morning")
    parser.add_argument("--date", type=_iso_date, default=None, help="business date (default: yesterday in GMT+8)")
    args = parser.parse_args(argv)
    n, m = args.machines, args.rate_per_machine
    if m is not None and n * m > args.cap:
        parser.error(
            f"N·M = {n} x {m:g} = {n * m:g} batches/s is over the partner's cap of {args.cap:g} across all "
            f"machines: use -M {math.floor(args.cap / n * 100) / 100:g} with {n} machines, or fewer machines"
        )

    day = args.date or business_date()
    deadline = deadline_for(day)
    start = datetime.combine(deadline.date(), args.start, tzinfo=PARTNER_TZ)
    p = plan(
        batches=batch_count(args.rows), cap=args.cap, start=start, deadline=deadline, machines=n,
        in_flight_per_machine=args.in_flight, latency_s=args.latency_ms / 1000,
        measured_rate=n * m if m is not None else None,
    )
    capped = "" if m is not None or n * p.rate_per_machine <= args.cap else ", held to the cap by the limiter"
    print(f"batches            {p.batches}")
    print(f"N*M                {n} x {p.rate_per_machine:.2f} = {p.total_rate:.2f} batches/s (cap {args.cap:g}{capped})")
    print(f"duration           {_fmt(p.duration_s)} ({p.duration_s / 3600:.2f} h)")
    print(f"start              {start:%Y-%m-%d %H:%M} GMT+8")
    print(f"ETA                {p.eta:%Y-%m-%d %H:%M} GMT+8")
    print(f"deadline           {p.deadline:%Y-%m-%d %H:%M} GMT+8")
    print(f"latest start       {p.deadline - timedelta(seconds=p.duration_s):%Y-%m-%d %H:%M} GMT+8 (to finish by the deadline)")
    print(f"slack              {_fmt(p.slack_s)}{'  LATE' if p.at_risk else ''}")


def schema_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print a data contract's schema as JSON, for the key toolkit.")
    parser.add_argument("contract", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(load_contract(args.contract).partner_schema(), indent=2))
