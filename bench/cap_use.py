"""Cap use: how much of the partner's 20 batches/s the platform's real upload path uses,
with today's design and the one before it (issue 11) side by side in one run.

    .venv/bin/python bench/cap_use.py            # 1,000 batches a phase, 8 phases (about 11 min)
    .venv/bin/python bench/cap_use.py --small    # 120 batches a phase, new design, quiet: CI smoke run (< 60 s)

The local endpoint runs with the partner's cap (20 per sliding second) and 150 ms median
latency +- 50 ms jitter. The same snapshot batches (synthetic rows -> conform ->
read_batches) are sent from 1 OS process and from 4 OS processes sharing one Postgres
delivery database (bench/upload_worker.py: RangeSender + DataHubSdkResource + Ledger +
RateLimiter, UploadConfig's thread count per process), each with:
  - the new design: the limiter's THROTTLED feedback, the Java list built before the slot;
  - the old design: spacing only, the list built inside the slot (upload_worker --design old);
on a quiet machine and with a CPU burner per core (`--loads`). Optionally (not by default)
the naive baseline: a plain sequential loop calling the same Java SDK through JPype.

Reported per phase, new against old: achieved rate / cap (target >= 0.97 quiet, >= 0.95
loaded), THROTTLED share of requests (0 quiet, <= 0.05 % loaded), and the endpoint's max
*arrivals* per sliding second, THROTTLED requests included (<= cap), next to its max
admitted. Rates are end to end: batches / (last answer - common start instant). The load
average is printed with every phase.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import Result  # noqa: E402

DAY = "2026-11-26"
WORKER = Path(__file__).resolve().parent / "upload_worker.py"
READY_TIMEOUT_S = 120.0
REFERENCE_ROWS = 25_000_000
ETA_TARGET_S = 3 * 3600 + 34 * 60


def run_workers(
    n: int, batches: int, snapshot: Path, jar: Path, keys: Path, url: str, cap: float, threads: int | None,
    timeout_s: float, trace_dir: Path | None = None, warm: bool = True, on_ready=None, extra: tuple = (),
    nice: int = 0,
) -> tuple[list[dict], list[float]]:
    """n upload processes, each with a contiguous share, all starting at one instant."""
    procs = []
    try:
        for i in range(n):
            first, stop = i * batches // n, (i + 1) * batches // n
            cmd = [
                sys.executable, str(WORKER), "--snapshot", str(snapshot), "--first", str(first), "--stop", str(stop),
                "--jar", str(jar), "--keys", str(keys), "--delivery-url", url, "--cap", str(cap), "--day", DAY,
            ]  # fmt: skip
            if threads:
                cmd += ["--threads", str(threads)]
            cmd += list(extra)
            if warm:
                cmd += ["--warm-batch", str(batches + i)]  # one extra batch per worker, outside the measured set
            if trace_dir:
                cmd += ["--trace", str(trace_dir / f"trace-{n}p-{i}.jsonl")]
            procs.append(subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=benchlib.REPO_ROOT,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            ))
        deadline = time.monotonic() + READY_TIMEOUT_S
        warm_s = []
        for p in procs:
            line = p.stdout.readline()  # blocks until the worker is ready (or dies)
            if not line or not json.loads(line).get("ready") or time.monotonic() > deadline:
                raise RuntimeError(f"upload worker did not get ready (exit {p.poll()})")
            warm_s.append(json.loads(line).get("warm_s"))
        if on_ready:
            on_ready()
        go = time.time() + 1.0
        for p in procs:
            p.stdin.write(json.dumps({"go": go}) + "\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=timeout_s)
            lines = [json.loads(x) for x in out.splitlines() if x.strip()]
            result = next((x["result"] for x in lines if "result" in x), None)
            if p.returncode != 0 or result is None:
                raise RuntimeError(f"upload worker failed (exit {p.returncode})")
            results.append(result)
        return results, warm_s
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def reset_delivery_db(url: str) -> None:
    """Empty the ledger between phases so that each phase sends every batch."""
    import sqlalchemy as sa

    from datahub_assets.upload.resources import create_delivery_engine

    engine = create_delivery_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM upload_ledger"))
            conn.execute(sa.text("DELETE FROM rate_limiter"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def cpu_burners(n: int):
    """n busy loops (one per core), so that the phase runs on a loaded machine."""
    burners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(n)]
    try:
        yield
    finally:
        for b in burners:
            b.kill()
            b.wait()


def phase_summary(name: str, results: list[dict], stats: dict, cap: float, warm_s: list) -> dict:
    go = results[0]["go"]
    ended = max(r["ended"] for r in results)
    sent = sum(r["batches_sent"] for r in results)
    attempts = sum(r["attempts"] for r in results)
    requests = stats["requests"]
    throttled = stats["by_code"].get("THROTTLED", 0)
    # The endpoint's view: admitted arrivals per second between the first and last arrival.
    per_second = stats.get("per_second") or {}
    summary = {
        "name": name,
        "processes": len(results),
        "threads_per_process": results[0]["threads"],
        "batches_sent": sent,
        "batches_failed": sum(r["batches_failed"] for r in results),
        "attempts": attempts,
        "retries": sum(r["retries"] for r in results),
        "seconds": ended - go,
        "rate": sent / (ended - go),
        "requests": requests,
        "throttled": throttled,
        "throttled_share": throttled / requests if requests else 0.0,
        "max_sliding": stats["max_admitted_per_sliding_second"],
        "max_arrived": stats["max_arrived_per_sliding_second"],
        "over_cap_bursts_s": stats["over_cap_bursts_s"],
        "load_1min": os.getloadavg()[0],
        "seconds_with_arrivals": len(per_second),
        "client_cpu_ms_per_batch": 1000 * sum(r["cpu_s"] for r in results) / max(sent, 1),
        "late_retakes": sum(r.get("late_retakes") or 0 for r in results),
        "wake_lateness_ms": lateness_summary([x for r in results for x in r.get("lateness_ms", [])]),
        "gc_pauses": {
            g: {"n": len(v), "max_ms": max(v, default=0), "total_ms": round(sum(v), 1)}
            for g in ("0", "1", "2") for v in [[x for r in results for x in r.get("gc_pauses_ms", {}).get(g, [])]]
        },
        "cpu_by_thread_ms_per_batch": {
            k: round(1000 * sum(r["cpu_by_thread_s"].get(k, 0.0) for r in results) / max(sent, 1), 3)
            for k in sorted({k for r in results for k in r["cpu_by_thread_s"]})
        },
        "cold_first_call_s": max((w for w in warm_s if w is not None), default=None),
        # Seconds after go in which the JVMs' JIT compiled for more than 100 ms together.
        "jit_busy_s": [
            (t, ms) for t, ms in enumerate(
                sum(r.get("jit_ms_per_s", [])[t] for r in results if t < len(r.get("jit_ms_per_s", [])))
                for t in range(max((len(r.get("jit_ms_per_s", [])) for r in results), default=0))
            ) if ms > 100
        ],
    }
    summary["rate_over_cap"] = summary["rate"] / cap
    print(
        f"  {name}: {sent} batches in {summary['seconds']:.2f} s = {summary['rate']:.3f}/s "
        f"({summary['rate_over_cap']:.4f} of cap); requests {requests}, throttled {throttled}, "
        f"retries {summary['retries']}, failed {summary['batches_failed']}, "
        f"max per sliding second: arrived {summary['max_arrived']}, admitted {summary['max_sliding']}; "
        f"bursts over the cap began {summary['over_cap_bursts_s']} s after the first arrival; "
        f"JIT busy (s after go, ms compiled) {summary['jit_busy_s']}; "
        f"load {summary['load_1min']:.2f}, "
        f"client CPU {summary['client_cpu_ms_per_batch']:.2f} ms/batch, late wake-ups re-queued "
        f"{summary['late_retakes']}, cold first call (warm-up, not timed) {summary['cold_first_call_s']}; "
        f"wake-up lateness {summary['wake_lateness_ms']}; gc pauses {summary['gc_pauses']}",
        flush=True,
    )
    return summary


def lateness_summary(samples: list[float]) -> dict:
    """How late the upload threads woke for their limiter slots (ms), as percentiles and counts."""
    if not samples:
        return {}
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {
        "n": len(s), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": s[-1],
        "over_10ms": sum(x > 10 for x in s), "over_20ms": sum(x > 20 for x in s), "over_50ms": sum(x > 50 for x in s),
    }


def naive_phase(jar: Path, keys: Path, data_uuid: str, batches: list, endpoint, time_budget_s: float) -> dict:
    """What a user writes first: one thread, one SDK call after the other, no limiter, no ledger."""
    import jpype

    if not jpype.isJVMStarted():
        jpype.startJVM(classpath=[str(jar)], convertStrings=False)
    import jpype.imports  # noqa: F401
    from java.util import ArrayList

    client = jpype.JClass("com.alipay.idatahub.client.DataUploadClient")(str(keys))
    endpoint.reset()
    codes: dict[str, int] = {}
    started = time.perf_counter()
    sent = 0
    for batch in batches:
        data = ArrayList(len(batch.rows))
        for row in batch.rows:
            data.add(row)
        result = client.uploadData(data_uuid, data)
        code = f"{result.getResultStatus()}/{result.getResultCode()}"
        codes[code] = codes.get(code, 0) + 1
        sent += 1
        if time.perf_counter() - started > time_budget_s:
            break
    seconds = time.perf_counter() - started
    client.close()
    stats = endpoint.stats()
    ok = codes.get("S/SUCCESS", 0)
    print(f"  naive loop: {sent} batches in {seconds:.2f} s = {ok / seconds:.3f}/s; codes {codes}", flush=True)
    return {
        "batches": sent,
        "seconds": seconds,
        "rate": ok / seconds,
        "codes": codes,
        "throttled_share": stats["by_code"].get("THROTTLED", 0) / max(stats["requests"], 1),
        "max_sliding": stats["max_admitted_per_sliding_second"],
    }


def projection(rate: float, cap: float):
    from datahub_assets.partitions import batch_count, deadline_for
    from datahub_assets.planning import plan

    deadline = deadline_for(DAY)
    return plan(
        batches=batch_count(REFERENCE_ROWS), cap=cap, start=datetime.now(timezone.utc), deadline=deadline,
        measured_rate=rate,
    )


def hms(seconds: float) -> str:
    m = int(round(seconds)) // 60
    return f"{m // 60} h {m % 60:02d} min"


TARGETS = {  # per load: (rate / cap, throttled share)
    "quiet": (">= 0.97", "<= 0"),
    "loaded": (">= 0.95", "<= 0.0005"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="120 batches a phase, new design, quiet: a CI smoke run")
    parser.add_argument("--batches", type=int, default=None, help="per phase; default 1000 (120 with --small)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="per process; default UploadConfig's")
    parser.add_argument("--cap", type=int, default=20)
    parser.add_argument("--latency-median-ms", type=float, default=150.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=50.0)
    parser.add_argument("--designs", default=None, help="comma-separated: new,old (default both; new with --small)")
    parser.add_argument("--loads", default=None, help="comma-separated: quiet,loaded (default both; quiet with --small)")
    parser.add_argument("--naive-batches", type=int, default=0, help="also time the naive SDK loop over this many")
    parser.add_argument("--late-tolerance-ms", type=float, default=None, help="override the limiter's (experiments)")
    parser.add_argument("--cold", action="store_true", help="no warm-up call: each process's cold JVM is timed too")
    parser.add_argument("--only", choices=["1", "n"], default=None, help="run only the 1-process or the n-process phase")
    parser.add_argument("--headroom", type=float, default=None, help="override the limiter's (experiments)")
    parser.add_argument(
        "--worker-nice", type=int, default=0,
        help="run the upload workers at this niceness (below 0 needs root): do bursts come from CPU scheduling?",
    )
    parser.add_argument("--jvm-option", action="append", default=[], help="passed to every worker's JVM (experiments)")
    parser.add_argument("--trace-dir", type=Path, default=None, help="per-attempt timings of every worker")
    parser.add_argument("--md", type=Path, default=None, help="append the markdown rows to this file")
    args = parser.parse_args()

    batches_n = args.batches or (120 if args.small else 1000)
    designs = (args.designs or ("new" if args.small else "new,old")).split(",")
    loads = (args.loads or ("quiet" if args.small else "quiet,loaded")).split(",")
    cap = args.cap
    # Each phase is bounded: twice the time the cap allows, plus start-up slack.
    phase_timeout = 2 * batches_n / cap + 120
    workdir = Path(tempfile.mkdtemp(prefix="bench-cap-use-"))
    print(f"cap use: {batches_n} batches per phase, cap {cap}/s, latency {args.latency_median_ms:g} "
          f"+- {args.latency_jitter_ms:g} ms; designs {designs}, loads {loads}; {benchlib.machine_facts()}; "
          f"workdir {workdir}", flush=True)

    jar = benchlib.build_sdk_jar()
    contract, snapshot, all_batches = benchlib.make_snapshot_batches(workdir, batches_n + args.processes, DAY)
    batches = all_batches[:batches_n]  # the rest: one warm-up batch per worker
    ids = [json.loads(r)["id"] for b in batches for r in b.rows]
    # The experiment knobs, passed on to every worker.
    knobs = [f"--jvm-option={option}" for option in args.jvm_option]
    if args.late_tolerance_ms is not None:
        knobs += ["--late-tolerance-ms", str(args.late_tolerance_ms)]
    if args.headroom is not None:
        knobs += ["--headroom", str(args.headroom)]
    summaries = {}  # (load, n, design) -> summary
    naive = None
    with benchlib.scratch_database("datahub_bench_cap") as url, benchlib.endpoint_with_keys(
        workdir, cap=cap, latency_median_ms=args.latency_median_ms, latency_jitter_ms=args.latency_jitter_ms
    ) as (endpoint, keys):
        counts = {"1": (1,), "n": (args.processes,), None: (1, args.processes)}[args.only]
        for load in loads:
            with cpu_burners(os.cpu_count() or 2) if load == "loaded" else contextlib.nullcontext():
                for n in counts:
                    for design in designs:
                        reset_delivery_db(url)
                        endpoint.reset()
                        results, warm_s = run_workers(
                            n, batches_n, snapshot, jar, keys, url, cap, args.threads, phase_timeout, args.trace_dir,
                            warm=not args.cold, on_ready=endpoint.reset, nice=args.worker_nice,
                            extra=("--design", design, *knobs),
                        )
                        name = f"{design} design, {load}, {n} process{'es' if n > 1 else ''}"
                        summaries[load, n, design] = phase_summary(name, results, endpoint.stats(), cap, warm_s)
                        rec = endpoint.reconcile(contract.data_uuid, ids)
                        if rec["missing"]:
                            raise SystemExit(f"{rec['missing']} rows missing at the endpoint after {name}")
        if args.naive_batches:
            naive = naive_phase(jar, keys, contract.data_uuid, batches[: args.naive_batches], endpoint, phase_timeout * 4)

    results = []
    for (load, n, design), s in summaries.items():
        if design == "old" and (load, n, "new") in summaries:
            continue  # reported as the baseline of the new design's row
        old = summaries.get((load, n, "old")) if design == "new" else None
        rate_target, throttled_target = TARGETS[load]
        label = f"{design}, {load}, {n} proc x {s['threads_per_process']} thr"
        base = "old design, same run" if old else ""
        load_note = f"load {s['load_1min']:.2f}" + (f" (old: {old['load_1min']:.2f})" if old else "")
        results += [
            Result(f"rate / cap, {label}", s["rate_over_cap"], old and old["rate_over_cap"], "",
                   target=rate_target, baseline_name=base,
                   note=f"{s['batches_sent']} batches in {s['seconds']:.1f} s = {s['rate']:.3f}/s; {load_note}"),
            Result(f"throttled share, {label}", s["throttled_share"], old and old["throttled_share"], "",
                   target=throttled_target, baseline_name=base,
                   note=f"{s['throttled']} of {s['requests']} requests"
                   + (f" (old: {old['throttled']} of {old['requests']})" if old else "")),
            Result(f"max arrivals / sliding s, {label}", s["max_arrived"], old and old["max_arrived"], "",
                   target=f"<= {cap}", baseline_name=base,
                   note=f"max admitted {s['max_sliding']}" + (f" (old: {old['max_sliding']})" if old else "")),
        ]
    if naive:
        one = summaries.get((loads[0], 1, designs[0]))
        if one:
            results.append(
                Result("rate vs naive loop, 1 process", one["rate"], naive["rate"], "b/s",
                       baseline_name=f"naive sequential SDK loop, {naive['batches']} batches",
                       note="ratio = platform rate / naive rate")
            )
    for n in (1, args.processes):
        s = summaries.get(("quiet", n, "new"))
        if s:
            day_plan = projection(s["rate"], cap)
            results.append(
                Result(f"ETA of 25M rows at the new design's quiet {n}-process rate", day_plan.duration_s,
                       REFERENCE_ROWS / 100 / cap, "s", target=f"<= {ETA_TARGET_S}",
                       baseline_name="the partner's 12,500 s at the full cap",
                       note=f"{hms(day_plan.duration_s)} at {s['rate']:.3f}/s (planner.plan); target 3 h 34 min")
            )
    benchlib.remove_scratch(workdir)
    benchlib.report(f"cap use ({batches_n} batches per phase)", results, args.md)
    phases = [{"load": k[0], "processes": k[1], "design": k[2], **v} for k, v in summaries.items()]
    (workdir / "summary.json").write_text(json.dumps({"phases": phases, "naive": naive}, indent=1))
    print(f"raw figures: {workdir / 'summary.json'}")


if __name__ == "__main__":
    main()
