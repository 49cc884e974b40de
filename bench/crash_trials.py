"""Crash trials of upload runs on the production-shaped platform (issue 10's measured
acceptance; docs/reliability.md, "Crash trials").

Phase `trials`: the platform (`datahub_dev.platform`) runs the Dagster daemon and
webserver on a PostgreSQL instance with the production dagster.yaml. Each trial submits
every range of the day to the run queue (the daemon launches them), picks one range's
run, waits until a random number of its batches is acknowledged while others are in
flight, and SIGKILLs its run worker, its step process, or both. It then relaunches that
range at once, as an impatient operator would, and touches nothing else. Measured per
trial, from the ledger and the endpoint's receipts per batch:
- in flight at the kill: the range's batches recorded as sent and not acknowledged;
- re-sent: batches the endpoint stored more than once;
- double-sent (two processes): a batch stored more than once, unless it was in flight at
  the kill and exactly one of its copies arrived after the killed run's processes were
  gone (the re-send of an in-flight batch). Any other second copy means two processes
  sent it;
- after end: the range's requests that arrived after Dagster had ended the killed run
  and before its last process was gone: an orphaned step sending into a finished run;
- missing / unexpected: the endpoint's reconcile of the whole day;
- complete: from the kill until every batch of the day is acknowledged and every run
  (the killed one, Dagster's retry, the operator's relaunch) has finished.

Phase `cli`: `dagster asset materialize` (the default launcher: the CLI process is the
run worker) is killed with its step process. Measured: how long until the run is marked
failed, whether the retry delivers the range, and the alerts about its date that reach a
local webhook. The date is older than the dates the late, at-risk and stalled sensors
watch, so that no clock-driven alert speaks about it; the watched dates, which this
scratch platform never delivers, get their own late alerts, counted apart.

    .venv/bin/python bench/crash_trials.py            # 5 trials per kind, then the CLI phase
    .venv/bin/python bench/crash_trials.py --small    # 1 trial per kind, then the CLI phase
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import benchlib  # noqa: F401  (puts the repository on sys.path)

from datahub_assets.partitions import batch_count, batch_slice, business_date
from datahub_assets.upload.assets import UPLOAD_POOL
from datahub_dev.platform import AlertReceiver, Platform, PlatformSpec, kill, pid_alive

KINDS = ("run worker", "step", "both")
LATENCY = {"median": 300, "jitter": 100}  # ms: with 8 upload threads, several batches are in flight
KEEP_IN_FLIGHT = 12  # kill before the last 12 batches of the range are acknowledged
TRIAL_TIMEOUT_S = 420.0


@dataclass
class TrialResult:
    kind: str
    number: int
    victim: str
    batches: int  # in the killed range
    kill_after_acks: int
    acked_at_kill: int
    in_flight_at_kill: int
    killed_status: str
    failed_after_s: float  # kill -> the killed run FAILURE
    retry: str  # Dagster's retry run(s): status, or "-" for none
    relaunch: str  # the operator's run: status
    resent: int
    double_sent: int
    missing: int
    unexpected: int
    complete_s: float
    gone_after_s: float  # kill -> no process of the killed run left
    after_end: int  # the range's requests that arrived after the killed run had ended, before its processes were gone

    @property
    def ok(self) -> bool:
        return (
            self.double_sent == 0 and self.missing == 0 and self.unexpected == 0 and self.after_end == 0
            and self.resent <= self.in_flight_at_kill and self.relaunch == "SUCCESS"
        )  # fmt: skip


def range_numbers(platform: Platform, key: str) -> range:
    total = batch_count(platform.spec.rows)
    keys = platform.range_keys()
    return batch_slice(keys.index(key), len(keys), total)


def statuses(platform: Platform, numbers: range) -> Counter:
    ledger = platform.ledger()
    return Counter(ledger[n].status.value for n in numbers if n in ledger)


def run_trial(platform: Platform, kind: str, number: int, rng: random.Random) -> TrialResult:
    platform.reset_delivery()
    platform.endpoint.faults(latency_ms=LATENCY)
    keys = platform.range_keys()
    runs = {key: platform.launch(key) for key in keys}
    victim = rng.choice(keys)
    numbers = range_numbers(platform, victim)
    kill_after = rng.randint(0, max(0, len(numbers) - KEEP_IN_FLIGHT))
    extra_s = rng.uniform(0.0, 0.3)

    # The moment: the victim's step holds its lease, kill_after batches are acknowledged
    # and at least one is in flight.
    deadline = time.monotonic() + 300
    while True:
        processes = platform.run_processes(runs[victim])
        counts = statuses(platform, numbers)
        if processes and counts["S"] >= kill_after and counts["P"] >= 1:
            break
        if platform.run(runs[victim]).is_finished or time.monotonic() > deadline:
            raise RuntimeError(f"trial {kind} #{number}: the run of range {victim} ended before the kill")
        time.sleep(0.02)
    time.sleep(extra_s)
    victims = {"run worker": [processes.run_worker], "step": [processes.step], "both": [processes.step, processes.run_worker]}[kind]
    for pid in victims:
        kill(pid)
    killed_at = time.time()
    at_kill = platform.ledger()
    in_flight = {n for n in numbers if n in at_kill and at_kill[n].status.value != "S"}
    acked = sum(1 for n in numbers if n in at_kill and at_kill[n].status.value == "S")
    relaunch = platform.launch(victim)  # the impatient operator

    # When every process of the killed run is gone: a step whose run worker died must stop by itself.
    survivors = [processes.run_worker, processes.step]
    while any(pid_alive(p) for p in survivors) and time.time() - killed_at < 120:
        time.sleep(0.02)
    gone_at = time.time()
    if any(pid_alive(p) for p in survivors):
        print(f"  !! trial {kind} #{number}: a process of the killed run is still alive after 120 s", flush=True)

    killed = platform.wait_for_run(runs[victim], timeout_s=TRIAL_TIMEOUT_S)
    failed_after = _finished_at(platform, runs[victim]) - killed_at
    total = batch_count(platform.spec.rows)
    complete_at = None
    deadline = time.monotonic() + TRIAL_TIMEOUT_S
    while time.monotonic() < deadline:
        if platform.unfinished_runs() == [] and sum(e.status.value == "S" for e in platform.ledger().values()) == total:
            complete_at = time.time()
            break
        time.sleep(0.2)
    if complete_at is None:
        unfinished = [(r.run_id[:8], r.status.value) for r in platform.unfinished_runs()]
        print(f"  !! trial {kind} #{number}: not complete after {TRIAL_TIMEOUT_S:.0f} s; unfinished runs {unfinished}", flush=True)
    complete_at = complete_at or time.time()

    receipts = platform.receipts_per_batch()
    resent = sum(1 for n in numbers if len(receipts[n]) > 1)
    double_sent = 0
    for n, copies in enumerate(receipts):
        if len(copies) <= 1:
            continue
        after_gone = sum(1 for r in copies if r["arrived_at"] > gone_at)
        if not (n in in_flight and after_gone == 1):
            double_sent += 1
    ended_at = killed_at + failed_after
    after_end = sum(1 for n in numbers for r in receipts[n] if ended_at < r["arrived_at"] <= gone_at)
    reconciliation = platform.reconcile()
    retries = platform.retries_of(runs[victim])
    return TrialResult(
        kind=kind, number=number, victim=victim, batches=len(numbers), kill_after_acks=kill_after,
        acked_at_kill=acked, in_flight_at_kill=len(in_flight), killed_status=killed.status.value,
        failed_after_s=failed_after,
        retry=",".join(r.status.value for r in retries) or "-",
        relaunch=platform.run(relaunch).status.value,
        resent=resent, double_sent=double_sent,
        missing=reconciliation["missing"], unexpected=reconciliation["unexpected"],
        complete_s=complete_at - killed_at, gone_after_s=gone_at - killed_at, after_end=after_end,
    )  # fmt: skip


def _finished_at(platform: Platform, run_id: str) -> float:
    record = platform.run_record(run_id)
    return record.end_time or time.time()


def print_trials(results: list[TrialResult]) -> None:
    header = (
        f"{'kind':<11} {'#':>2} {'range':>5} {'batches':>7} {'acked':>5} {'in flight':>9} {'re-sent':>7} "
        f"{'double':>6} {'after end':>9} {'missing':>7} {'unexp.':>6} {'gone s':>6} {'failed s':>8} {'complete s':>10}"
        "  killed run / retry / relaunch"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.kind:<11} {r.number:>2} {r.victim:>5} {r.batches:>7} {r.acked_at_kill:>5} {r.in_flight_at_kill:>9} "
            f"{r.resent:>7} {r.double_sent:>6} {r.after_end:>9} {r.missing:>7} {r.unexpected:>6} {r.gone_after_s:>6.1f} "
            f"{r.failed_after_s:>8.1f} {r.complete_s:>10.1f}  {r.killed_status} / {r.retry} / {r.relaunch}"
            + ("" if r.ok else "   << FAILED")
        )
    print()
    print(
        f"{'kind':<11} {'trials':>6} {'in flight':>9} {'re-sent':>7} {'double':>6} {'after end':>9} {'missing':>7} "
        f"{'unexp.':>6} {'complete s (min-max)':>21}"
    )
    for kind in KINDS:
        rows = [r for r in results if r.kind == kind]
        if rows:
            print(
                f"{kind:<11} {len(rows):>6} {sum(r.in_flight_at_kill for r in rows):>9} {sum(r.resent for r in rows):>7} "
                f"{sum(r.double_sent for r in rows):>6} {sum(r.after_end for r in rows):>9} {sum(r.missing for r in rows):>7} {sum(r.unexpected for r in rows):>6} "
                f"{min(r.complete_s for r in rows):>10.1f}-{max(r.complete_s for r in rows):.1f}"
            )
    print(f"all trials met the acceptance: {all(r.ok for r in results)}")


def trials_phase(root: Path, per_kind: int, rows: int, ranges: int, seed: int, kinds: list[str]) -> list[TrialResult]:
    rng = random.Random(seed)
    results = []
    started = time.monotonic()
    with Platform(root / "trials", PlatformSpec(rows=rows, ranges=ranges)) as platform:
        print(f"platform ready in {time.monotonic() - started:.0f} s: {rows} rows in {ranges} ranges of {platform.spec.day}", flush=True)
        for number in range(1, per_kind + 1):
            for kind in kinds:
                result = run_trial(platform, kind, number, rng)
                results.append(result)
                print(f"  {kind} #{number}: {result}", flush=True)
                platform.wait_until_idle()
    print(f"\n== Crash trials (seed {seed}; {time.monotonic() - started:.0f} s)")
    print_trials(results)
    return results


def cli_phase(root: Path, rows: int, seed: int) -> bool:
    """A CLI-launched run whose processes are killed: failed, retried, alerted once."""
    rng = random.Random(seed)
    # Older than the watched dates: no late, at-risk or stalled alert can come from the clock.
    day = (date.fromisoformat(business_date()) - timedelta(days=3)).isoformat()
    receiver = AlertReceiver()
    started = time.monotonic()
    try:
        with Platform(root / "cli", PlatformSpec(rows=rows, ranges=1, day=day, webhook_url=receiver.url)) as platform:
            print(f"\nplatform ready in {time.monotonic() - started:.0f} s: {rows} rows in 1 range of {day}", flush=True)
            platform.endpoint.faults(latency_ms=LATENCY)
            numbers = range_numbers(platform, "0")
            kill_after = rng.randint(0, len(numbers) - KEEP_IN_FLIGHT)
            cli = platform.materialize_cli("0")
            deadline = time.monotonic() + 300
            while True:
                run = next(iter(platform.runs_of_range("0")), None)
                processes = platform.run_processes(run.run_id) if run else None
                counts = statuses(platform, numbers)
                if processes and counts["S"] >= kill_after and counts["P"] >= 1:
                    break
                if cli.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the CLI run ended before the kill")
                time.sleep(0.02)
            assert processes.run_worker == cli.pid, "the CLI process is the run worker"
            kill(processes.step)
            kill(processes.run_worker)
            cli.wait()
            killed_at = time.time()
            print(f"killed the CLI run {run.run_id[:8]} after {counts['S']} acks, {counts['P']} in flight", flush=True)

            platform.wait_for_run(run.run_id, timeout_s=300)
            failed = platform.run(run.run_id)
            failed_after = _finished_at(platform, run.run_id) - killed_at
            message = platform.failure_message(run.run_id)
            retry_deadline = time.monotonic() + 300
            while not platform.retries_of(run.run_id) and time.monotonic() < retry_deadline:
                time.sleep(0.5)
            retries = platform.retries_of(run.run_id)
            for retry in retries:
                platform.wait_for_run(retry.run_id, timeout_s=300)
            retry_status = ",".join(platform.run(r.run_id).status.value for r in retries) or "none"
            platform.wait_until_idle()
            # One more tick of the dead-run sensor (every 30 s): it must not alert again.
            time.sleep(40)
            ledger = platform.ledger()
            acked = sum(e.status.value == "S" for e in ledger.values())
            reconciliation = platform.reconcile()
            slots = platform.instance.event_log_storage.get_concurrency_info(UPLOAD_POOL)
            alerts = Counter(a["state"] for a in receiver.alerts if a["date"] == day)
            elsewhere = Counter(f"{a['state']} {a['date']}" for a in receiver.alerts if a["date"] != day)
            receipts = platform.receipts_per_batch()
    finally:
        receiver.close()
    print(f"\n== CLI-launched run killed ({time.monotonic() - started:.0f} s)")
    print(f"run status after the kill: {failed.status.value}, {failed_after:.0f} s after the kill")
    print(f"failure message: {message}")
    print(f"retry: {retry_status}; batches acknowledged {acked}/{len(numbers)}; re-sent {sum(len(r) > 1 for r in receipts)}")
    print(f"reconcile: missing {reconciliation['missing']}, unexpected {reconciliation['unexpected']}")
    print(f"upload pool slots still claimed: {slots.active_slot_count}")
    print(f"alerts about {day}: {dict(alerts)} ({sum(alerts.values())} in all)")
    print(f"alerts about the watched dates, which this platform never delivers: {dict(elsewhere)}")
    met = (
        failed.status.value == "FAILURE" and failed_after <= 120 and retry_status == "SUCCESS"
        and alerts == {"worker_gone": 1} and reconciliation["missing"] == 0 and reconciliation["unexpected"] == 0
    )  # fmt: skip
    print(f"the CLI phase met the acceptance: {met}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="1 trial per kind instead of 5")
    parser.add_argument("--phase", choices=("all", "trials", "cli"), default="all")
    parser.add_argument("--rows", type=int, default=9_000, help="rows of the trials' day (30 batches per range)")
    parser.add_argument("--ranges", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS), help="what to kill, comma-separated: " + ", ".join(KINDS))
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--workdir", type=Path, default=benchlib.REPO_ROOT / "var" / "crash_trials")
    args = parser.parse_args()
    ok = True
    if args.phase in ("all", "trials"):
        kinds = [k.strip() for k in args.kinds.split(",")]
        results = trials_phase(args.workdir, 1 if args.small else 5, args.rows, args.ranges, args.seed, kinds)
        ok = all(r.ok for r in results)
    if args.phase in ("all", "cli"):
        ok = cli_phase(args.workdir, 4_000, args.seed) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
