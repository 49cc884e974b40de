"""Client cost: CPU seconds per batch in the uploading process, with the cap lifted.

    .venv/bin/python bench/client_cost.py            # 3,000 batches
    .venv/bin/python bench/client_cost.py --small    # 600 batches, CI smoke run (< 60 s)

The endpoint runs with `--cap 100000` and no latency, the limiter with cap 100,000, so
nothing waits on the partner's cap. In this one process (JVM threads included, since
JPype runs the JVM inside it) CPU time is read with getrusage(RUSAGE_SELF):
  measured: the platform path, RangeSender + DataHubSdkResource + Ledger + RateLimiter
            on a Postgres delivery database (UploadConfig's threads); target <= 2 ms/batch;
  baseline: the same batches through the bare SDK call (ArrayList + uploadData), one thread.
A breakdown follows: each collaborator of the sender timed alone (CPU per call), and the
CPU of the process's threads by name (JVM threads are named; Python threads are not).
The endpoint (a Python process) and Postgres run on the same 2 cores: their CPU is
printed too, since it competes with the client's.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import Result, thread_cpu, thread_cpu_diff  # noqa: E402

DAY = "2026-11-26"
OPEN_CAP = 100_000


def cpu_per_call(fn, n: int) -> float:
    """ms of CPU (this process, all threads) per call of fn, over n calls."""
    c0 = benchlib.cpu_s()
    for i in range(n):
        fn(i)
    return 1000 * (benchlib.cpu_s() - c0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="600 batches: a CI smoke run")
    parser.add_argument("--batches", type=int, default=None, help="default 3000 (600 with --small)")
    parser.add_argument("--threads", type=int, default=None, help="default UploadConfig's")
    parser.add_argument("--warmup", type=int, default=None, help="batches sent first, untimed (JIT); default 1500 (300 with --small)")
    parser.add_argument("--jvm-option", action="append", default=[], help="passed to DataHubSdkResource.jvm_options")
    parser.add_argument("--md", type=Path, default=None, help="append the markdown rows to this file")
    args = parser.parse_args()
    n = args.batches or (600 if args.small else 3000)
    warm_n = args.warmup if args.warmup is not None else (300 if args.small else 1500)
    workdir = Path(tempfile.mkdtemp(prefix="bench-client-cost-"))
    print(f"client cost: {n} batches, cap lifted; {benchlib.machine_facts()}; workdir {workdir}", flush=True)

    import jpype

    from datahub_assets.upload.assets import UploadConfig
    from datahub_assets.upload.resources import DeliveryDatabase
    from datahub_assets.upload.sdk import DataHubSdkResource, upload_batch
    from datahub_assets.upload.sender import RangeSender, RetryPolicy

    jar = benchlib.build_sdk_jar()
    # Two sets of batches with distinct ids: the warm-up/baseline set and the measured set.
    contract, _, batches = benchlib.make_snapshot_batches(workdir, 2 * n + warm_n, DAY)
    warmup, base_set, platform_set = batches[:warm_n], batches[warm_n : warm_n + n], batches[warm_n + n :]
    threads = args.threads or UploadConfig().threads

    with benchlib.scratch_database("datahub_bench_cost") as url, benchlib.endpoint_with_keys(
        workdir, cap=OPEN_CAP
    ) as (endpoint, keys):
        delivery_db = DeliveryDatabase(url=url, cap_per_second=OPEN_CAP)
        ledger, limiter = delivery_db.ledger(), delivery_db.limiter()
        sdk = DataHubSdkResource(classpath=str(jar), keys_path=str(keys), jvm_options=args.jvm_option)
        client = sdk._open_client()  # JVM start: once per process, not counted

        def sender(day: str) -> RangeSender:
            return RangeSender(
                client=sdk, ledger=ledger, limiter=limiter, data_uuid=contract.data_uuid, day=day,
                priority=True, threads=threads, retry=RetryPolicy(), log=logging.getLogger("client_cost"),
                progress_every_s=3600,
            )

        # Warm the JIT (C2 keeps compiling for about a thousand calls), the HTTP
        # connections and the ledger's connection pool first: a day is 250,000 batches.
        t_warm = time.perf_counter()
        sender("2026-11-01").send(warmup)
        print(f"  warm-up: {warm_n} batches in {time.perf_counter() - t_warm:.1f} s (not timed)", flush=True)

        # Baseline: the bare SDK call, sequential (what a user writes first). Under
        # gc.freeze() like the sender's own sends, so that full collections over this
        # process's large heap (Dagster, polars, the batches) count against neither.
        endpoint.reset()
        gc.freeze()
        ep0, c0, w0 = benchlib.proc_cpu_s(endpoint.pid), benchlib.cpu_s(), time.perf_counter()
        for b in base_set:
            out = upload_batch(client, contract.data_uuid, b.rows)
            assert out.status == "S", out
        base_wall, base_cpu = time.perf_counter() - w0, benchlib.cpu_s() - c0
        gc.unfreeze()
        base_ep = benchlib.proc_cpu_s(endpoint.pid) - ep0

        # Measured: the platform path.
        endpoint.reset()
        t0 = thread_cpu()
        ep0, c0, w0 = benchlib.proc_cpu_s(endpoint.pid), benchlib.cpu_s(), time.perf_counter()
        report = sender(DAY).send(platform_set)
        wall, cpu = time.perf_counter() - w0, benchlib.cpu_s() - c0
        ep = benchlib.proc_cpu_s(endpoint.pid) - ep0
        by_thread = thread_cpu_diff(thread_cpu(), t0)
        assert report.batches_sent == n, report

        # Breakdown: each piece alone, CPU per call (single thread, so no contention).
        from java.util import ArrayList  # noqa: F401  (JPype import hook is on after open_client)

        rows = platform_set[0].rows

        def arraylist(_):
            a = ArrayList(len(rows))
            for r in rows:
                a.add(r)

        parts = {
            "ArrayList of 100 rows (JPype, in upload_batch)": cpu_per_call(arraylist, 500),
            "limiter.acquire (cap lifted)": cpu_per_call(lambda i: limiter.acquire(priority=True), 300),
            "ledger.mark_sending": cpu_per_call(
                lambda i: ledger.mark_sending(contract.data_uuid, "2026-11-02", i, "h"), 300
            ),
            "ledger.record_result": cpu_per_call(
                lambda i: ledger.record_result(contract.data_uuid, "2026-11-02", i, "S", "SUCCESS", "t"), 300
            ),
        }
        jpype.java.lang.System.gc()

    benchlib.remove_scratch(workdir)
    per_batch = 1000 * cpu / n
    base_per_batch = 1000 * base_cpu / n
    print(f"  baseline (bare SDK loop): {n} batches in {base_wall:.2f} s, client CPU {base_per_batch:.3f} ms/batch, "
          f"endpoint CPU {1000 * base_ep / n:.2f} ms/batch")
    print(f"  platform ({threads} threads): {n} batches in {wall:.2f} s = {n / wall:.0f}/s, client CPU "
          f"{per_batch:.3f} ms/batch, endpoint CPU {1000 * ep / n:.2f} ms/batch")
    print("  breakdown, CPU per call measured alone:")
    for k, v in parts.items():
        print(f"    {k:<50} {v:6.3f} ms")
    print("  CPU by thread name during the platform run (ms/batch):")
    for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1]):
        print(f"    {k:<50} {1000 * v / n:6.3f}")
    results = [
        Result("client CPU per batch, platform path", per_batch, base_per_batch, "ms", target="<= 2",
               baseline_name="bare SDK call in a loop (ArrayList + uploadData), gc frozen as in the sender",
               note=f"{threads} threads, {n / wall:.0f} batches/s, endpoint on the same cores: {1000 * ep / n:.2f} ms/batch"),
    ]
    benchlib.report(f"client cost ({n} batches, cap lifted)", results, args.md)
    (workdir / "breakdown.json").write_text(json.dumps({"parts_ms": parts, "threads_s": by_thread}, indent=1))


if __name__ == "__main__":
    main()
