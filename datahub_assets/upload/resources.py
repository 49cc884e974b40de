"""The delivery database as a Dagster resource: the ledger and the global limiter, in one
database shared by every uploader."""

from __future__ import annotations

import random
import threading
import time

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr

from datahub_assets.sql import create_engine
from datahub_assets.upload.database import metadata
from datahub_assets.upload.ledger import Ledger
from datahub_assets.upload.limiter import DEFAULT_HEADROOM, RateLimiter


def create_delivery_engine(url: str) -> sa.Engine:
    """An engine for the ledger and limiter, with the tables created if missing."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # WAL lets readers (sensors, the UI) run while uploads write.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    else:
        engine = create_engine(url, pool_size=16, max_overflow=8, pool_pre_ping=True)
    _create_tables(engine)
    _widen_partner_text(engine)
    _add_missing_columns(engine)
    return engine


# Columns added since the first release, created on databases that predate them.
ADDED_COLUMNS = {"upload_ledger": ("data_key_id",), "rate_limiter": ("slowdown",)}


def _add_missing_columns(engine: sa.Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for each added column a database lacks, with the
    column's type and server default. Idempotent; uploaders starting together may race
    to add it, and the loser finds it there."""
    for table, columns in ADDED_COLUMNS.items():
        present = {c["name"] for c in sa.inspect(engine).get_columns(table)}
        for name in columns:
            if name in present:
                continue
            column = metadata.tables[table].c[name]
            ddl = f'ALTER TABLE "{table}" ADD COLUMN "{name}" {column.type.compile(engine.dialect)}'
            if column.server_default is not None:
                ddl += f" NOT NULL DEFAULT {column.server_default.arg}"
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(ddl))
            except sa.exc.DBAPIError:
                if name not in {c["name"] for c in sa.inspect(engine).get_columns(table)}:
                    raise


# Columns that hold text the partner sends, unbounded in the schema; databases created
# when they were VARCHAR(64) are widened once, at engine creation.
PARTNER_TEXT_COLUMNS = {"upload_ledger": ("result_code", "trace_id")}


def _widen_partner_text(engine: sa.Engine) -> None:
    """ALTER ... TYPE TEXT the partner-text columns still declared with a length.

    Idempotent: it alters only columns that information_schema shows with a maximum
    length, and VARCHAR to TEXT rewrites no rows on PostgreSQL. SQLite ignores declared
    lengths, so there is nothing to do there.
    """
    if engine.dialect.name != "postgresql":
        return
    query = sa.text(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = :table AND column_name IN :columns AND character_maximum_length IS NOT NULL"
    ).bindparams(sa.bindparam("columns", expanding=True))
    for table, columns in PARTNER_TEXT_COLUMNS.items():
        with engine.begin() as conn:
            bounded = sorted(conn.execute(query, {"table": table, "columns": list(columns)}).scalars())
            if bounded:
                alters = ", ".join(f'ALTER COLUMN "{c}" TYPE TEXT' for c in bounded)
                conn.execute(sa.text(f'ALTER TABLE "{table}" {alters}'))


def _create_tables(engine: sa.Engine, tries: int = 5) -> None:
    """Create the tables if missing. Uploaders start together (one process per range), and
    CREATE TABLE IF NOT EXISTS can still collide in both databases; after a collision
    the tables exist, so trying again settles it."""
    for attempt in range(1, tries + 1):
        try:
            metadata.create_all(engine)
            return
        except sa.exc.DBAPIError:
            if attempt == tries:
                raise
            time.sleep(0.05 * attempt * (1 + random.random()))


class DeliveryDatabase(dg.ConfigurableResource):
    """The ledger and the global limiter, in one database shared by every uploader.

    `url` is a SQLAlchemy URL: sqlite:///path for one machine, postgresql://... in
    production (take it from an EnvVar: it may carry a password).
    """

    url: str
    cap_per_second: float = 20.0  # the partner's cap across all machines
    headroom: float = DEFAULT_HEADROOM  # share of the cap used: the margin absorbs send-time jitter

    _engine = PrivateAttr(default=None)
    _lock = PrivateAttr(default_factory=threading.Lock)

    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                self._engine = create_delivery_engine(self.url)
            return self._engine

    def ledger(self) -> Ledger:
        return Ledger(self.engine())

    @property
    def limiter_rate(self) -> float:
        """Batches/s the limiter gives out, across all machines."""
        return self.cap_per_second * self.headroom

    def limiter(self) -> RateLimiter:
        return RateLimiter(self.engine(), self.cap_per_second, self.headroom)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
