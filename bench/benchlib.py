"""Shared plumbing for the benchmark scripts in bench/ (not a benchmark itself).

Every script prints a results table (measured number, its baseline from the same run,
the ratio, the target and whether it is met) and one markdown row per figure, which
`--md FILE` also appends to a file. Loopback traffic only; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python bench/NAME.py` puts bench/, not the repo, first
    sys.path.insert(0, str(REPO_ROOT))

from datahub_assets.contract import DEFAULT_CONTRACTS_DIR  # noqa: E402  (after the path fix above)
from datahub_dev.scratch_db import pg_admin_execute, pg_url, scratch_database  # noqa: E402,F401

CONTRACT_PATH = DEFAULT_CONTRACTS_DIR / "user_profile.yaml"


@dataclass
class Result:
    """One row of a results table."""

    name: str
    measured: float
    baseline: float | None
    unit: str
    target: str = ""  # e.g. ">= 0.975"; the comparison is applied to `checked`
    checked: float | None = None  # the value the target is about (default: measured)
    baseline_name: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.measured / self.baseline

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        op, _, bound = self.target.partition(" ")
        value = self.measured if self.checked is None else self.checked
        bound_f = float(bound)
        return {"<=": value <= bound_f, ">=": value >= bound_f, "<": value < bound_f, ">": value > bound_f}[op]


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def command_line() -> str:
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO_ROOT), *sys.argv[1:]])


def report(title: str, results: list[Result], md_path: Path | None = None) -> None:
    """Print the table and the markdown rows; append the rows to md_path if given."""
    print()
    print(f"== {title}  ({machine_facts()})")
    header = f"{'figure':<44} {'measured':>12} {'baseline':>12} {'ratio':>8} {'target':>12} {'met':>5}"
    print(header)
    print("-" * len(header))
    for r in results:
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        print(
            f"{r.name:<44} {fmt(r.measured) + ' ' + r.unit:>12} {fmt(r.baseline):>12} "
            f"{fmt(r.ratio, 3):>8} {r.target:>12} {met:>5}"
        )
        if r.baseline_name or r.note:
            print(f"{'':<4}baseline: {r.baseline_name or '-'}; {r.note}".rstrip("; "))
    cmd = command_line()
    lines = []
    for r in results:
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        lines.append(
            f"| {r.name} | {fmt(r.measured)} {r.unit} | {fmt(r.baseline)} ({r.baseline_name or '-'}) | "
            f"{fmt(r.ratio, 3)} | {r.target or '-'} | {met} | `{cmd}` |"
        )
    print()
    print("markdown rows (| figure | measured | baseline | ratio | target | met | command |):")
    for line in lines:
        print(line)
    if md_path:
        with open(md_path, "a") as fh:
            fh.write(f"<!-- {time.strftime('%Y-%m-%d %H:%M:%S')} {machine_facts()} -->\n")
            fh.write("\n".join(lines) + "\n")


def machine_facts() -> str:
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} CPUs, python {platform.python_version()}, load {load:.2f}"


def cpu_s() -> float:
    """User + system CPU seconds of this process, every thread (JVM threads included)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads, grouped by thread name (digits dropped)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        name = "".join(c for c in name if not c.isdigit()).rstrip("-# ") or "?"
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_cpu_diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0.005}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_sdk_jar() -> Path:
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build_sdk.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def pg_database_exists(name: str) -> bool:
    import sqlalchemy as sa

    from datahub_assets.sql import create_engine

    admin = create_engine(pg_url("postgres"))
    try:
        with admin.connect() as conn:
            return conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is not None
    finally:
        admin.dispose()


@contextlib.contextmanager
def endpoint_with_keys(workdir: Path, cap: int, latency_median_ms: float = 0.0, latency_jitter_ms: float = 0.0):
    """The local endpoint (subprocess, loopback) and a registered keys.properties."""
    from datahub_dev.stack import register_keys
    from datahub_emulator.client import EmulatorProcess

    extra = ["--latency-median-ms", str(latency_median_ms), "--latency-jitter-ms", str(latency_jitter_ms)]
    endpoint = EmulatorProcess(
        db_path=workdir / "datahub.db", cap=cap, extra_args=extra, log_path=workdir / "datahub.log"
    )
    with endpoint:
        keys = workdir / "keys" / "keys.properties"
        register_keys(endpoint.url, keys, [CONTRACT_PATH])
        yield endpoint, keys


def remove_scratch(workdir: Path) -> None:
    """Drop the bulky files of a run (the endpoint's database, the Parquet files); keep the rest."""
    for pattern in ("datahub.db*", "*.parquet"):
        for f in workdir.glob(pattern):
            f.unlink(missing_ok=True)


def make_snapshot_batches(workdir: Path, batches: int, day: str, seed: int = 11):
    """Real batches: synthetic source rows -> conform (the snapshot) -> read_batches."""
    import polars as pl

    from datahub_assets.contract import load_contract
    from datahub_assets.partitions import BATCH_ROWS
    from datahub_assets.snapshot.conform import conform
    from datahub_assets.upload.batches import read_batches
    from datahub_dev.synthetic import generate

    contract = load_contract(CONTRACT_PATH)
    source = generate(batches * BATCH_ROWS, day, bad_share=0.0, seed=seed)
    extract = workdir / "extract.parquet"
    source.write_parquet(extract)
    snapshot = workdir / "snapshot.parquet"
    conform(contract, pl.scan_parquet(extract), snapshot, workdir / "quarantine.parquet")
    return contract, snapshot, read_batches(snapshot, range(batches))


def in_child(fn, *args, timeout_s: float = 3 * 3600) -> dict:
    """Run one step in a fresh spawned process (its own peak RSS), bounded in time."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply_async(fn, args).get(timeout=timeout_s)


def best_of(repeat: int, fn, *args) -> dict:
    """The fastest of `repeat` runs of a step, each in its own process, with the highest
    peak RSS of them; every run is printed."""
    import json

    runs = []
    for _ in range(max(1, repeat)):
        runs.append(in_child(fn, *args))
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in runs[-1].items()}
        print(f"  {fn.__name__}: {json.dumps(shown)}", flush=True)
    fastest = min(runs, key=lambda r: r["seconds"])
    fastest["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return fastest
