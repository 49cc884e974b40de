"""Upload runs as the daemon launches them: today's ranges next to a backfill, and a day
cut into many ranges (issue 11, items 2 and 3).

Both phases run on the production-shaped platform (`datahub_dev.platform`: PostgreSQL
instance storage with the repository's dagster.yaml, the daemon and the webserver, the
local endpoint at the partner's cap with 150 +- 50 ms latency). Runs are submitted to the
run queue as the fan-out sensor and a backfill submit them, with their tags.

Phase `backfill`, 4 runs of today and the upload pool as production sizes it (one more slot, for the backfill):
- today alone: today's ranges (dagster/priority 10) on an idle platform;
- today next to a backfill: every range of the `--backfill-days` dates before today,
  tagged as a backfill's runs, is submitted first; once a backfill run is sending, today's
  ranges are submitted. Target: today's span within 1.15x of its span alone, while the
  backfill uses what today leaves.
A span runs from the first submission of today's runs to today's last acknowledgement.

Phase `day`: one date cut into `--day-ranges` ranges, sent twice on one platform: in one run per
range (the baseline), then in the fan-out's 4 runs (each a block
of ranges). Whole-day cap use = batches / (last acknowledgement - first send) /
cap (target >= 0.95), with the per-run overhead (queue, launch, resources, JVM, first call).

    .venv/bin/python bench/day_runs.py              # both phases (~15 min)
    .venv/bin/python bench/day_runs.py --small      # smaller days: a smoke run
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path

import benchlib
import sqlalchemy as sa
from benchlib import Result

from datahub_assets.partitions import BATCH_ROWS, range_blocks
from datahub_assets.upload.ledger import ledger_table
from datahub_dev.platform import Platform, PlatformSpec

CAP = 20
LATENCY = {"median": 150, "jitter": 50}  # ms, as bench/cap_use.py
TODAY_PRIORITY_TAGS = {"dagster/priority": "10"}
BACKFILL_TAGS = {"dagster/backfill": "bench-backfill", "dagster/priority": "0"}
SPAN_TARGET = 1.15
DAY_CAP_USE_TARGET = 0.95


def day_span(platform: Platform, day: str, since: float) -> dict:
    """From `since` to the day's last acknowledgement; and the day's first send."""
    t = ledger_table
    with platform.delivery_engine.connect() as conn:  # type: ignore[union-attr]
        first, last, acked = conn.execute(
            sa.select(sa.func.min(t.c.first_sent_at), sa.func.max(t.c.acked_at), sa.func.count())
            .where(t.c.day == day, t.c.status == "S")
        ).one()
    return {"first_send": first, "last_ack": last, "acked": acked, "span_s": (last or since) - since}


def acked_between(platform: Platform, days: list[str], start: float, end: float) -> int:
    t = ledger_table
    with platform.delivery_engine.connect() as conn:  # type: ignore[union-attr]
        return conn.execute(
            sa.select(sa.func.count()).where(t.c.day.in_(days), t.c.status == "S", t.c.acked_at.between(start, end))
        ).scalar_one()


def submit(platform: Platform, day: str, tags: dict) -> list[str]:
    return [platform.launch(key, day=day, tags=tags) for key in platform.range_keys()]


def wait_until_sending(platform: Platform, days: list[str], timeout_s: float = 300) -> None:
    t = ledger_table
    deadline = time.monotonic() + timeout_s
    while True:
        with platform.delivery_engine.connect() as conn:  # type: ignore[union-attr]
            if conn.execute(sa.select(sa.func.count()).where(t.c.day.in_(days), t.c.status == "S")).scalar_one() >= 20:
                return
        if time.monotonic() > deadline:
            raise SystemExit("the backfill never started sending")
        time.sleep(0.5)


def run_overheads(platform: Platform, run_ids: list[str]) -> dict:
    """Per run: queue wait (created -> started) and start-up (started -> its first send)."""
    t = ledger_table
    waits, startups = [], []
    for run_id in run_ids:
        record = platform.run_record(run_id)
        if record.start_time is None:
            continue
        waits.append(record.start_time - record.create_timestamp.timestamp())
        day, first_batch, last_batch = _range_batches(platform, platform.run(run_id))
        with platform.delivery_engine.connect() as conn:  # type: ignore[union-attr]
            first = conn.execute(
                sa.select(sa.func.min(t.c.first_sent_at)).where(t.c.day == day, t.c.batch_no.between(first_batch, last_batch))
            ).scalar_one()
        if first is not None:
            startups.append(first - record.start_time)
    return {
        "queue_wait_s_median": statistics.median(waits) if waits else None,
        "startup_s_median": statistics.median(startups) if startups else None,
        "startup_s_max": max(startups) if startups else None,
    }


def _range_batches(platform: Platform, run) -> tuple[str, int, int]:  # noqa: ANN001
    """The run's date and the first and last batch numbers of its range, or block of ranges."""
    from datahub_assets.partitions import (
        PARTITION_RANGE_END_TAG,
        PARTITION_RANGE_START_TAG,
        batch_count,
        batch_slice,
        split_upload_key,
        upload_partitions_def,
    )

    contract = platform.contract()
    partitions = upload_partitions_def(contract)
    first_key = run.tags.get(PARTITION_RANGE_START_TAG) or run.tags["dagster/partition"]
    last_key = run.tags.get(PARTITION_RANGE_END_TAG) or run.tags["dagster/partition"]
    (day, first), (_, last) = split_upload_key(partitions, first_key), split_upload_key(partitions, last_key)
    total = batch_count(len(platform.snapshot_ids(contract, day)))
    keys = platform.range_keys()
    return (
        day,
        batch_slice(keys.index(first), contract.batch_ranges, total).start,
        batch_slice(keys.index(last), contract.batch_ranges, total).stop - 1,
    )


def backfill_phase(args: argparse.Namespace, root: Path) -> list[Result]:
    spec = PlatformSpec(
        rows=args.rows_per_day, ranges=args.ranges, cap=CAP, upload_runs=4, earlier_days=args.backfill_days, seed=11
    )
    with Platform(root / "backfill", spec) as platform:
        platform.endpoint.faults(latency_ms=LATENCY)
        today, older = platform.days[0], platform.days[1:]
        batches_today = args.rows_per_day // BATCH_ROWS

        start = time.time()
        alone_runs = submit(platform, today, TODAY_PRIORITY_TAGS)
        platform.wait_until_idle(timeout_s=args.timeout_s)
        alone = day_span(platform, today, start)
        alone_over = run_overheads(platform, alone_runs)
        print(f"  today alone: {alone['acked']} batches in {alone['span_s']:.1f} s; {alone_over}; "
              f"{benchlib.machine_facts()}", flush=True)  # fmt: skip
        if alone["acked"] != batches_today:
            raise SystemExit(f"today alone acknowledged {alone['acked']} of {batches_today}")

        platform.reset_delivery()
        backfill_runs = [run for day in older for run in submit(platform, day, BACKFILL_TAGS)]
        wait_until_sending(platform, older)
        start = time.time()
        today_runs = submit(platform, today, TODAY_PRIORITY_TAGS)
        platform.wait_until_idle(timeout_s=args.timeout_s)
        beside = day_span(platform, today, start)
        beside_over = run_overheads(platform, today_runs)
        backfill_in_span = acked_between(platform, older, start, beside["last_ack"])
        print(f"  today next to a {len(older)}-day backfill ({len(backfill_runs)} runs): {beside['acked']} batches in "
              f"{beside['span_s']:.1f} s, backfill acknowledged {backfill_in_span} meanwhile; {beside_over}; "
              f"{benchlib.machine_facts()}", flush=True)  # fmt: skip
        for day in older:
            rec = platform.reconcile(day=day)
            if rec["missing"] or rec["unexpected"]:
                raise SystemExit(f"backfill {day}: {rec}")
        rec = platform.reconcile(day=today)
        if rec["missing"] or rec["unexpected"]:
            raise SystemExit(f"today: {rec}")

    left_for_backfill = CAP * beside["span_s"] - beside["acked"]
    return [
        Result(
            "today's span next to a backfill", beside["span_s"], alone["span_s"], "s",
            target=f"<= {SPAN_TARGET}", checked=beside["span_s"] / alone["span_s"],
            baseline_name="today's span alone, same run",
            note=f"{batches_today} batches in {args.ranges} ranges; target on the ratio; queue wait median "
            f"{beside_over['queue_wait_s_median']:.1f} s (alone {alone_over['queue_wait_s_median']:.1f} s)",
        ),
        Result(
            "backfill share of what today left", backfill_in_span, left_for_backfill, "batches",
            baseline_name="cap x today's span - today's batches",
            note=f"{len(older)} earlier dates x {args.ranges} ranges, backfill runs limited to 1 at a time",
        ),
    ]  # fmt: skip


def day_phase(args: argparse.Namespace, root: Path) -> list[Result]:
    """The day's ranges as the fan-out sends them (4 runs, each a block of
    ranges) against one run per range, on the same platform, one after the other."""
    spec = PlatformSpec(rows=args.day_rows, ranges=args.day_ranges, cap=CAP, upload_runs=4, seed=12)
    figures = []  # (span, overheads, runs) of the baseline, then of the fan-out's blocks
    with Platform(root / "day", spec) as platform:
        platform.endpoint.faults(latency_ms=LATENCY)
        day = platform.days[0]
        contract = platform.contract()
        blocks = range_blocks(contract.batch_ranges, contract.upload_runs)
        for name, submit_day in (
            ("one run per range", lambda: submit(platform, day, TODAY_PRIORITY_TAGS)),
            (f"{len(blocks)} runs of a block", lambda: [platform.launch(a, b, day=day, tags=TODAY_PRIORITY_TAGS) for a, b in blocks]),
        ):  # fmt: skip
            platform.reset_delivery()  # the ledger and the endpoint's counts start from zero
            start = time.time()
            runs = submit_day()
            platform.wait_until_idle(timeout_s=args.timeout_s)
            span = day_span(platform, day, start)
            over = run_overheads(platform, runs)
            stats = platform.endpoint.stats()
            rec = platform.reconcile(day=day)
            print(f"  {name}, {len(runs)} runs: {span['acked']} batches, first send to last ack "
                  f"{span['last_ack'] - span['first_send']:.1f} s; {over}; throttled {stats['by_code'].get('THROTTLED', 0)}; "
                  f"max arrivals {stats.get('max_arrived_per_sliding_second')}; "
                  f"reconcile {rec}; {benchlib.machine_facts()}", flush=True)  # fmt: skip
            if rec["missing"] or rec["unexpected"]:
                raise SystemExit(f"day, {name}: {rec}")
            figures.append((span, over, len(runs)))
    (range_span, _, range_runs), (block_span, block_over, block_runs) = figures

    def use(span: dict) -> float:
        return span["acked"] / (span["last_ack"] - span["first_send"]) / CAP

    return [
        Result(
            f"whole-day cap use, {args.day_ranges} ranges in {block_runs} runs", use(block_span), use(range_span), "",
            target=f">= {DAY_CAP_USE_TARGET}", baseline_name=f"the same ranges in {range_runs} runs, one per range",
            note=f"{block_span['acked']} batches, first send to last ack {block_span['last_ack'] - block_span['first_send']:.1f} s; "
            f"per run: queue wait median {block_over['queue_wait_s_median']:.1f} s, start-up to first send median "
            f"{block_over['startup_s_median']:.1f} s, max {block_over['startup_s_max']:.1f} s",
        )
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="small days: a smoke run")
    parser.add_argument("--phase", choices=["backfill", "day", "both"], default="both")
    parser.add_argument("--rows-per-day", type=int, default=None, help="rows of today and of each backfill date")
    parser.add_argument("--ranges", type=int, default=4, help="ranges per date in the backfill phase")
    parser.add_argument("--backfill-days", type=int, default=3)
    parser.add_argument("--day-rows", type=int, default=None, help="rows of the day phase's date")
    parser.add_argument("--day-ranges", type=int, default=32)
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--root", type=Path, default=Path("/tmp/datahub-day-runs"))
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the platform stops the processes it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.rows_per_day = args.rows_per_day or (20_000 if args.small else 160_000)
    args.day_rows = args.day_rows or (32_000 if args.small else 320_000)
    if args.small:
        args.backfill_days, args.day_ranges = 1, 8
    print(f"day runs: {benchlib.machine_facts()}", flush=True)
    results = []
    if args.phase in ("backfill", "both"):
        results += backfill_phase(args, args.root)
    if args.phase in ("day", "both"):
        results += day_phase(args, args.root)
    benchlib.report("upload runs launched by the daemon", results, args.md)


if __name__ == "__main__":
    sys.exit(main())
