"""Where a day's raw rows come from: a relational table or landing files (local or SFTP).

Extracts keep every value as text, exactly as the source had it; the snapshot decides
what is valid. Postgres is read with COPY ... TO STDOUT streamed to disk (never row by
row in Python); any other SQLAlchemy database is read in Arrow batches.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import dagster as dg
import polars as pl
import sqlalchemy as sa
from pydantic import Field

_PART_ROWS = 500_000


class SourceMissingError(FileNotFoundError):
    """The day's source file is not there (yet); the message names where it looked."""


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SourceDatabase(dg.ConfigurableResource):
    """The wallet's relational source (PostgreSQL in production, SQLite for the demo)."""

    url: str

    def _engine(self) -> sa.Engine:
        url = self.url
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        return sa.create_engine(url)

    def extract_day(self, *, table: str, date_column: str, day: str, out_dir: Path) -> int:
        """Write the day's rows, all columns as text, as Parquet parts in out_dir; return the row count."""
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        engine = self._engine()
        try:
            if engine.dialect.name == "postgresql":
                return self._copy_postgres(engine, table, date_column, day, out_dir)
            return self._read_batches(engine, table, date_column, day, out_dir)
        finally:
            engine.dispose()

    @staticmethod
    def _copy_postgres(engine: sa.Engine, table: str, date_column: str, day: str, out_dir: Path) -> int:
        # The date is bound by Postgres' own literal quoting, never formatted in by hand.
        conn = engine.raw_connection()
        try:
            cur = conn.cursor()
            select = cur.mogrify(
                f"SELECT * FROM {_quote_ident(table)} WHERE {_quote_ident(date_column)} = %s", (day,)
            ).decode()
            with tempfile.NamedTemporaryFile(suffix=".csv", dir=out_dir) as tmp:
                cur.copy_expert(f"COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER true)", tmp)
                tmp.flush()
                frame = pl.scan_csv(tmp.name, infer_schema=False)
                frame.sink_parquet(out_dir / "part-00000.parquet")
        finally:
            conn.close()
        return pl.scan_parquet(out_dir / "*.parquet").select(pl.len()).collect().item()

    @staticmethod
    def _read_batches(engine: sa.Engine, table: str, date_column: str, day: str, out_dir: Path) -> int:
        query = sa.text(f"SELECT * FROM {_quote_ident(table)} WHERE {_quote_ident(date_column)} = :day")
        rows = 0
        with engine.connect() as conn:
            batches = pl.read_database(
                query, conn, iter_batches=True, batch_size=_PART_ROWS, execute_options={"parameters": {"day": day}}
            )
            for i, frame in enumerate(batches):
                frame.select(pl.all().cast(pl.String)).write_parquet(out_dir / f"part-{i:05d}.parquet")
                rows += frame.height
        if rows == 0:
            schema = {c["name"]: pl.String for c in sa.inspect(engine).get_columns(table)}
            pl.DataFrame(schema=schema).write_parquet(out_dir / "part-00000.parquet")
        return rows


class LandingFiles(dg.ConfigurableResource):
    """Landing files for each date: CSV or Parquet, in a local folder or on an SFTP server.

    `url` is a local folder (`/data/landing`) or `sftp://user:password@host:port/folder`;
    take it from an EnvVar, since it may carry a password.
    """

    url: str
    known_hosts: str = Field(default="", description="known_hosts file for SFTP; empty trusts any host key")

    def fetch(self, *, relative_path: str, dest_dir: Path) -> Path:
        """Bring the day's file to dest_dir and return its local path."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / Path(relative_path).name
        parsed = urlsplit(self.url)
        if parsed.scheme != "sftp":
            src = Path(parsed.path if parsed.scheme == "file" else self.url) / relative_path
            if not src.is_file():
                raise SourceMissingError(f"landing file {src} does not exist")
            shutil.copyfile(src, dest)
            return dest
        asyncio.run(self._sftp_get(parsed, f"{parsed.path.rstrip('/')}/{relative_path}", dest))
        return dest

    async def _sftp_get(self, parsed: SplitResult, remote: str, dest: Path) -> None:
        import asyncssh

        async with asyncssh.connect(
            parsed.hostname,
            port=parsed.port or 22,
            username=unquote(parsed.username or ""),
            password=unquote(parsed.password) if parsed.password else None,
            known_hosts=self.known_hosts or None,
        ) as conn, conn.start_sftp_client() as sftp:
            if not await sftp.exists(remote):
                raise SourceMissingError(f"landing file {remote} does not exist on {parsed.hostname}")
            await sftp.get(remote, str(dest))


def landing_file_to_parquet(path: Path, out_dir: Path) -> int:
    """Convert a landing file to the extract's Parquet, every column as text.

    CSV is decoded as lossy UTF-8 so that one bad byte quarantines one row (the
    snapshot spots the replacement character) instead of failing the whole day.
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    if path.suffix == ".parquet":
        frame = pl.scan_parquet(path).select(pl.all().cast(pl.String))
    elif path.suffix == ".csv":
        frame = pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")
    else:
        raise ValueError(f"landing file {path.name}: only .csv and .parquet are supported")
    frame.sink_parquet(out_dir / "part-00000.parquet")
    return pl.scan_parquet(out_dir / "*.parquet").select(pl.len()).collect().item()
