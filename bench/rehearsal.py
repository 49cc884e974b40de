"""The reference day, rehearsed as production runs it (issue 13).

Staged on this machine with `datahub_dev.platform`:
- PostgreSQL instance storage with the repository's dagster.yaml (run queue, the upload
  pool, run monitoring, run retries), `dagster-daemon` and `dagster-webserver` as real
  processes, the ledger and the limiter in a PostgreSQL delivery database;
- the source: `--rows` rows of the business date in PostgreSQL (`datahub_rehearsal`,
  kept between runs and reused while it holds that date's rows), 1 % of them bad;
- the local endpoint with 150 +- 50 ms latency;
- `--machines` simulated machines (network namespaces, `datahub_dev.machines`): the
  daemon starts every upload run's worker inside one of them, and it reaches Postgres
  and the endpoint (HTTPS) over its veth address.

Time is compressed by `--speedup`: the endpoint's cap and the limiter's cap are both
20 x speedup batches/s, and every rate below is reported against that raised cap.

One tick of the daily schedule, evaluated for the business date (`--day`, default the
delivery due today) and submitted to the run queue as the daemon submits it, starts the
day: extract + snapshot, then the fan-out sensor queues the date's upload runs (4 by
default, each a block of ranges). With `--crash`, one upload run's worker is SIGKILLed
at a random moment; the day must finish without anyone. The script waits for the proof
of delivery, reconciles the endpoint against the snapshot, and prints the report; a row
missing or unexpected at the endpoint makes it exit non-zero (so does a day that does
not finish). It kills only processes it started.

    .venv/bin/python bench/rehearsal.py                      # 25M rows, 4x, 4 machines, a crash
    .venv/bin/python bench/rehearsal.py --machines 2 --rows 2000000
    .venv/bin/python bench/rehearsal.py --speedup 1 --rows 2400000   # 20 min at the real cap
    .venv/bin/python bench/rehearsal.py --small              # CI smoke run: 200k rows, 1 machine
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import benchlib
import sqlalchemy as sa
from benchlib import Result
from day_runs import day_span, run_overheads

import dagster as dg
from datahub_assets.automation.daily import DEFAULT_START, prepare_job_name, run_tags
from datahub_assets.definitions import build_definitions
from datahub_assets.lake import DataLake
from datahub_assets.monitoring.progress import read_day_progress
from datahub_assets.partitions import PARTNER_TZ, Stage, asset_key, asset_name, batch_count, business_date
from datahub_assets.sql import create_engine
from datahub_assets.upload.ledger import Ledger, ledger_table
from datahub_assets.upload.limiter import DEFAULT_HEADROOM
from datahub_emulator.service import over_cap_starts
from datahub_dev.machines import is_upload_run
from datahub_dev.platform import LOCATION, REPOSITORY, Platform, PlatformSpec, kill

SOURCE_DB = "datahub_rehearsal"
# The endpoint's counters and reconciliation over a whole day's 13 GB database take minutes.
END_OF_DAY_TIMEOUT_S = 900
TABLE, DATE_COLUMN = "user_profile", "snapshot_date"
BAD_SHARE = 0.01
CAP = 20
LATENCY = {"median": 150, "jitter": 50}  # ms
# The upload runs' first progress report comes this long after they start sending
# (UploadConfig.progress_every_s): the planner's first forecast is taken then.
PROGRESS_TICK_S = 10.0
LOST_OR_UNEXPECTED = "missing + unexpected at the endpoint"
TARGETS = {
    "prepare_s": 60.0,
    "prepare_rss_gb": 4.0,
    "cap_use": 0.95,
    "forecast_error": 0.03,
    "sensor_tick_s": 5.0,
}


# ------------------------------------------------------------------------------ the source


def _write_source(url: str, rows: int, day: str) -> dict:
    """In a spawned child (the frame of 25M rows takes a few GB)."""
    from datahub_dev.synthetic import generate, write_table

    started = time.perf_counter()
    write_table(generate(rows, day, bad_share=BAD_SHARE, seed=13), url, TABLE, DATE_COLUMN)
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": benchlib.peak_rss_mb()}


def ensure_source(database: str, rows: int, day: str) -> str:
    """The source database holding exactly `rows` rows of `day` (written when it does not)."""
    if not benchlib.pg_database_exists(database):
        benchlib.pg_admin_execute(f'CREATE DATABASE "{database}"')
    url = benchlib.pg_url(database)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            present = sa.inspect(conn).has_table(TABLE) and conn.execute(
                sa.text(f'SELECT count(*) FROM "{TABLE}" WHERE "{DATE_COLUMN}" = :d'), {"d": day}
            ).scalar_one()
        if present == rows:
            print(f"  source: {rows:,} rows of {day} already in {database}", flush=True)
            return url
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{TABLE}"'))
    finally:
        engine.dispose()
    written = benchlib.in_child(_write_source, url, rows, day)
    print(f"  source: wrote {rows:,} rows of {day} in {written['seconds']:.0f} s "
          f"(peak {written['peak_rss_mb']:.0f} MB)", flush=True)  # fmt: skip
    return url


# ------------------------------------------------------------------------- the processes


class ProcessWatch(threading.Thread):
    """Samples every process this script started (its descendants) each second: the peak
    RSS per kind of process, and the machine's CPU time between two marks."""

    KINDS = (
        ("api execute_run", "run worker"),
        ("multiprocessing", "step process"),
        ("api grpc", "code server"),
        ("dagster-daemon", "daemon"),
        ("dagster-webserver", "webserver"),
        ("datahub_emulator", "endpoint"),
        ("socat", "postgres relay"),
    )

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.phase = "set-up"
        self.peak_mb: dict[str, float] = {}
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(1.0):
            for pid, kind in self._processes():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                hwm = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)
                if kind in ("run worker", "step process"):
                    kind = f"{kind} ({self.phase})"
                self.peak_mb[kind] = max(self.peak_mb.get(kind, 0.0), hwm)

    def stop(self) -> None:
        self._stop.set()

    def _processes(self) -> list[tuple[int, str]]:
        parents, commands = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
        ours, me, found = set(), os.getpid(), []
        for pid in sorted(parents):
            chain, p = [], pid
            while p not in (0, 1, me) and p not in ours and p in parents:
                chain.append(p)
                p = parents[p]
            if p == me or p in ours:
                ours.update(chain)
        for pid in ours:
            kind = next((k for marker, k in self.KINDS if marker in commands.get(pid, "")), None)
            if kind:
                found.append((pid, kind))
        return found


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (every process: the stack, Postgres)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_s: float = 120.0, every_s: float = 5.0, busy_share: float = 0.25) -> float:
    """Until the machine's cores are mostly idle (the platform's daemon, webserver and code
    servers have loaded), at most max_s; returns the seconds waited. In production the
    platform is up long before the schedule's tick, so the prepare run must not share the
    cores with the platform's own start-up."""
    began = time.monotonic()
    cores = os.cpu_count() or 1
    while time.monotonic() - began < max_s:
        before = machine_cpu_s()
        time.sleep(every_s)
        if (machine_cpu_s() - before) / (every_s * cores) < busy_share:
            break
    return time.monotonic() - began


# --------------------------------------------------------------------------------- the day


def schedule_tick(platform: Platform, day: str) -> str:
    """The daily schedule evaluated at its tick for `day` (the next morning, GMT+8), and
    its run request submitted to the run queue; returns the run id."""
    from dagster_graphql import DagsterGraphQLClient

    contract = platform.contract()
    repository = build_definitions(platform.contracts_dir).get_repository_def()
    schedule = repository.get_schedule_def(f"{contract.dataset}_daily_schedule")
    tick_at = datetime.combine(datetime.fromisoformat(day).date() + timedelta(days=1), DEFAULT_START, tzinfo=PARTNER_TZ)
    with dg.build_schedule_context(
        instance=platform.instance, scheduled_execution_time=tick_at, repository_def=repository
    ) as context:
        data = schedule.evaluate_tick(context)
    (request,) = data.run_requests
    assert request.partition_key == day, (request.partition_key, day)
    client = DagsterGraphQLClient("127.0.0.1", port_number=platform.webserver_port)
    return client.submit_job_execution(
        prepare_job_name(contract),
        repository_location_name=LOCATION,
        repository_name=REPOSITORY,
        run_config={},
        tags={**request.tags, **run_tags(contract, day), "dagster/partition": day},
    )


def delivered(platform: Platform, day: str) -> bool:
    key = asset_key(platform.contract(), Stage.DELIVERED)
    return day in platform.instance.get_materialized_partitions(key)  # type: ignore[union-attr]


def forecast(platform: Platform, day: str) -> datetime | None:
    """The planner's ETA as the at-risk sensor computes it now (None before sending)."""
    contract = platform.contract()
    progress = read_day_progress(
        platform.instance, contract, day, datetime.now(timezone.utc),  # type: ignore[arg-type]
        ledger=Ledger(platform.delivery_engine), lake=DataLake(root=platform.env["DATAHUB_DATA_DIR"]),
        cap=platform.limiter_cap, limiter_rate=platform.limiter_cap * DEFAULT_HEADROOM,
    )  # fmt: skip
    if not progress.started or not progress.remaining_batches:
        return None
    return progress.outlook(datetime.now(timezone.utc)).eta


def crash_one_run(platform: Platform) -> str | None:
    """SIGKILL the run worker of a random upload run that is sending; its run id."""
    candidates = [r for r in platform.runs([dg.DagsterRunStatus.STARTED]) if is_upload_run(r)]
    random.shuffle(candidates)
    for run in candidates:
        processes = platform.run_processes(run.run_id)
        if processes is not None:
            kill(processes.run_worker)
            return run.run_id
    return None


def step_seconds(platform: Platform, run_id: str) -> dict[str, float]:
    return {s.step_key: (s.end_time or 0) - (s.start_time or 0) for s in platform.instance.get_run_step_stats(run_id)}  # type: ignore[union-attr]


def sensor_tick_seconds(platform: Platform) -> dict[str, float]:
    """Each sensor's longest of its last 3 ticks."""
    from dagster._core.definitions.run_request import InstigatorType

    durations = {}
    for state in platform.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):  # type: ignore[union-attr]
        ticks = platform.instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=3)  # type: ignore[union-attr]
        done = [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp]
        if done:
            durations[state.instigator_name] = max(done)
    return durations


def reconcile(platform: Platform, day: str, chunk: int = 1_000_000) -> dict:
    """The endpoint's reconciliation against the snapshot, a million ids at a time (the
    ids of a whole reference day would take the endpoint several GB at once). The ids are
    unique, so what is stored but in no chunk is what was stored unexpectedly."""
    import polars as pl

    contract = platform.contract()
    ids = pl.read_parquet(DataLake(root=platform.env["DATAHUB_DATA_DIR"]).snapshot_path(contract.dataset, day), columns=["id"])["id"]
    missing = found = stored_total = 0
    for start in range(0, len(ids), chunk):
        part = platform.endpoint.reconcile(contract.data_uuid, ids.slice(start, chunk).to_list(), timeout_s=END_OF_DAY_TIMEOUT_S)
        missing += part["missing"]
        found += part["stored"]
        stored_total = part["stored"] + part["unexpected"]
    return {"expected": len(ids), "stored": stored_total, "missing": missing, "unexpected": stored_total - found}


def over_cap_seconds(endpoint_db: Path, cap: int) -> list[float]:
    """Where sliding seconds holding more than `cap` arrivals begin (epoch s), one per
    burst: read from the stand-in endpoint's arrival stamps (its receipts, no row data)."""
    import sqlite3

    db = sqlite3.connect(f"file:{endpoint_db}?mode=ro", uri=True)
    try:
        stamps = [row[0] for row in db.execute("SELECT arrived_at FROM receipts ORDER BY arrived_at")]
    finally:
        db.close()
    return over_cap_starts(stamps, cap)


def table_sizes(url: str, table: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one()
            size = conn.execute(sa.text("SELECT pg_total_relation_size(:t)"), {"t": table}).scalar_one()
        return rows, size
    finally:
        engine.dispose()


def rehearse(args: argparse.Namespace) -> list[Result]:
    day = args.day
    cap = CAP * args.speedup
    source_url = ensure_source(args.database, args.rows, day)
    spec = PlatformSpec(
        rows=args.rows, ranges=args.ranges, day=day, cap=cap, limiter_cap=cap, upload_runs=args.upload_runs,
        source_url=source_url, machines=args.machines,
    )  # fmt: skip
    watch = ProcessWatch()
    watch.start()
    print(f"  platform: {args.machines} simulated machine(s), cap {cap}/s, {args.ranges} ranges; {benchlib.machine_facts()}",
          flush=True)  # fmt: skip
    with Platform(args.root, spec) as platform:
        platform.endpoint.faults(latency_ms=LATENCY)
        storage_url = sa.URL.create(
            "postgresql+psycopg2", username=platform.env["DAGSTER_PG_USER"], host=platform.env["DAGSTER_PG_HOST"],
            port=int(platform.env["DAGSTER_PG_PORT"]), database=platform.env["DAGSTER_PG_DB"],
        ).render_as_string(hide_password=False)  # fmt: skip
        print(f"  the platform settled in {wait_for_quiet():.0f} s; the tick", flush=True)
        watch.phase = "prepare"
        tick_at = time.time()
        prepare_run = schedule_tick(platform, day)
        run = platform.wait_for_run(prepare_run, timeout_s=args.timeout_s)
        if run.status != dg.DagsterRunStatus.SUCCESS:
            raise SystemExit(f"the prepare run {prepare_run} ended {run.status.value}: {platform.failure_message(prepare_run)}")
        steps = step_seconds(platform, prepare_run)
        prepared_at = time.time()
        watch.phase = "upload"
        print(f"  prepared in {prepared_at - tick_at:.1f} s: {steps}", flush=True)

        total = batch_count(len(platform.snapshot_ids(day=day)))
        crash_at = int(total * random.uniform(0.2, 0.7)) if args.crash else None
        crashed, first_forecast, cpu_start = None, None, None
        deadline = time.monotonic() + args.timeout_s
        last_print = 0.0
        while True:
            counts = day_span(platform, day, tick_at)
            if cpu_start is None and counts["acked"]:
                cpu_start = (machine_cpu_s(), counts["acked"], time.monotonic())
            if first_forecast is None and counts["acked"] and time.time() >= counts["first_send"] + PROGRESS_TICK_S:
                eta = forecast(platform, day)
                if eta is not None:
                    first_forecast = (time.time(), eta)
                    print(f"  forecast at the first progress tick: ETA {eta:%H:%M:%S} UTC", flush=True)
            if crash_at is not None and crashed is None and counts["acked"] >= crash_at:
                crashed = crash_one_run(platform)
                print(f"  crash: SIGKILL of the run worker of {crashed} at {counts['acked']:,} of {total:,} batches",
                      flush=True)  # fmt: skip
            if counts["acked"] >= total and delivered(platform, day):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {counts['acked']:,} of {total:,} batches acknowledged")
            if time.monotonic() - last_print > 60:
                last_print = time.monotonic()
                print(f"  {counts['acked']:,} of {total:,} acknowledged; {benchlib.machine_facts()}", flush=True)
            time.sleep(2)
        cpu_end = (machine_cpu_s(), day_span(platform, day, tick_at)["acked"], time.monotonic())
        proof_at = time.time()
        counts = day_span(platform, day, tick_at)
        time.sleep(args.sensor_wait_s)  # the sensors tick once more over the finished day
        sensors = sensor_tick_seconds(platform)
        stats = platform.endpoint.stats(timeout_s=END_OF_DAY_TIMEOUT_S)
        watch.stop()  # the figures are the day's: reconciling below loads every id
        rec = reconcile(platform, day)
        upload_runs = [r.run_id for r in platform.runs() if is_upload_run(r)]
        run_starts = [t for t in (platform.run_record(r).start_time for r in upload_runs) if t is not None]
        over = run_overheads(platform, upload_runs)
        failed_runs = [r.run_id for r in platform.runs([dg.DagsterRunStatus.FAILURE])]
        ledger_rows, ledger_bytes = table_sizes(platform.env["DATAHUB_DELIVERY_DB_URL"], ledger_table.name)
        event_rows, event_bytes = table_sizes(storage_url, "event_logs")
    shown = {k: v for k, v in stats.items() if k != "per_second"}
    print(f"  reconcile {rec}; endpoint {shown}; failed runs {len(failed_runs)}; crashed {crashed}", flush=True)
    # When the sliding seconds over the cap came, beside when the upload runs started (both
    # in s after the first send): do over-cap arrivals follow the runs' start-ups?
    bursts = [round(t - counts["first_send"]) for t in over_cap_seconds(args.root / "datahub.db", cap)]
    starts = sorted(round(t - counts["first_send"]) for t in run_starts)
    print(f"  sliding seconds over the cap begin at {bursts[:40]}{' ...' if len(bursts) > 40 else ''}; "
          f"upload runs started at {starts}", flush=True)  # fmt: skip
    print(f"  peak RSS MB by kind: {watch.peak_mb}", flush=True)
    print(f"  sensor ticks (s): {sensors}", flush=True)

    upload_s = counts["last_ack"] - counts["first_send"]
    use = counts["acked"] / upload_s / cap
    wall = counts["last_ack"] - tick_at
    cpu_ms, busy = float("nan"), float("nan")
    if cpu_start:
        cpu_ms = 1000 * (cpu_end[0] - cpu_start[0]) / max(cpu_end[1] - cpu_start[1], 1)
        busy = (cpu_end[0] - cpu_start[0]) / max(cpu_end[2] - cpu_start[2], 1e-9) / (os.cpu_count() or 1)
    prepare_rss = max((v for k, v in watch.peak_mb.items() if "(prepare)" in k), default=0.0)
    contract = platform.contract()
    extract_s = steps.get(asset_name(contract, Stage.EXTRACT), float("nan"))
    snapshot_s = steps.get(asset_name(contract, Stage.SNAPSHOT), float("nan"))
    forecast_error = float("nan")
    if first_forecast is not None:
        predicted = first_forecast[1].timestamp() - first_forecast[0]
        measured = counts["last_ack"] - first_forecast[0]
        forecast_error = abs(predicted - measured) / measured
    slowest_sensor = max(sensors.values(), default=float("nan"))
    label = f"{args.rows:,} rows, {args.machines} machine(s), cap {cap}/s"
    results = [
        Result(
            "wall time, tick to last acknowledgement", wall, counts["acked"] / cap, "s",
            baseline_name="the batches at the cap",
            note=f"{label}; proof of delivery {proof_at - counts['last_ack']:.0f} s after the last acknowledgement",
        ),
        Result(
            "extract + snapshot", extract_s + snapshot_s, None, "s", target=f"<= {TARGETS['prepare_s']}",
            note=f"extract {extract_s:.1f} s, snapshot {snapshot_s:.1f} s; the prepare run {prepared_at - tick_at:.0f} s "
            "from the tick, queue and start-up included",
        ),
        Result("peak RSS, prepare steps", prepare_rss / 1024, None, "GB", target=f"<= {TARGETS['prepare_rss_gb']}"),
        Result(
            "upload phase: achieved / cap", use, None, "", target=f">= {TARGETS['cap_use']}",
            note=f"{counts['acked']:,} batches from the first send to the last ack, {upload_s:.0f} s, gaps between runs "
            f"included; queue wait median {over['queue_wait_s_median']:.0f} s, run start-up to first send median "
            f"{over['startup_s_median']:.1f} s (max {over['startup_s_max']:.1f} s), {len(upload_runs)} upload runs",
        ),
        Result("THROTTLED answers", stats["by_code"].get("THROTTLED", 0), stats["requests"], "", target="<= 0",
               baseline_name="requests"),
        Result("max arrivals in a sliding second", stats.get("max_arrived_per_sliding_second", 0), cap, "",
               target=f"<= {cap}", baseline_name="the raised cap"),
        Result(LOST_OR_UNEXPECTED, rec["missing"] + rec["unexpected"], None, "",
               target="<= 0", note=f"crash: {'one run worker SIGKILLed' if crashed else 'none'}; failed runs {len(failed_runs)}"),
        Result("planner forecast error at the first progress tick", forecast_error, None, "",
               target=f"<= {TARGETS['forecast_error']}",
               note=f"ETA {first_forecast[1]:%H:%M:%S} vs last ack at "
               f"{datetime.fromtimestamp(counts['last_ack'], timezone.utc):%H:%M:%S} UTC" if first_forecast else ""),
        Result("slowest sensor tick at the end of the day", slowest_sensor, None, "s",
               target=f"< {TARGETS['sensor_tick_s']}", note=", ".join(f"{k} {v:.2f}" for k, v in sorted(sensors.items()))),
        Result("machine CPU per batch, upload phase", cpu_ms, None, "ms",
               note="busy CPU of the whole machine (stack, Postgres, relays) / batches acknowledged meanwhile; the "
               f"cores were {busy:.0%} busy (near 100 %, the machine, not the cap, set the upload rate)"),
        Result("ledger after the day", ledger_bytes / 2**20, None, "MB", note=f"{ledger_rows:,} rows"),
        Result("event log after the day", event_bytes / 2**20, None, "MB", note=f"{event_rows:,} rows"),
        *[Result(f"peak RSS, {kind}", mb, None, "MB") for kind, mb in sorted(watch.peak_mb.items())],
    ]  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CI smoke run: 200k rows, 1 machine, 4 ranges, no crash")
    parser.add_argument("--rows", type=int, default=25_000_000)
    parser.add_argument("--ranges", type=int, default=32)
    parser.add_argument("--machines", type=int, default=4, help="simulated machines (network namespaces)")
    parser.add_argument("--speedup", type=int, default=4, help="the caps (endpoint and limiter) are 20 x this")
    parser.add_argument("--upload-runs", type=int, default=4, help="the fan-out's upload runs per date")
    parser.add_argument("--crash", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--day", default=business_date(), help="the business date (default: the one due today)")
    parser.add_argument("--database", default=SOURCE_DB)
    parser.add_argument("--sensor-wait-s", type=float, default=40)
    parser.add_argument("--timeout-s", type=float, default=2 * 3600)
    parser.add_argument("--root", type=Path, default=Path("/tmp/datahub-rehearsal"))
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args()
    if args.small:
        args.rows, args.machines, args.ranges, args.crash = 200_000, 1, 4, False
        args.database, args.sensor_wait_s = SOURCE_DB + "_small", 35
    # SIGTERM unwinds like Ctrl-C, so the platform stops what it started and removes the namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"rehearsal: {benchlib.machine_facts()}", flush=True)
    results = rehearse(args)
    benchlib.report("the reference day, rehearsed", results, args.md)
    lost = next(r for r in results if r.name == LOST_OR_UNEXPECTED)
    if lost.measured:
        raise SystemExit(f"{lost.measured:.0f} rows missing or unexpected at the endpoint")


if __name__ == "__main__":
    sys.exit(main())
