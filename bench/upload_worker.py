"""One uploading OS process for the benchmarks (not run by hand).

Started by bench/cap_use.py (and bench/client_cost.py) as a subprocess, never forked:
a JPype JVM does not survive fork. It sends its share of a snapshot's batches through
the platform's real path: `RangeSender` + `DataHubSdkResource` (the Java SDK in this
process's JVM) + `Ledger` + `RateLimiter` on the shared Postgres delivery database.

Protocol on stdin/stdout, one JSON object a line:
  worker -> {"ready": true}            after the JVM, the SDK client and the batches are loaded
  parent -> {"go": <epoch seconds>}    every worker starts sending at that instant
  worker -> {"result": {...}}          the RangeReport, wall times and CPU seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

GO_TIMEOUT_S = 600.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--snapshot", type=Path, required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--stop", type=int, required=True)
    parser.add_argument("--jar", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--delivery-url", required=True)
    parser.add_argument("--cap", type=float, required=True)
    parser.add_argument("--headroom", type=float, default=None, help="default: DeliveryDatabase's")
    parser.add_argument("--threads", type=int, default=None, help="default: UploadConfig's")
    parser.add_argument("--day", required=True)
    parser.add_argument("--late-tolerance-ms", type=float, default=None, help="override the limiter's (experiments)")
    parser.add_argument("--warm-batch", type=int, default=None, help="send this batch first, before ready")
    parser.add_argument("--trace", type=Path, default=None, help="write per-attempt timings (JSON lines) here")
    parser.add_argument("--jvm-option", action="append", default=[], help="passed to DataHubSdkResource.jvm_options")
    parser.add_argument(
        "--design", choices=["new", "old"], default="new",
        help="old: the baseline before issue 11 (spacing only, no THROTTLED feedback, Java list built in the slot)",
    )  # fmt: skip
    args = parser.parse_args()

    from datahub_assets.contract import load_contract
    from datahub_assets.upload.assets import WARM_UP_MIN_BATCHES, UploadConfig
    from datahub_assets.upload.batches import read_batches
    from datahub_assets.upload.resources import DeliveryDatabase
    from datahub_assets.upload.sdk import DataHubSdkResource
    from datahub_assets.upload.sender import RangeSender, RetryPolicy

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    log = logging.getLogger(f"upload_worker[{args.first}:{args.stop}]")
    contract = load_contract(benchlib.CONTRACT_PATH)
    config = UploadConfig()
    threads = args.threads or config.threads
    db_kwargs = {"url": args.delivery_url, "cap_per_second": args.cap}
    if args.headroom is not None:
        db_kwargs["headroom"] = args.headroom
    delivery_db = DeliveryDatabase(**db_kwargs)
    sdk = DataHubSdkResource(classpath=args.jar, keys_path=args.keys, jvm_options=args.jvm_option)
    # The JVM starts once per process, as the upload asset starts it (the new design also
    # warms its cryptography for a range this long); a one-off cost, not part of the rate.
    if args.design == "new":
        sdk.start(warm_up=args.stop - args.first >= WARM_UP_MIN_BATCHES)
    else:
        sdk._open_client()
    batches = read_batches(args.snapshot, range(args.first, args.stop))
    ledger, limiter = delivery_db.ledger(), delivery_db.limiter()
    if args.late_tolerance_ms is not None:
        limiter.late_tolerance = args.late_tolerance_ms / 1000
    limiter.lateness_samples = []  # diagnostics: how late each wake-up for a slot was

    client = sdk
    if args.design == "old":
        client, limiter = old_design(sdk, limiter)
    trace: list[tuple] = []
    if args.trace:
        client, ledger, limiter = traced(client, ledger, limiter, trace)
    sender = RangeSender(
        client=client,
        ledger=ledger,
        limiter=limiter,
        data_uuid=contract.data_uuid,
        day=args.day,
        priority=True,
        threads=threads,
        retry=RetryPolicy(max_attempts=config.max_attempts, base_delay_s=config.retry_base_delay_s),
        log=log,
        progress_every_s=config.progress_every_s,
    )
    warm_s = None
    if args.warm_batch is not None:
        # One batch outside the measured set through the same path: the JVM's first call
        # (class loading, JIT) is a one-off per process, reported apart from the rate.
        t0 = time.monotonic()
        warm = RangeSender(
            client=client, ledger=ledger, limiter=limiter, data_uuid=contract.data_uuid, day=args.day,
            priority=True, threads=1, retry=RetryPolicy(), log=log,
        ).send(read_batches(args.snapshot, range(args.warm_batch, args.warm_batch + 1)))
        warm_s = time.monotonic() - t0
        if warm.batches_sent != 1:
            raise SystemExit("warm-up batch was not acknowledged")
    gc_pauses = gc_pause_recorder()
    print(json.dumps({"ready": True, "warm_s": warm_s}), flush=True)

    line = sys.stdin.readline()
    if not line:
        raise SystemExit("parent went away before go")
    go = float(json.loads(line)["go"])
    if not 0 <= go - time.time() <= GO_TIMEOUT_S:
        raise SystemExit("go time out of range")
    time.sleep(max(0.0, go - time.time()))
    cpu0, wall0, threads0 = benchlib.cpu_s(), time.time(), benchlib.thread_cpu()
    gc_pauses["recording"] = True
    with jit_recorder(go) as jit_ms:
        report = sender.send(batches)
    gc_pauses["recording"] = False
    ended, cpu1 = time.time(), benchlib.cpu_s()
    by_thread = benchlib.thread_cpu_diff(benchlib.thread_cpu(), threads0)
    # Threads that ended inside send() (the upload pool) are gone from /proc: the rest is theirs.
    by_thread["upload pool threads (ended)"] = max(0.0, (cpu1 - cpu0) - sum(by_thread.values()))
    result = {
        "first": args.first,
        "stop": args.stop,
        "threads": threads,
        "go": go,
        "started": wall0,
        "ended": ended,
        "cpu_s": cpu1 - cpu0,
        "batches_total": report.batches_total,
        "batches_skipped": report.batches_skipped,
        "batches_sent": report.batches_sent,
        "batches_failed": report.batches_failed,
        "attempts": report.attempts,
        "retries": report.retries,
        "throttled": report.throttled,
        "seconds": report.seconds,
        "failed_codes": dict(report.failed_codes),
        "warm_s": warm_s,
        "cpu_by_thread_s": by_thread,
        "gc_pauses_ms": gc_pauses,
        "lateness_ms": [round(1000 * x, 2) for x in limiter.lateness_samples],
        "late_retakes": getattr(limiter, "late_retakes", None),
        "jit_ms_per_s": jit_ms,
    }
    if args.trace:
        args.trace.write_text("".join(json.dumps(t) + "\n" for t in trace))
    print(json.dumps({"result": result}), flush=True)
    delivery_db.engine().dispose()
    sdk.teardown_after_execution(None)  # closes the SDK client
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit without interpreter finalization: with the JVM left running (DataHubSdkResource
    # never shuts it down), JPype's reference-queue thread can race the finalizing
    # interpreter and abort the process ("FATAL: exception not rethrown", SIGABRT).
    os._exit(0)


def old_design(sdk, limiter):
    """The design the new one is measured against, on the same code otherwise: the limiter
    spaces slots one interval apart whatever the caller expects and ignores THROTTLED
    answers, and the rows become a Java list inside the slot (the SDK adapter converts
    Python strings itself)."""

    class InSlotConversion:
        def __getattr__(self, name):  # key_id, ...
            return getattr(sdk, name)

        def prepare(self, rows: list[str]):
            return rows

        def upload(self, *, data_uuid: str, rows):
            return sdk.upload(data_uuid=data_uuid, rows=rows)

    class SpacingOnly:
        def __getattr__(self, name):  # acquire(), exclusive(), interval, ...
            return getattr(limiter, name)

        def acquire(self, priority: bool, late_by_s: float = 0.0) -> None:
            limiter.acquire(priority)  # every slot one interval, whatever the caller expects

        def throttled(self) -> None:
            pass

    return InSlotConversion(), SpacingOnly()


@contextlib.contextmanager
def jit_recorder(go: float):
    """The JVM's compilation time (ms) in each second after `go`: how busy its JIT was."""
    import threading

    from java.lang.management import ManagementFactory

    bean = ManagementFactory.getCompilationMXBean()
    per_second: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        last = bean.getTotalCompilationTime()
        while not stop.wait(max(0.0, go + len(per_second) + 1 - time.time())):
            total = bean.getTotalCompilationTime()
            per_second.append(int(total - last))
            last = total

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield per_second
    finally:
        stop.set()
        sampler.join()


def gc_pause_recorder() -> dict:
    """Record the interpreter's garbage-collection pauses (ms) per generation, as they happen,
    while `pauses["recording"]` is true (the worker sets it for the measured send only)."""
    import gc

    pauses: dict = {"0": [], "1": [], "2": [], "recording": False}
    started: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            ms = round(1000 * (time.perf_counter() - started.pop()), 2)
            if pauses["recording"]:
                pauses[str(info["generation"])].append(ms)

    gc.callbacks.append(callback)
    return pauses


def traced(client, ledger, limiter, out: list):
    """Wrap the sender's collaborators to record, per attempt and thread, when each step ran."""
    import threading

    class TracedLimiter:
        def __getattr__(self, name):  # exclusive(), throttled(), interval, ...
            return getattr(limiter, name)

        def acquire(self, priority: bool, late_by_s: float = 0.0):
            t0 = time.time()
            r = limiter.acquire(priority, late_by_s)
            out.append(("acquire", threading.get_ident(), t0, time.time(), None))
            return r

    class TracedLedger:
        def __getattr__(self, name):
            fn = getattr(ledger, name)

            def wrapped(*a, **k):
                t0 = time.time()
                r = fn(*a, **k)
                out.append((name, threading.get_ident(), t0, time.time(), None))
                return r

            return wrapped

    class TracedClient:
        key_id = client.key_id

        def prepare(self, rows: list[str]):
            return client.prepare(rows)

        def upload(self, *, data_uuid: str, rows):
            t0 = time.time()
            outcome = client.upload(data_uuid=data_uuid, rows=rows)
            out.append(("upload", threading.get_ident(), t0, time.time(), outcome.code, outcome.trace_id))
            return outcome

    return TracedClient(), TracedLedger(), TracedLimiter()


if __name__ == "__main__":
    main()
