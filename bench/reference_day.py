"""The reference day (25M source rows): extract and conform against bare baselines.

    .venv/bin/python bench/reference_day.py            # 25,000,000 rows (long: run with nohup)
    .venv/bin/python bench/reference_day.py --small    # 500,000 rows, CI smoke run (< 60 s)

1. Source: synthetic rows (datahub_dev/synthetic.py `generate` + `write_table`,
   Postgres COPY) in the database `datahub_bench` (kept between runs and reused when the
   day already holds exactly --rows rows; --regenerate forces a new one).
2. Extract: `SourceDatabase.extract_day` (Postgres -> Parquet) vs. the bare
   `COPY (SELECT ...) TO STDOUT` of the same rows to a file. Target <= 1.5x.
3. Conform: `conform(...)` (extract Parquet -> snapshot + quarantine) vs. a bare polars
   read + write of the same extract (`pl.scan_parquet(...).sink_parquet(...)`). Target <= 2x.
Each step runs in its own fresh (spawned) process; its peak RSS is that process's
VmHWM. Target <= 4 GB per step. The Postgres server's own memory is not included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import Result  # noqa: E402

DAY = "2026-11-26"
TABLE = "user_profile"
SOURCE_DB = "datahub_bench"
GB = 1024.0  # MB per GB, for the RSS target


# ---------------------------------------------------------------- steps (each in a child)


def _step_result(started: float, **extra) -> dict:
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": benchlib.peak_rss_mb(), **extra}


def step_generate(url: str, rows: int, bad_share: float) -> dict:
    from datahub_dev.synthetic import generate, write_table

    started = time.perf_counter()
    frame = generate(rows, DAY, bad_share=bad_share)
    generated = time.perf_counter() - started
    write_table(frame, url, TABLE)
    return _step_result(started, generate_s=generated)


def step_copy_baseline(url: str, out_file: str) -> dict:
    """What the extract cannot beat: Postgres streaming the day's rows as CSV to a file."""
    import psycopg2

    started = time.perf_counter()
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        select = cur.mogrify(f'SELECT * FROM "{TABLE}" WHERE "snapshot_date" = %s', (DAY,)).decode()
        with open(out_file, "wb") as fh:
            cur.copy_expert(f"COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER true)", fh)
    finally:
        conn.close()
    return _step_result(started, bytes=os.path.getsize(out_file))


def step_extract(url: str, out_dir: str) -> dict:
    from datahub_assets.extract.sources import SourceDatabase

    started = time.perf_counter()
    rows = SourceDatabase(url=url).extract_day(table=TABLE, date_column="snapshot_date", day=DAY, out_dir=Path(out_dir))
    return _step_result(started, rows=rows)


def step_polars_copy(extract_dir: str, out_file: str) -> dict:
    """What the conform cannot beat: polars reading the extract and writing it back."""
    import polars as pl

    started = time.perf_counter()
    pl.scan_parquet(Path(extract_dir) / "*.parquet").sink_parquet(out_file)
    return _step_result(started)


def step_conform(extract_dir: str, snapshot: str, quarantine: str) -> dict:
    import polars as pl

    from datahub_assets.contract import load_contract
    from datahub_assets.snapshot.conform import conform

    contract = load_contract(benchlib.CONTRACT_PATH)
    started = time.perf_counter()
    stats = conform(contract, pl.scan_parquet(Path(extract_dir) / "*.parquet"), Path(snapshot), Path(quarantine))
    return _step_result(
        started,
        source_rows=stats.source_rows,
        snapshot_rows=stats.snapshot_rows,
        rejected_rows=stats.rejected_rows,
        duplicate_rows=stats.duplicate_rows,
    )


def step_validate_only(extract_dir: str, out_file: str) -> dict:
    """A floor for the conform: only the per-value checks and canonical forms, no sort."""
    import polars as pl

    from datahub_assets.contract import load_contract
    from datahub_assets.snapshot import conform as c

    contract = load_contract(benchlib.CONTRACT_PATH)
    pairs = [c._canonical_and_reason(col, contract.max_value_bytes) for col in contract.columns]
    started = time.perf_counter()
    (
        pl.scan_parquet(Path(extract_dir) / "*.parquet")
        .with_row_index(c.SOURCE_ROW)
        .with_columns(*[v for v, _ in pairs], pl.concat_str([r for _, r in pairs], separator="; ", ignore_nulls=True).alias(c.REASON))
        .sink_parquet(out_file)
    )
    return _step_result(started)


def step_sort_only(extract_dir: str, out_file: str) -> dict:
    """A floor for the conform: the day's (shuffled) rows sorted by id, nothing else."""
    import polars as pl

    started = time.perf_counter()
    (
        pl.scan_parquet(Path(extract_dir) / "*.parquet")
        .select("user_id", "user_name", "age", "screen_width")
        .sort("user_id")
        .sink_parquet(out_file)
    )
    return _step_result(started)


# ---------------------------------------------------------------- orchestration


def source_rows(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(TABLE):
                return -1
            return conn.execute(sa.text(f'SELECT count(*) FROM "{TABLE}" WHERE snapshot_date = :d'), {"d": DAY}).scalar()
    finally:
        engine.dispose()


def warm_table(url: str) -> None:
    """Read the table once so that neither the baseline nor the extract pays for a cold cache."""
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'SELECT count(*) FROM "{TABLE}"')).scalar()
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="500k rows: a CI smoke run")
    parser.add_argument("--rows", type=int, default=None, help="default 25,000,000 (500,000 with --small)")
    parser.add_argument("--bad-share", type=float, default=0.01)
    parser.add_argument("--database", default=None, help=f"source database (default {SOURCE_DB}[_small])")
    parser.add_argument("--workdir", type=Path, default=None, help="default /tmp/datahub-refday[-small]")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each timed step; the fastest counts")
    parser.add_argument("--steps", default="extract,conform,floors",
                        help="comma-separated subset of extract,conform,floors (floors: the conform's parts alone)")
    parser.add_argument("--md", type=Path, default=None, help="append the markdown rows to this file")
    args = parser.parse_args()

    rows = args.rows or (500_000 if args.small else 25_000_000)
    database = args.database or (SOURCE_DB + ("_small" if args.small else ""))
    workdir = args.workdir or Path("/tmp/datahub-refday" + ("-small" if args.small else ""))
    workdir.mkdir(parents=True, exist_ok=True)
    url = benchlib.pg_url(database)
    print(f"reference day: {rows:,} rows, database {database}, workdir {workdir}; {benchlib.machine_facts()}", flush=True)

    if not benchlib.pg_database_exists(database):
        benchlib.pg_admin_execute(f'CREATE DATABASE "{database}"')
    have = source_rows(url)
    if args.regenerate or have != rows:
        print(f"generating {rows:,} source rows (table had {have:,}) ...", flush=True)
        gen = benchlib.in_child(step_generate, url, rows, args.bad_share)
        print(f"  generated in {gen['generate_s']:.1f} s, written in {gen['seconds'] - gen['generate_s']:.1f} s, "
              f"peak RSS {gen['peak_rss_mb']:.0f} MB", flush=True)
    else:
        print("source table already holds the day: reused", flush=True)
    warm_table(url)

    csv_file = workdir / "baseline.csv"
    extract_dir = workdir / "extract"
    copy_file = workdir / "polars_copy.parquet"
    snapshot = workdir / "snapshot.parquet"
    quarantine = workdir / "quarantine.parquet"

    def best(fn, *fargs) -> dict:
        return benchlib.best_of(args.repeat, fn, *fargs)

    steps = set(args.steps.split(","))
    results = []
    limit_mb = 4 * GB
    if "extract" in steps:
        copy_base = best(step_copy_baseline, url, str(csv_file))
        extract = best(step_extract, url, str(extract_dir))
        csv_file.unlink(missing_ok=True)
        assert extract["rows"] == rows, (extract["rows"], rows)
        results += [
            Result(f"extract {rows / 1e6:g}M rows: seconds", extract["seconds"], copy_base["seconds"], "s",
                   target="<= 1.5", checked=extract["seconds"] / copy_base["seconds"],
                   baseline_name="COPY (SELECT ...) TO STDOUT to a file"),
            Result("extract: peak RSS", extract["peak_rss_mb"], copy_base["peak_rss_mb"], "MB",
                   target=f"<= {limit_mb:g}", baseline_name="the COPY baseline's process"),
        ]
    if "conform" in steps:
        polars_copy = best(step_polars_copy, str(extract_dir), str(copy_file))
        copy_file.unlink(missing_ok=True)
        conformed = best(step_conform, str(extract_dir), str(snapshot), str(quarantine))
        assert conformed["source_rows"] == rows, conformed
        print(
            f"  conform: {conformed['snapshot_rows']:,} snapshot rows, {conformed['rejected_rows']:,} rejected, "
            f"{conformed['duplicate_rows']:,} duplicates", flush=True,
        )
        results += [
            Result(f"conform {rows / 1e6:g}M rows: seconds", conformed["seconds"], polars_copy["seconds"], "s",
                   target="<= 2", checked=conformed["seconds"] / polars_copy["seconds"],
                   baseline_name="pl.scan_parquet(extract).sink_parquet(out)"),
            Result("conform: peak RSS", conformed["peak_rss_mb"], polars_copy["peak_rss_mb"], "MB",
                   target=f"<= {limit_mb:g}", baseline_name="the polars copy's process"),
        ]
    if "floors" in steps and "conform" in steps:
        scratch = workdir / "floor.parquet"
        validate = best(step_validate_only, str(extract_dir), str(scratch))
        resort = best(step_sort_only, str(extract_dir), str(scratch))
        scratch.unlink(missing_ok=True)
        results += [
            Result("conform floor: validation pass alone", validate["seconds"], polars_copy["seconds"], "s",
                   baseline_name="the polars copy", note="canonical forms + reasons of every value, no sort"),
            Result("conform floor: sort by id alone", resort["seconds"], polars_copy["seconds"], "s",
                   baseline_name="the polars copy", note="the 4 contract columns of the raw rows sorted by id, nothing else"),
        ]
    benchlib.report(f"reference day ({rows:,} rows)", results, args.md)
    if not args.small:
        print(f"(files kept in {workdir}; source table kept in database {database})")
    else:
        shutil.rmtree(extract_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
