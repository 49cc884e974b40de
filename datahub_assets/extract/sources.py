"""Where a day's raw rows come from: a relational table or landing files (local or SFTP).

Extracts keep every value as text, exactly as the source had it; the snapshot decides
what is valid. Postgres is read with COPY ... TO STDOUT streamed into Parquet parts
while it arrives (never row by row in Python); any other SQLAlchemy database is read in
Arrow batches.
"""

from __future__ import annotations

import asyncio
import csv
import fcntl
import os
import queue
import shutil
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import dagster as dg
import polars as pl
import sqlalchemy as sa
from pydantic import Field

from datahub_assets.sql import create_engine

_PART_ROWS = 500_000


class SourceMissingError(FileNotFoundError):
    """The day's source file is not there (yet); the message names where it looked."""


class SourceFormatError(ValueError):
    """A landing file whose structure is broken; the message names the file and the
    problem, never a value."""


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SourceDatabase(dg.ConfigurableResource):
    """The wallet's relational source (PostgreSQL in production, SQLite for the demo)."""

    url: str
    # CSV bytes per Parquet part of a Postgres extract: bounds the extract's memory.
    copy_part_bytes: int = Field(default=64 << 20, gt=0)

    def _engine(self) -> sa.Engine:
        return create_engine(self.url)

    def extract_day(self, *, table: str, date_column: str, day: str, out_dir: Path) -> int:
        """Write the day's rows, all columns as text, as Parquet parts in out_dir; return the row count."""
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        engine = self._engine()
        try:
            if engine.dialect.name == "postgresql":
                return self._copy_postgres(engine, table, date_column, day, out_dir, self.copy_part_bytes)
            return self._read_batches(engine, table, date_column, day, out_dir)
        finally:
            engine.dispose()

    @staticmethod
    def _copy_postgres(engine: sa.Engine, table: str, date_column: str, day: str, out_dir: Path, part_bytes: int) -> int:
        # The date is bound by Postgres' own literal quoting, never formatted in by hand.
        conn = engine.raw_connection()
        try:
            cur = conn.cursor()
            select = cur.mogrify(
                f"SELECT * FROM {_quote_ident(table)} WHERE {_quote_ident(date_column)} = %s", (day,)
            ).decode()
            with _CsvToParquetParts(out_dir, part_bytes) as sink:
                cur.copy_expert(f"COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER true)", sink.file)
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


_PIPE_READ_BYTES = 1 << 20
# The extract is read once, by the snapshot, right after: lz4 writes about twice as
# fast as the default zstd, for somewhat bigger files. The values are the same either way.
_PART_COMPRESSION = "lz4"


class _CsvToParquetParts:
    """A sink for COPY ... TO STDOUT (CSV with a header) that writes Parquet parts while
    Postgres is still streaming, instead of a whole CSV file first and Parquet after.

    psycopg2 writes the stream, one row per call, into a buffered pipe (C code, as cheap
    as writing a file). A reader thread cuts what comes out of the pipe into chunks of
    about `chunk_bytes` at record boundaries; a converter thread parses each chunk
    with polars (`read_csv`, every column as text: the same parser and options as
    `scan_csv` on the whole file) and writes it as part-NNNNN.parquet, in stream order.
    At most two chunks wait between the threads, so memory stays bounded. On any error
    the parts written so far are removed.
    """

    def __init__(self, out_dir: Path, chunk_bytes: int):
        read_fd, write_fd = os.pipe()
        try:  # a 1 MiB pipe (Linux; the default is 64 KiB): fewer wake-ups on both sides
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_READ_BYTES)
        except (AttributeError, OSError):
            pass
        self._out_dir = out_dir
        self._chunk_bytes = chunk_bytes
        self._reader_file = os.fdopen(read_fd, "rb", buffering=0)
        self.file = os.fdopen(write_fd, "wb", buffering=_PIPE_READ_BYTES)
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._read, name="extract-read", daemon=True),
            threading.Thread(target=self._convert, name="extract-convert", daemon=True),
        ]

    def __enter__(self) -> _CsvToParquetParts:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        try:
            self.file.close()  # EOF for the reader, which then hands over its last chunk
        finally:
            for t in self._threads:
                t.join()
            self._reader_file.close()
        if exc is not None or self._errors:
            for part in self._out_dir.glob("part-*.parquet"):
                part.unlink(missing_ok=True)
        if self._errors and exc is None:
            raise self._errors[0]

    def _read(self) -> None:
        buf = bytearray()
        header: bytes | None = None
        parts = 0
        try:
            while block := self._reader_file.read(_PIPE_READ_BYTES):
                if self._errors:
                    continue  # keep draining, so that the COPY can finish
                buf += block
                if header is None:
                    end = _record_end(buf)
                    if end < 0:
                        continue
                    header = bytes(buf[:end])
                    del buf[:end]
                if len(buf) >= self._chunk_bytes and (cut := _last_record_end(buf)) > 0:
                    with memoryview(buf) as view:
                        chunk = b"".join((header, view[:cut]))  # one copy
                    self._chunks.put(chunk)
                    del buf[:cut]
                    parts += 1
            if not self._errors and (buf or parts == 0):
                # The rest; with no rows, the header alone still makes the day's one (empty) part.
                self._chunks.put((header or b"") + bytes(buf))
        except BaseException as error:  # noqa: BLE001 - re-raised by __exit__
            self._errors.append(error)
            while self._reader_file.read(_PIPE_READ_BYTES):
                pass
        finally:
            self._chunks.put(None)

    def _convert(self) -> None:
        part = 0
        while (chunk := self._chunks.get()) is not None:
            if self._errors:
                continue  # keep taking chunks, so that the reader never blocks
            try:
                frame = pl.read_csv(chunk, infer_schema=False)
                del chunk
                frame.write_parquet(self._out_dir / f"part-{part:05d}.parquet", compression=_PART_COMPRESSION)
                part += 1
            except BaseException as error:  # noqa: BLE001 - re-raised by __exit__
                self._errors.append(error)


def _record_end(buf: bytearray) -> int:
    """The end (after its newline) of the first CSV record in buf, or -1.

    A newline ends a record only outside quotes: with quotes escaped by doubling, that
    is where the count of quote characters before it is even.
    """
    pos = 0
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return -1
        if buf.count(b'"', 0, nl) % 2 == 0:
            return nl + 1
        pos = nl + 1


def _last_record_end(buf: bytearray) -> int:
    """The end of the last complete CSV record in buf (which starts at a record), or 0."""
    quotes = buf.count(b'"')
    nl = len(buf)
    while True:
        nl = buf.rfind(b"\n", 0, nl)
        if nl < 0:
            return 0
        if (quotes - buf.count(b'"', nl)) % 2 == 0:
            return nl + 1


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
            src = Path(unquote(parsed.path) if parsed.scheme == "file" else self.url) / relative_path
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
    snapshot spots the replacement character) instead of failing the whole day. A file
    whose structure is broken (no header, a repeated column, a record with more or
    fewer fields than the header, an unbalanced quote) fails the day with
    SourceFormatError instead: polars would pad a short record with nulls, so a file
    cut off mid-write would deliver partial rows.
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    if path.suffix == ".parquet":
        frame = pl.scan_parquet(path).select(pl.all().cast(pl.String))
    elif path.suffix == ".csv":
        _check_csv_records(path)
        frame = pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")
    else:
        raise ValueError(f"landing file {path.name}: only .csv and .parquet are supported")
    try:
        frame.sink_parquet(out_dir / "part-00000.parquet")
    except pl.exceptions.PolarsError as error:
        # `from None`: polars' message quotes the offending field, and the error is
        # stored in the run's event log.
        raise SourceFormatError(
            f"landing file {path.name} cannot be read as {path.suffix[1:]} ({type(error).__name__})"
        ) from None
    return pl.scan_parquet(out_dir / "*.parquet").select(pl.len()).collect().item()


def _check_csv_records(path: Path) -> None:
    """Raise SourceFormatError unless every record has the header's fields (blank lines
    aside) and the header names each column once. Messages name no value."""
    csv.field_size_limit(2**31 - 1)  # a long value is the snapshot's to quarantine
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
            if not header:
                raise SourceFormatError(f"landing file {path.name} is empty: it has no header row")
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise SourceFormatError(f"landing file {path.name}: the header names {repeated} more than once")
            widths = Counter(map(len, reader))
        except csv.Error as error:
            raise SourceFormatError(
                f"landing file {path.name}: malformed CSV near line {reader.line_num} ({error})"
            ) from None
    wrong = sum(n for width, n in widths.items() if width not in (0, len(header)))
    if wrong:
        raise SourceFormatError(
            f"landing file {path.name}: {wrong} record(s) do not have the header's {len(header)} fields "
            "(a truncated file, or a value with an unquoted separator)"
        )
