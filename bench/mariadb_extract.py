"""The MariaDB extract (5M rows) against a bare driver fetch of the same query.

    .venv/bin/python bench/mariadb_extract.py            # 5,000,000 rows (a few minutes the first time)
    .venv/bin/python bench/mariadb_extract.py --small    # 100,000 rows, CI smoke run (< 30 s)

1. Source: synthetic rows (datahub_dev/synthetic.py `generate`, no broken rows) in a
   typed table (VARCHAR, BIGINT, DOUBLE, DATE, DATETIME(6) with microseconds) of the
   MariaDB database `datahub_bench` on 127.0.0.1:3306 (scripts/ensure_mariadb.sh),
   loaded with LOAD DATA LOCAL INFILE; kept between runs and reused when the day already
   holds exactly --rows rows (--regenerate forces a new one).
2. Extract: `SourceDatabase.extract_day` (MariaDB -> Parquet, every value as text)
   vs. pymysql's SSCursor running the same SELECT and dropping each fetchmany()
   (its default conversions to Python values included). Target <= 1.5x. Also shown:
   the same loop without decoders, which reads only the server's text, as the extract
   does: what the extract adds on top of the protocol.
Each step runs in its own fresh (spawned) process; its peak RSS is that process's
VmHWM. Target <= 1 GB for the extract. The server's own memory is not included.
"""

from __future__ import annotations

import argparse
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
COLUMNS = ["user_id", "user_name", "age", "screen_width", "snapshot_date", "updated_at"]
SELECT = f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE snapshot_date = %s"  # what the extract sends
FETCH_ROWS = 20_000
GB = 1024.0  # MB per GB, for the RSS target


def _step_result(started: float, **extra) -> dict:
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": benchlib.peak_rss_mb(), **extra}


def step_generate(url: str, rows: int) -> dict:
    import polars as pl
    import sqlalchemy as sa

    from datahub_dev.synthetic import generate, mysql_load_data

    started = time.perf_counter()
    frame = generate(rows, DAY).with_columns(
        # DATETIME(6) values with microseconds, some of them with trailing zeros.
        updated_at=pl.format("{} 0{}:{}.{}", pl.lit(DAY), pl.int_range(rows) % 10,
                             (pl.int_range(rows) % 60).cast(pl.String).str.zfill(2) + ":00",
                             (pl.int_range(rows) * 7919 % 1_000_000).cast(pl.String).str.zfill(6)),
    )
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
            conn.exec_driver_sql(
                f"CREATE TABLE {TABLE} (user_id VARCHAR(20), user_name VARCHAR(100), age BIGINT,"
                " screen_width DOUBLE, snapshot_date DATE, updated_at DATETIME(6), KEY (snapshot_date))"
                " CHARACTER SET utf8mb4"
            )
    finally:
        engine.dispose()
    mysql_load_data(url, frame.select(COLUMNS), TABLE)
    return _step_result(started)


def step_bare_fetch(url: str, decoders: bool = True) -> dict:
    """The driver streaming the same rows into nothing: with its default decoders (the
    baseline: what a plain pymysql reader does), or without them (the floor: the
    protocol alone, which the extract also reads, as text)."""
    import pymysql
    import pymysql.converters
    import pymysql.cursors
    import sqlalchemy as sa

    u = sa.make_url(url)
    conv = pymysql.converters.conversions
    if not decoders:
        conv = {k: v for k, v in conv.items() if not isinstance(k, int)}
    started = time.perf_counter()
    conn = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                           database=u.database, charset="utf8mb4", cursorclass=pymysql.cursors.SSCursor, conv=conv)
    rows = 0
    try:
        cur = conn.cursor()
        cur.execute(SELECT, (DAY,))
        while batch := cur.fetchmany(FETCH_ROWS):
            rows += len(batch)
        cur.close()
    finally:
        conn.close()
    return _step_result(started, rows=rows)


def step_extract(url: str, out_dir: str) -> dict:
    from datahub_assets.extract.sources import SourceDatabase

    started = time.perf_counter()
    rows = SourceDatabase(url=url).extract_day(
        table=TABLE, date_column="snapshot_date", day=DAY, out_dir=Path(out_dir), columns=COLUMNS
    )
    return _step_result(started, rows=rows)


def source_rows(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(TABLE) or "updated_at" not in {c["name"] for c in sa.inspect(conn).get_columns(TABLE)}:
                return -1
            return conn.exec_driver_sql(f"SELECT count(*) FROM {TABLE} WHERE snapshot_date = %s", (DAY,)).scalar()
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="100k rows: a CI smoke run")
    parser.add_argument("--rows", type=int, default=None, help="default 5,000,000 (100,000 with --small)")
    parser.add_argument("--database", default=None, help=f"source database (default {SOURCE_DB}[_small])")
    parser.add_argument("--workdir", type=Path, default=None, help="default /tmp/datahub-mariadb[-small]")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each timed step; the fastest counts")
    parser.add_argument("--md", type=Path, default=None, help="append the markdown rows to this file")
    args = parser.parse_args()

    from datahub_dev.scratch_db import mariadb_admin_execute, mariadb_url

    rows = args.rows or (100_000 if args.small else 5_000_000)
    database = args.database or (SOURCE_DB + ("_small" if args.small else ""))
    workdir = args.workdir or Path("/tmp/datahub-mariadb" + ("-small" if args.small else ""))
    workdir.mkdir(parents=True, exist_ok=True)
    url = mariadb_url(database)
    print(f"mariadb extract: {rows:,} rows, database {database}, workdir {workdir}; {benchlib.machine_facts()}", flush=True)

    mariadb_admin_execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
    have = source_rows(url)
    if args.regenerate or have != rows:
        print(f"loading {rows:,} source rows (table had {have:,}) ...", flush=True)
        gen = benchlib.in_child(step_generate, url, rows)
        print(f"  generated and loaded in {gen['seconds']:.1f} s, peak RSS {gen['peak_rss_mb']:.0f} MB", flush=True)
    else:
        print("source table already holds the day: reused", flush=True)

    extract_dir = workdir / "extract"

    def best(fn, *fargs) -> dict:
        return benchlib.best_of(args.repeat, fn, *fargs)

    best(step_bare_fetch, url)  # untimed: both timed steps read a warm buffer pool
    bare = best(step_bare_fetch, url)
    floor = best(step_bare_fetch, url, False)
    extract = best(step_extract, url, str(extract_dir))
    assert bare["rows"] == floor["rows"] == extract["rows"] == rows, (bare["rows"], floor["rows"], extract["rows"], rows)
    results = [
        Result(f"extract {rows / 1e6:g}M rows: seconds", extract["seconds"], bare["seconds"], "s",
               target="<= 1.5", checked=extract["seconds"] / bare["seconds"],
               baseline_name="pymysql SSCursor fetchmany() loop, rows dropped"),
        Result("extract: rows/s", rows / extract["seconds"], rows / bare["seconds"], "/s",
               baseline_name="the bare fetch"),
        Result("extract vs the protocol alone: seconds", extract["seconds"], floor["seconds"], "s",
               baseline_name="the same loop without decoders (server text)",
               note="what turning rows into text columns and Parquet adds"),
        Result("extract: peak RSS", extract["peak_rss_mb"], bare["peak_rss_mb"], "MB",
               target=f"<= {GB:g}", baseline_name="the bare fetch's process"),
    ]
    benchlib.report(f"MariaDB extract ({rows:,} rows)", results, args.md)
    shutil.rmtree(extract_dir, ignore_errors=True)
    if not args.small:
        print(f"(source table kept in MariaDB database {database})")


if __name__ == "__main__":
    main()
