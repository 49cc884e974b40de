"""Where a day's raw rows come from: a relational table or landing files (local or SFTP).

Extracts keep every value as text, exactly as the source had it; the snapshot decides
what is valid. Postgres is read with COPY ... TO STDOUT streamed into Parquet parts
while it arrives (never row by row in Python). MariaDB/MySQL (pymysql) and any other
SQLAlchemy database are read through a server-side cursor in bounded batches, each value
written as the text Postgres would print for the same value (docs/sources.md has the
type mapping), so that a contract behaves the same on every source.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import decimal
import fcntl
import os
import queue
import re
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import dagster as dg
import polars as pl
import sqlalchemy as sa
from pydantic import Field

from datahub_assets.sql import engine_url

_PART_ROWS = 500_000
# Rows per fetch from a server-side cursor: the Python objects of one fetch are all the
# driver holds at a time.
_FETCH_ROWS = 20_000
_MYSQL_BACKENDS = ("mysql", "mariadb")
DEFAULT_MAX_FIELD_BYTES = 2**20
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class SourceMissingError(FileNotFoundError):
    """The day's source file is not there (yet); the message names where it looked."""


class SourceFormatError(ValueError):
    """A landing file whose structure is broken; the message names the file and the
    problem, never a value."""


class SourceConnectionError(ConnectionError):
    """The source database refused or could not take the connection. The message names
    the database with its password masked, and the driver's reason."""


class SourceDatabase(dg.ConfigurableResource):
    """The wallet's relational source: PostgreSQL, MariaDB/MySQL (`mysql+pymysql://`, the
    `[mysql]` extra), or SQLite for the demo. Take `url` from an EnvVar: it may carry a
    password, which no message of this class ever shows."""

    url: str
    # CSV bytes per Parquet part of a Postgres extract: bounds the extract's memory.
    copy_part_bytes: int = Field(default=64 << 20, gt=0)

    def _engine(self) -> sa.Engine:
        url = sa.make_url(engine_url(self.url))
        if url.get_backend_name() not in _MYSQL_BACKENDS:
            return sa.create_engine(url)
        if "+" not in url.drivername:
            url = url.set(drivername=f"{url.drivername}+pymysql")
        if url.get_driver_name() != "pymysql":
            raise ValueError(
                f"MariaDB/MySQL sources are read with pymysql: write the URL as {url.get_backend_name()}+pymysql://…"
            )
        try:
            connect_args = _mysql_connect_args()
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "MariaDB/MySQL sources need pymysql: install the [mysql] extra (pip install 'datahub-assets[mysql]')"
            ) from None
        return sa.create_engine(url, connect_args=connect_args)

    def extract_day(
        self, *, table: str, date_column: str, day: str, out_dir: Path, columns: Sequence[str] | None = None
    ) -> int:
        """Write the day's rows, every value as text, as Parquet parts in out_dir; return the row count.

        `columns` names the columns to read, in order; None reads all of the table's.
        """
        if columns is not None:
            columns = [columns] if isinstance(columns, str) else list(columns)
            if not columns or len(set(columns)) != len(columns):
                raise ValueError(f"extract of {table!r}: columns must be a non-empty list of distinct names")
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        engine = self._engine()
        try:
            if engine.dialect.name == "postgresql":
                return self._copy_postgres(engine, table, date_column, day, columns, out_dir, self.copy_part_bytes)
            return self._read_batches(engine, table, date_column, day, columns, out_dir)
        finally:
            engine.dispose()

    @staticmethod
    def _copy_postgres(
        engine: sa.Engine, table: str, date_column: str, day: str, columns: list[str] | None, out_dir: Path, part_bytes: int
    ) -> int:
        from psycopg2 import sql

        conn = _connect(engine, engine.raw_connection)
        try:
            cur = conn.cursor()
            # Identifiers quoted and the date bound by psycopg2, never formatted in by hand.
            select = sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
                sql.SQL("*") if columns is None else sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier(table),
                sql.Identifier(date_column),
            )
            copy = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(
                sql.SQL(cur.mogrify(select, (day,)).decode())
            )
            with _CsvToParquetParts(out_dir, part_bytes) as sink:
                cur.copy_expert(copy, sink.file)
        finally:
            conn.close()
        return pl.scan_parquet(out_dir / "*.parquet").select(pl.len()).collect().item()

    @staticmethod
    def _read_batches(
        engine: sa.Engine, table: str, date_column: str, day: str, columns: list[str] | None, out_dir: Path
    ) -> int:
        rows = 0
        with _connect(engine, engine.connect) as conn:
            names = columns if columns is not None else _column_names(conn, table)
            # Each dialect quotes the identifiers and binds the date its own way.
            source = sa.table(table, *(sa.column(n) for n in dict.fromkeys([*names, date_column])))
            query = sa.select(*(source.c[n] for n in names)).where(source.c[date_column] == sa.bindparam("day", day))
            result = conn.execution_options(stream_results=True, max_row_buffer=_FETCH_ROWS).execute(query)
            mysql_types = (
                [d[1] for d in result.cursor.description] if engine.dialect.name in _MYSQL_BACKENDS else None
            )
            with _ParquetParts(out_dir, names) as parts:
                for batch in result.partitions(_FETCH_ROWS):
                    values = list(zip(*batch))
                    if mysql_types is not None:
                        frame = _mysql_frame(names, mysql_types, values)
                    else:
                        frame = pl.DataFrame([_text_series(n, v) for n, v in zip(names, values)])
                    parts.add(frame)
                    rows += frame.height
        return rows


def _column_names(conn: sa.Connection, table: str) -> list[str]:
    """The table's columns, in order."""
    if conn.dialect.name not in _MYSQL_BACKENDS:
        return [c["name"] for c in sa.inspect(conn).get_columns(table)]
    # SQLAlchemy's MySQL reflection reads SHOW CREATE TABLE and leaves a backtick in a
    # name doubled; the catalogue holds the names as they are.
    catalogue = sa.table(
        "COLUMNS", *(sa.column(c) for c in ("TABLE_SCHEMA", "TABLE_NAME", "COLUMN_NAME", "ORDINAL_POSITION")),
        schema="information_schema",
    )
    names = conn.execute(
        sa.select(catalogue.c.COLUMN_NAME)
        .where(catalogue.c.TABLE_SCHEMA == sa.func.database(), catalogue.c.TABLE_NAME == table)
        .order_by(sa.cast(catalogue.c.ORDINAL_POSITION, sa.Integer))
    ).scalars().all()
    if not names:
        raise sa.exc.NoSuchTableError(table)
    return list(names)


def _connect(engine: sa.Engine, connect: Callable[[], Any]) -> Any:
    """connect(), with a refused connection raised as SourceConnectionError."""
    try:
        return connect()
    except (sa.exc.DBAPIError, engine.dialect.loaded_dbapi.Error) as error:
        # raw_connection() raises the driver's own error, connect() SQLAlchemy's wrapper.
        reason = error.orig if isinstance(error, sa.exc.DBAPIError) else error
        # `from None`: the message carries what the driver said; the URL only masked.
        raise SourceConnectionError(
            f"cannot connect to the source database {engine.url.render_as_string(hide_password=True)}: "
            f"{type(reason).__name__}: {str(reason).strip()}"
        ) from None


def _mysql_connect_args() -> dict[str, Any]:
    import pymysql.converters

    return {
        # Emoji and other 4-byte characters come through whole.
        "charset": "utf8mb4",
        # No decoders: every value arrives as the server's text (binary ones as bytes), so
        # DECIMAL and BIGINT UNSIGNED stay exact and zero dates cannot become objects.
        "conv": {k: v for k, v in pymysql.converters.conversions.items() if not isinstance(k, int)},
        # TIMESTAMP values as UTC, whatever the server's zone; a slow reader (writing a
        # part) must not make the server give up on a streaming result.
        "init_command": "SET time_zone = '+00:00', net_write_timeout = 600",
    }


class _ParquetParts:
    """Frames of text columns gathered into part-NNNNN.parquet files of about
    _PART_ROWS rows; an empty day still makes one (empty) part with the columns. On an
    error the parts written so far are removed."""

    def __init__(self, out_dir: Path, names: list[str]):
        self._out_dir = out_dir
        self._schema = {n: pl.String for n in names}
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._parts = 0

    def __enter__(self) -> _ParquetParts:
        return self

    def add(self, frame: pl.DataFrame) -> None:
        self._pending.append(frame)
        self._pending_rows += frame.height
        if self._pending_rows >= _PART_ROWS:
            self._flush()

    def _flush(self) -> None:
        frame = pl.concat(self._pending) if self._pending else pl.DataFrame(schema=self._schema)
        frame.write_parquet(self._out_dir / f"part-{self._parts:05d}.parquet", compression=_PART_COMPRESSION)
        self._parts += 1
        self._pending, self._pending_rows = [], 0

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc is None and (self._pending or self._parts == 0):
            self._flush()
        if exc is not None:
            for part in self._out_dir.glob("part-*.parquet"):
                part.unlink(missing_ok=True)


# --- values as text, the way Postgres prints them ----------------------------------------


def _double_text(x: float) -> str:
    """A double as Postgres' float8 output writes it: the shortest digits that read back
    as the same double, in fixed notation for 1e-4 <= |x| < 1e15 ("0.1", "123456789",
    "-0") and in exponent notation otherwise ("1e+15", "1.5e-05")."""
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    text = repr(x)  # the same shortest digits; Python's notation switches at 1e16
    if text.endswith(".0"):
        text = text[:-2]
    if 1e15 <= abs(x) < 1e16:
        sign, fixed = ("-", text[1:]) if text[0] == "-" else ("", text)
        digits = fixed.replace(".", "").rstrip("0")
        text = f"{sign}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e+15"
    return text


def _fraction_trimmed(text: str) -> str:
    """'12:34:56.500000' -> '12:34:56.5', '12:34:56.000000' -> '12:34:56' (Postgres' form)."""
    if "." not in text:
        return text
    return text.rstrip("0").rstrip(".")


def _bytes_text(b: bytes | bytearray | memoryview) -> str:
    return "\\x" + bytes(b).hex()  # bytea's hex output


def _decimal_text(d: decimal.Decimal) -> str:
    return format(d, "f")  # exact, never "1E-8"


def _datetime_text(t: dt.datetime | dt.time) -> str:
    return _fraction_trimmed(t.isoformat(sep=" ") if isinstance(t, dt.datetime) else t.isoformat())


_TEXT_OF: dict[type, Callable[[Any], str]] = {
    bool: lambda b: "t" if b else "f",
    int: str,
    float: _double_text,
    decimal.Decimal: _decimal_text,
    dt.datetime: _datetime_text,
    dt.date: dt.date.isoformat,
    dt.time: _datetime_text,
    dt.timedelta: str,
    bytes: _bytes_text,
    bytearray: _bytes_text,
    memoryview: _bytes_text,
}


def _text_series(name: str, values: Sequence[Any]) -> pl.Series:
    """A column of Python values (any DB-API driver) as text."""
    try:
        return pl.Series(name, values, dtype=pl.String, strict=True)  # already text: the common case
    except (TypeError, pl.exceptions.PolarsError):
        pass
    return pl.Series(
        name, [None if v is None else v if type(v) is str else _TEXT_OF.get(type(v), str)(v) for v in values], dtype=pl.String
    )


# pymysql's field type codes (pymysql.constants.FIELD_TYPE) whose server text is not
# already Postgres' text for the same value.
_MYSQL_FLOATS = frozenset({4, 5})  # FLOAT, DOUBLE
_MYSQL_TEMPORAL = frozenset({7, 10, 11, 12, 14})  # TIMESTAMP, DATE, TIME, DATETIME, NEWDATE
_ZERO_DATE = "0000-00-00"


def _mysql_frame(names: list[str], types: list[int], columns: list[tuple]) -> pl.DataFrame:
    """One fetch of server text (pymysql without decoders) as a frame of text columns.

    DECIMAL, integers of any size (BIGINT UNSIGNED too), TINYINT(1), YEAR, ENUM, SET,
    JSON and character data are the server's text as is. DOUBLE/FLOAT: Postgres' float8
    text. DATETIME/TIMESTAMP/TIME: the fraction without trailing zeros. A zero date
    (0000-00-00, with or without a time) is null. Binary data: "\\x" and hex.
    """
    series = []
    for name, code, values in zip(names, types, columns or [()] * len(names)):
        if code in _MYSQL_FLOATS:
            values = [None if v is None else _double_text(float(v)) for v in values]
        try:
            s = pl.Series(name, values, dtype=pl.String, strict=True)
        except (TypeError, pl.exceptions.PolarsError):  # binary data arrives as bytes
            s = pl.Series(name, [None if v is None else _bytes_text(v) for v in values], dtype=pl.String)
        if code in _MYSQL_TEMPORAL:
            s = (
                pl.select(
                    pl.when(s.str.starts_with(_ZERO_DATE))
                    .then(None)
                    .otherwise(s.str.replace(r"(\.[0-9]*[1-9])0+$", "${1}").str.replace(r"\.0+$", ""))
                    .alias(name)
                )
                .to_series()
            )
        series.append(s)
    return pl.DataFrame(series)


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
        # The header's names as CSV defines them: polars keeps a doubled quote in a header
        # name doubled, so each chunk is read with these names instead.
        self._names: list[str] | None = None
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
                    self._names = next(csv.reader([header.decode()]))
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
                frame = pl.read_csv(chunk, infer_schema=False, new_columns=self._names)
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


class LandingConfigError(ValueError):
    """The landing source is configured unsafely or incompletely; the message says the fix."""


class LandingFiles(dg.ConfigurableResource):
    """Landing files for each date: CSV or Parquet, in a local folder or on an SFTP server.

    `url` is a local folder (`/data/landing`, `file:///data/landing`) or
    `sftp://user@host:port/folder`. Over SFTP the server's host key must be in
    `known_hosts`, and the credentials come from their own settings (take them from
    EnvVars), never from the URL.
    """

    url: str
    known_hosts: str = Field(default="", description="known_hosts file holding the SFTP server's host key")
    sftp_password: str = Field(default="", description="SFTP password (or give sftp_key_path)")
    sftp_key_path: str = Field(default="", description="SFTP private key file (or give sftp_password)")
    max_file_bytes: int = Field(
        default=16 * 2**30, gt=0, description="a larger landing file is refused before it is copied or downloaded"
    )
    max_field_bytes: int = Field(
        default=DEFAULT_MAX_FIELD_BYTES, gt=0, description="a CSV field (or header) longer than this fails the day before it is read"
    )

    def fetch(self, *, relative_path: str, dest_dir: Path) -> Path:
        """Bring the day's file to dest_dir and return its local path."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / Path(relative_path).name
        parsed = urlsplit(self.url)
        if parsed.scheme != "sftp":
            src = Path(unquote(parsed.path) if parsed.scheme == "file" else self.url) / relative_path
            if not src.is_file():
                raise SourceMissingError(f"landing file {src} does not exist")
            with src.open("rb") as source:
                self._check_size(src.name, os.fstat(source.fileno()).st_size)
                with dest.open("wb") as copy:
                    _copy_at_most(source, copy, self.max_file_bytes, src.name)
            return dest
        if parsed.password is not None:
            raise LandingConfigError(
                "DATAHUB_LANDING_URL carries a password: remove it from the URL and set DATAHUB_SFTP_PASSWORD "
                "(or DATAHUB_SFTP_KEY_PATH) instead"
            )
        if not self.known_hosts or not Path(self.known_hosts).is_file():
            raise LandingConfigError(
                f"SFTP needs the server's host key: set DATAHUB_SFTP_KNOWN_HOSTS to a known_hosts file holding "
                f"{parsed.hostname}'s key (checked with the server's operator); "
                + ("it is not set" if not self.known_hosts else f"{self.known_hosts} does not exist")
            )
        asyncio.run(self._sftp_get(parsed, f"{parsed.path.rstrip('/')}/{relative_path}", dest))
        return dest

    async def _sftp_get(self, parsed: SplitResult, remote: str, dest: Path) -> None:
        import asyncssh

        where = f"{parsed.hostname}:{parsed.port or 22}"
        try:
            async with asyncssh.connect(
                parsed.hostname,
                port=parsed.port or 22,
                username=unquote(parsed.username or ""),
                password=self.sftp_password or None,
                client_keys=[self.sftp_key_path] if self.sftp_key_path else None,
                known_hosts=self.known_hosts,
            ) as conn, conn.start_sftp_client() as sftp:
                if not await sftp.exists(remote):
                    raise SourceMissingError(f"landing file {remote} does not exist on {parsed.hostname}")
                name = Path(remote).name
                self._check_size(name, (await sftp.stat(remote)).size or 0)
                # Counted as it arrives too: a file still growing on the server is cut off.
                async with sftp.open(remote, "rb") as source:
                    with dest.open("wb") as copy:
                        copied = 0
                        while chunk := await source.read(_COPY_CHUNK):
                            copied += len(chunk)
                            if copied > self.max_file_bytes:
                                raise _too_large(name, self.max_file_bytes)
                            copy.write(chunk)
        except asyncssh.HostKeyNotVerifiable:
            raise LandingConfigError(
                f"the SFTP server at {where} presented a host key that is not in {self.known_hosts} "
                "(DATAHUB_SFTP_KNOWN_HOSTS): refused. If the server's key changed, confirm its fingerprint "
                "with the server's operator before adding it."
            ) from None
        except asyncssh.PermissionDenied:
            raise LandingConfigError(
                f"the SFTP server at {where} refused the credentials (DATAHUB_SFTP_PASSWORD or DATAHUB_SFTP_KEY_PATH)"
            ) from None


    def _check_size(self, name: str, size: int) -> None:
        if size > self.max_file_bytes:
            raise _too_large(name, self.max_file_bytes, size)


_COPY_CHUNK = 4 * 2**20


def _too_large(name: str, limit: int, size: int | None = None) -> SourceFormatError:
    has = f"{size:,} bytes" if size is not None else "more"
    return SourceFormatError(
        f"landing file {name} has {has}, over the limit of {limit:,} bytes (LandingFiles.max_file_bytes): refused"
    )


def _copy_at_most(source: Any, copy: Any, limit: int, name: str) -> None:
    copied = 0
    while chunk := source.read(_COPY_CHUNK):
        copied += len(chunk)
        if copied > limit:
            raise _too_large(name, limit)
        copy.write(chunk)


def landing_file_to_parquet(
    path: Path, out_dir: Path, columns: Sequence[str] | None = None, *, max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
) -> int:
    """Convert a landing file to the extract's Parquet, every column as text; with
    `columns`, only those of them the file has (the rest never reach the lake).

    CSV is decoded as lossy UTF-8 so that one bad byte quarantines one row (the
    snapshot spots the replacement character) instead of failing the whole day. A file
    whose structure is broken (no header, a repeated column, a record with more or
    fewer fields than the header, an unbalanced quote, a field or header longer than
    `max_field_bytes`) fails the day with SourceFormatError instead: polars would pad a
    short record with nulls, so a file cut off mid-write would deliver partial rows.
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    if path.suffix == ".parquet":
        frame = pl.scan_parquet(path).select(pl.all().cast(pl.String))
    elif path.suffix == ".csv":
        _check_csv_records(path, max_field_bytes)
        frame = pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")
    else:
        raise ValueError(f"landing file {path.name}: only .csv and .parquet are supported")
    if columns is not None:
        present = set(frame.collect_schema().names())
        frame = frame.select([c for c in columns if c in present])
    try:
        frame.sink_parquet(out_dir / "part-00000.parquet")
    except pl.exceptions.PolarsError as error:
        # `from None`: polars' message quotes the offending field, and the error is
        # stored in the run's event log.
        raise SourceFormatError(
            f"landing file {path.name} cannot be read as {path.suffix[1:]} ({type(error).__name__})"
        ) from None
    return pl.scan_parquet(out_dir / "*.parquet").select(pl.len()).collect().item()


def _check_csv_records(path: Path, max_field_bytes: int) -> None:
    """Raise SourceFormatError unless every record has the header's fields (blank lines
    aside), the header names each column once, and no field or header is longer than
    `max_field_bytes`. One pass, in bounded memory. Messages name no value."""
    with path.open("rb") as raw:
        # A header that does not end within the limit is refused before the CSV reader
        # gathers it (it holds a whole record in memory).
        first_line = raw.readline(max_field_bytes + 1)
        if len(first_line) > max_field_bytes and not first_line.endswith(b"\n"):
            raise SourceFormatError(
                f"landing file {path.name}: its header row is longer than {max_field_bytes:,} bytes "
                "(LandingFiles.max_field_bytes): refused"
            )
    csv.field_size_limit(max_field_bytes)
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        # Lines are read at most `longest` characters at a time, so that a line of any
        # length costs bounded memory; no valid record has a longer line.
        longest = max_field_bytes + 2

        def lines() -> Iterator[str]:
            while line := f.readline(longest):
                if len(line) == longest and not line.endswith(("\n", "\r")):
                    raise SourceFormatError(
                        f"landing file {path.name}: a record near line {reader.line_num + 1} is longer than the "
                        f"header's fields at {max_field_bytes:,} characters each (LandingFiles.max_field_bytes): refused"
                    )
                yield line

        reader = csv.reader(lines(), strict=True)
        try:
            header = next(reader, None)
            if not header:
                raise SourceFormatError(f"landing file {path.name} is empty: it has no header row")
            repeated = sorted(name for name, n in Counter(header).items() if n > 1)
            if repeated:
                # A file without its header row makes its first record the "header": only
                # names that look like identifiers are quoted, never values.
                named = [name for name in repeated if _IDENTIFIER.fullmatch(name)]
                raise SourceFormatError(
                    f"landing file {path.name}: the header names {len(repeated)} column(s) more than once"
                    + (f": {named}" if len(named) == len(repeated) else " (a file without its header row?)")
                )
            # A field of n characters takes at most 2n + 3 in the file (quoted, quotes doubled).
            longest = len(header) * (2 * max_field_bytes + 3)
            widths = Counter(map(len, reader))
        except csv.Error as error:
            if "field larger than field limit" in str(error):
                raise SourceFormatError(
                    f"landing file {path.name}: a field near line {reader.line_num} is longer than "
                    f"{max_field_bytes:,} characters (LandingFiles.max_field_bytes): refused"
                ) from None
            raise SourceFormatError(
                f"landing file {path.name}: malformed CSV near line {reader.line_num} ({error})"
            ) from None
    wrong = sum(n for width, n in widths.items() if width not in (0, len(header)))
    if wrong:
        raise SourceFormatError(
            f"landing file {path.name}: {wrong} record(s) do not have the header's {len(header)} fields "
            "(a truncated file, or a value with an unquoted separator)"
        )
