"""Realistic synthetic source data for the demo, the tests and the benchmarks.

Deterministic for a (seed, date): the same call writes the same rows. A controllable
share of rows is broken in the ways real sources break (a missing id, an age with
decimals or beyond 64 bits, a width that is NaN, infinite or not a number, a
control character in a name); `bad_row_kinds` lists them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import polars as pl
import sqlalchemy as sa
from psycopg2 import sql as psycopg2_sql

from datahub_assets.contract import Contract, PartnerType
from datahub_assets.sql import create_engine

BAD_ROW_KINDS = (
    ("user_id", None),
    ("age", "24.5"),
    ("age", "99999999999999999999"),
    ("screen_width", "NaN"),
    ("screen_width", "1e400"),
    ("screen_width", "wide"),
    ("user_name", "bad\x07name"),
)
_FIRST = ["alice", "bob", "chen", "dewi", "emre", "farah", "gita", "hiro", "ines", "juan", "kofi", "lina"]
_LAST = ["tan", "lim", "wong", "ng", "santos", "reyes", "kim", "park", "sato", "ali", "khan", "lee"]
_WIDTHS = [5.4, 5.8, 6.1, 6.1, 6.4, 6.5, 6.7, 6.9, 10.2, 12.9]

def generate(rows: int, day: str, bad_share: float = 0.0, seed: int = 7, version: int = 0) -> pl.DataFrame:
    """`rows` source rows for `day`; `bad_share` of them break the contract.

    `version` changes every row's updated_at (and a few ages), like a later day's
    source would; the ids stay the same.
    """
    def rnd(salt: int) -> pl.Expr:
        return pl.int_range(rows, dtype=pl.UInt64).hash(seed * 1_000_003 + salt)

    frame = pl.select(
        user_id=pl.format("2188{}", pl.int_range(rows).cast(pl.String).str.zfill(9)),
        user_name=pl.format(
            "{} {}",
            pl.lit(pl.Series(_FIRST)).gather(rnd(1) % len(_FIRST)),
            pl.lit(pl.Series(_LAST)).gather(rnd(2) % len(_LAST)),
        ),
        age=((rnd(3) % 62) + 16 + pl.when(rnd(9) % 50 == 0).then(version).otherwise(0)).cast(pl.String),
        screen_width=pl.lit(pl.Series(_WIDTHS)).gather(rnd(4) % len(_WIDTHS)).cast(pl.String),
        snapshot_date=pl.lit(day),
        updated_at=pl.format("{}T0{}:00:00", pl.lit(day), pl.lit(version % 10)),
    )
    if bad_share > 0:
        is_bad = (rnd(5) % 1_000_000) < int(bad_share * 1_000_000)
        kind = rnd(6) % len(BAD_ROW_KINDS)
        for i, (col, value) in enumerate(BAD_ROW_KINDS):
            frame = frame.with_columns(
                pl.when(is_bad & (kind == i)).then(pl.lit(value, pl.String)).otherwise(pl.col(col)).alias(col)
            )
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)  # sources are not sorted by id


# A broken value per partner type, as real sources break.
_BROKEN_BY_TYPE = {PartnerType.STRING: "bad\x07name", PartnerType.BIGINT: "24.5", PartnerType.DOUBLE: "NaN"}


def generate_for_contract(
    contract: Contract, rows: int, day: str, bad_share: float = 0.0, seed: int = 7
) -> pl.DataFrame:
    """`rows` source rows for `day` in the shape `contract` reads, whatever its columns:
    one text column per source column it reads (plus the table's date column), with
    values that fit each column's partner type; `bad_share` of the rows break one value
    (a missing id, or a value of the wrong kind). Deterministic for a (seed, day)."""

    def rnd(salt: int) -> pl.Expr:
        return pl.int_range(rows, dtype=pl.UInt64).hash(seed * 1_000_003 + salt)

    by_source = {c.source: c for c in contract.columns if c.source}
    values: dict[str, pl.Expr] = {}
    for salt, name in enumerate(contract.source_columns, start=10):
        column = by_source.get(name)
        if column is not None and column.name == "id":
            values[name] = pl.format("{}-{}", pl.lit(contract.dataset), pl.int_range(rows).cast(pl.String).str.zfill(9))
        elif name == contract.dedup_order_by:
            values[name] = pl.format("{}T0{}:00:00", pl.lit(day), (rnd(salt) % 10).cast(pl.String))
        elif column is not None and column.type is PartnerType.BIGINT:
            values[name] = ((rnd(salt) % 62) + 16).cast(pl.String)
        elif column is not None and column.type is PartnerType.DOUBLE:
            values[name] = pl.lit(pl.Series(_WIDTHS)).gather(rnd(salt) % len(_WIDTHS)).cast(pl.String)
        else:  # a String, or a column only an expression reads
            values[name] = pl.format(
                "{} {}",
                pl.lit(pl.Series(_FIRST)).gather(rnd(salt) % len(_FIRST)),
                pl.lit(pl.Series(_LAST)).gather(rnd(salt + 100) % len(_LAST)),
            )
    if contract.source.kind == "table":
        values[contract.source.date_column] = pl.lit(day)
    frame = pl.select(**values)

    breakable = [c for c in contract.columns if c.source]
    if bad_share > 0 and breakable:
        is_bad = (rnd(5) % 1_000_000) < int(bad_share * 1_000_000)
        which = rnd(6) % len(breakable)
        for i, column in enumerate(breakable):
            broken = None if column.name == "id" else _BROKEN_BY_TYPE[column.type]
            frame = frame.with_columns(
                pl.when(is_bad & (which == i)).then(pl.lit(broken, pl.String)).otherwise(pl.col(column.source)).alias(column.source)
            )
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)


def write_source(contract: Contract, frame: pl.DataFrame, day: str, *, source_db_url: str, landing_dir: Path) -> str:
    """Write a day's frame where `contract` reads it: its table in the source database,
    or its landing file. Returns where, for a message."""
    if contract.source.kind == "table":
        write_table(frame, source_db_url, table=contract.source.table, date_column=contract.source.date_column)
        return f"table {contract.source.table}"
    path = Path(landing_dir) / contract.source.pattern.format(date=day)
    write_landing_file(frame, path)
    return f"file {path.relative_to(landing_dir)}"


def write_table(frame: pl.DataFrame, url: str, table: str = "user_profile", date_column: str = "snapshot_date") -> None:
    """Replace the frame's day in a source table, creating the table if needed (every
    column TEXT, like a legacy source). Postgres is loaded with COPY, MariaDB/MySQL with
    LOAD DATA LOCAL INFILE, anything else with batched INSERTs."""
    mysql = sa.make_url(url).get_backend_name() in ("mysql", "mariadb")
    engine = create_engine(url)
    target = sa.Table(table, sa.MetaData(), *(sa.Column(c, sa.Text) for c in frame.columns))
    try:
        target.create(engine, checkfirst=True)
        day = frame[date_column].first() if frame.height else None
        if day is not None:
            with engine.begin() as conn:
                conn.execute(target.delete().where(target.c[date_column] == day))
        if engine.dialect.name == "postgresql":
            raw = engine.raw_connection()
            try:
                with tempfile.TemporaryFile() as buf:
                    frame.write_csv(buf)
                    buf.seek(0)
                    copy = psycopg2_sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv, HEADER true)").format(
                        psycopg2_sql.Identifier(table)
                    )
                    raw.cursor().copy_expert(copy, buf)
                raw.commit()
            finally:
                raw.close()
        elif mysql:
            mysql_load_data(url, frame, table)
        else:
            with engine.begin() as conn:
                for chunk in frame.iter_slices(50_000):
                    conn.execute(target.insert(), chunk.to_dicts())
    finally:
        engine.dispose()


def mysql_load_data(url: str, frame: pl.DataFrame, table: str) -> None:
    """Append the frame to an existing MariaDB/MySQL table with LOAD DATA LOCAL INFILE, in
    the server's own escaped text format (tab-separated, backslash escapes, \\N for
    null), so that any text, null and empty stay apart. Each value is converted by the
    server to its column's type."""
    escaped = frame.select(
        pl.col(c)
        .cast(pl.String)
        .str.replace_all("\\", "\\\\", literal=True)
        .str.replace_all("\t", "\\t", literal=True)
        .str.replace_all("\n", "\\n", literal=True)
        .fill_null("\\N")
        for c in frame.columns
    )
    engine = create_engine(url, connect_args={"local_infile": True, "charset": "utf8mb4"})
    quote = engine.dialect.identifier_preparer.quote
    load = (
        f"LOAD DATA LOCAL INFILE %s INTO TABLE {quote(table)} CHARACTER SET utf8mb4 "
        "FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
        f"({', '.join(quote(c) for c in frame.columns)})"
    ).replace("%", "%%").replace("%%s", "%s", 1)
    try:
        with tempfile.NamedTemporaryFile(suffix=".tsv") as buf:
            escaped.write_csv(buf.name, separator="\t", quote_style="never", include_header=False)
            with engine.begin() as conn:
                conn.exec_driver_sql(load, (buf.name,))
    finally:
        engine.dispose()


def write_landing_file(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic source rows for one day.")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--date", required=True, help="YYYY-MM-DD (GMT+8 business date)")
    parser.add_argument("--bad-share", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=7)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--db-url", help="SQLAlchemy URL of the source database")
    target.add_argument("--file", type=Path, help="landing file to write (.csv or .parquet)")
    parser.add_argument("--table", default="user_profile")
    args = parser.parse_args(argv)
    frame = generate(args.rows, args.date, args.bad_share, args.seed)
    if args.db_url:
        write_table(frame, args.db_url, args.table)
    else:
        write_landing_file(frame, args.file)
    print(f"wrote {frame.height} rows for {args.date}")  # CLI output: counts only


if __name__ == "__main__":
    main()
