"""The command-line tools: `datahub-plan` (the deadline arithmetic), `datahub-schema` (a
contract's schema as the partner's toolkit registers it) and `datahub-deliver` (one
business date of one dataset, end to end)."""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path

import dagster as dg

from datahub_assets.automation.daily import prepare_job_name, proof_job_name, upload_job_name
from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, Contract, load_contract, load_contracts
from datahub_assets.partitions import (
    PARTNER_TZ,
    Stage,
    asset_name,
    batch_count,
    business_date,
    deadline_for,
    range_keys,
    upload_partition_key,
)
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


@dataclass
class DateDelivery:
    """What `deliver_date` did for one business date of one dataset."""

    rows: int = 0  # in the snapshot
    batches_sent: int = 0
    batches_already_delivered: int = 0  # acknowledged before, skipped
    ranges_failed: list[str] = field(default_factory=list)
    failed_stage: str = ""  # "prepare", "upload" or "proof": where it stopped
    proof_path: str = ""

    @property
    def delivered(self) -> bool:
        return not self.failed_stage


def deliver_date(
    defs: dg.Definitions, instance: dg.DagsterInstance, contract: Contract, day: str, say=print, console_log_level: str = "WARNING"  # noqa: ANN001
) -> DateDelivery:
    """Deliver one business date of one dataset as the daily chain does, in this process
    and in order: the prepare job, the upload job for every batch range, then the proof
    job, each a run on `instance` tagged like any run of the chain. Ranges go one after
    another (the global limiter still holds the cap); a failed range does not stop the
    others, but the proof needs them all. A signal stops it (KeyboardInterrupt).

    `say` gets a line per step. The runs' own logs are in the instance, where the UI
    shows them; their console logger prints from `console_log_level` up (the terminal
    of `datahub-deliver`: warnings only)."""
    quiet = {"loggers": {"console": {"config": {"log_level": console_log_level}}}}

    def run(job_name: str, partition_key: str) -> dg.ExecuteInProcessResult:
        job = defs.resolve_job_def(job_name)
        result = job.execute_in_process(partition_key=partition_key, instance=instance, run_config=quiet, raise_on_error=False)
        # Dagster turns a signal during a run into a failed step: stop here too.
        for event in result.all_events:
            error = getattr(event.event_specific_data, "error", None)
            if error is not None and "Interrupt" in (error.cls_name or ""):
                raise KeyboardInterrupt
        return result

    def metadata(result: dg.ExecuteInProcessResult, stage: Stage) -> dict:
        (materialization,) = result.asset_materializations_for_node(asset_name(contract, stage))
        return {k: v.value for k, v in materialization.metadata.items()}

    def why(result: dg.ExecuteInProcessResult) -> str:
        failures = result.get_step_failure_events()
        return failures[0].event_specific_data.error.message.strip().splitlines()[0] if failures else "see the run in the UI"

    name, outcome = f"{contract.dataset} {day}", DateDelivery()
    prepared = run(prepare_job_name(contract), day)
    if not prepared.success:
        say(f"{name}: extract and snapshot failed, nothing uploaded (run {prepared.run_id}): {why(prepared)}")
        outcome.failed_stage = "prepare"
        return outcome
    snapshot = metadata(prepared, Stage.SNAPSHOT)
    outcome.rows = snapshot["dagster/row_count"]
    say(
        f"{name}: snapshot of {outcome.rows:,} rows from {snapshot['source_rows']:,} source rows "
        f"({snapshot['rejected_rows']:,} quarantined, {snapshot['duplicate_rows']:,} duplicates)"
    )

    keys = range_keys(contract.batch_ranges)
    for key in keys:
        uploaded = run(upload_job_name(contract), upload_partition_key(day, key))
        if not uploaded.success:
            outcome.ranges_failed.append(key)
            say(f"{name}: range {key} failed (run {uploaded.run_id}): {why(uploaded)}")
            continue
        report = metadata(uploaded, Stage.UPLOADED)
        outcome.batches_sent += report["batches_sent"]
        outcome.batches_already_delivered += report["batches_skipped"]
    say(
        f"{name}: {len(keys) - len(outcome.ranges_failed)} of {len(keys)} ranges uploaded: "
        f"{outcome.batches_sent} batches sent, {outcome.batches_already_delivered} already delivered"
    )
    if outcome.ranges_failed:
        say(f"{name}: not delivered, range {', '.join(outcome.ranges_failed)} failed; run this again, it sends only what is missing")
        outcome.failed_stage = "upload"
        return outcome

    proved = run(proof_job_name(contract), day)
    if not proved.success:
        say(f"{name}: no proof of delivery (run {proved.run_id}): {why(proved)}")
        outcome.failed_stage = "proof"
        return outcome
    proof = metadata(proved, Stage.DELIVERED)
    outcome.proof_path = proof["proof_path"]
    slack_s = proof.get("slack_at_completion_s")  # none when the date had no batch to send
    when = "" if slack_s is None else f" {_fmt(abs(slack_s))} {'before' if slack_s >= 0 else 'after'} the 10:00 GMT+8 deadline"
    say(f"{name}: delivered{when}; proof in {outcome.proof_path}")
    return outcome


def deliver_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(
            "Deliver one business date of one dataset: extract, snapshot, every batch range, then the proof "
            "of delivery, as runs on the Dagster instance of DAGSTER_HOME (the UI shows them). Safe to run "
            "again: it sends only what the partner has not acknowledged."
        )
    )
    parser.add_argument("--dataset", required=True, help="the contract's dataset, e.g. user_profile")
    parser.add_argument("--date", type=_iso_date, default=None, help="business date (default: yesterday in GMT+8)")
    parser.add_argument(
        "--contracts-dir", type=Path, default=DEFAULT_CONTRACTS_DIR, help="the folder of data contracts the platform loads"
    )
    args = parser.parse_args(argv)
    contracts = {c.dataset: c for c in load_contracts(args.contracts_dir)}
    if args.dataset not in contracts:
        parser.error(f"no contract for dataset {args.dataset!r} in {args.contracts_dir}: one of {', '.join(sorted(contracts))}")
    contract = contracts[args.dataset]
    day = args.date or business_date()
    if day < contract.start_date:
        parser.error(f"{day} is before the contract's start date {contract.start_date}")
    if not os.environ.get("DAGSTER_HOME"):
        parser.error("DAGSTER_HOME is not set: it names the Dagster instance the runs are recorded in")

    from datahub_assets.definitions import build_definitions  # loads the contracts, as the code location does

    with dg.DagsterInstance.get() as instance:
        delivery = deliver_date(build_definitions(args.contracts_dir), instance, contract, day)
    raise SystemExit(0 if delivery.delivered else 1)
