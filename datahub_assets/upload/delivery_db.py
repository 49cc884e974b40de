"""The delivery database: the upload ledger and the global rate limiter.

Both live in one database, SQLite by default and PostgreSQL in production, through the
same SQLAlchemy Core code; only the upsert construct and the "now" expression differ
by dialect. Every thread, process and machine that uploads shares it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr
from sqlalchemy.dialects import postgresql, sqlite

_metadata = sa.MetaData()

ledger_table = sa.Table(
    "upload_ledger",
    _metadata,
    sa.Column("data_uuid", sa.String(64), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("batch_no", sa.Integer, primary_key=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    # P = in flight (sent, no answer recorded yet), S / U / F = the partner's status.
    sa.Column("status", sa.String(1), nullable=False),
    sa.Column("result_code", sa.String(64)),
    sa.Column("trace_id", sa.String(64)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("first_sent_at", sa.Float),
    sa.Column("last_sent_at", sa.Float),
    sa.Column("acked_at", sa.Float),
)

limiter_table = sa.Table(
    "rate_limiter",
    _metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("next_slot", sa.Float, nullable=False),  # epoch seconds, database clock
)

# The database's clock, not the caller's: machines with skewed clocks still space
# their requests correctly.
_NOW = {
    "postgresql": sa.literal_column("extract(epoch from statement_timestamp())", sa.Float),
    "sqlite": sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Float),
}


def create_delivery_engine(url: str) -> sa.Engine:
    """An engine for the ledger and limiter, with the tables created if missing."""
    if url.startswith("postgresql://"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # WAL lets readers (sensors, the UI) run while uploads write.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    else:
        engine = sa.create_engine(url, pool_size=16, max_overflow=8, pool_pre_ping=True)
    _create_tables(engine)
    return engine


def _create_tables(engine: sa.Engine, tries: int = 5) -> None:
    """Create the tables if missing. Uploaders start together (one process per range), and
    CREATE TABLE IF NOT EXISTS can still collide in both databases; after a collision
    the tables exist, so trying again settles it."""
    for attempt in range(1, tries + 1):
        try:
            _metadata.create_all(engine)
            return
        except sa.exc.DBAPIError:
            if attempt == tries:
                raise
            time.sleep(0.05 * attempt * (1 + random.random()))


def _insert(engine: sa.Engine, table: sa.Table):
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


@dataclass(frozen=True)
class LedgerEntry:
    batch_no: int
    content_hash: str
    status: str
    result_code: str | None
    attempts: int


class Ledger:
    """One row per (dataUuid, day, batch): rerun-safe, since acknowledged batches are skipped."""

    def __init__(self, engine: sa.Engine):
        self._engine = engine
        # The two statements of every attempt are built once, with bound parameters:
        # building and cache-keying a fresh construct per call cost more CPU (and GIL
        # time, which delays the upload threads waking for their limiter slots) than
        # the round trip itself.
        t = ledger_table
        now = sa.bindparam("now", type_=sa.Float)
        content_hash = sa.bindparam("content_hash", type_=sa.String)
        self._mark_sending = _insert(engine, t).values(
            data_uuid=sa.bindparam("data_uuid", type_=sa.String), day=sa.bindparam("day", type_=sa.String),
            batch_no=sa.bindparam("batch_no", type_=sa.Integer), content_hash=content_hash,
            status="P", attempts=1, first_sent_at=now, last_sent_at=now,
        ).on_conflict_do_update(
            index_elements=["data_uuid", "day", "batch_no"],
            set_={"content_hash": content_hash, "status": "P", "attempts": t.c.attempts + 1, "last_sent_at": now, "acked_at": None},
        )
        self._record_result = (
            sa.update(t)
            .where(
                t.c.data_uuid == sa.bindparam("k_data_uuid", type_=sa.String),
                t.c.day == sa.bindparam("k_day", type_=sa.String),
                t.c.batch_no == sa.bindparam("k_batch_no", type_=sa.Integer),
            )
            .values(
                status=sa.bindparam("v_status", type_=sa.String), result_code=sa.bindparam("v_code", type_=sa.String),
                trace_id=sa.bindparam("v_trace_id", type_=sa.String), acked_at=sa.bindparam("v_acked_at", type_=sa.Float),
            )
        )

    def entries(self, data_uuid: str, day: str, batches: range | None = None) -> dict[int, LedgerEntry]:
        t = ledger_table
        query = sa.select(t.c.batch_no, t.c.content_hash, t.c.status, t.c.result_code, t.c.attempts).where(
            t.c.data_uuid == data_uuid, t.c.day == day
        )
        if batches is not None:
            query = query.where(t.c.batch_no >= batches.start, t.c.batch_no < batches.stop)
        with self._engine.connect() as conn:
            return {r.batch_no: LedgerEntry(*r) for r in conn.execute(query)}

    def mark_sending(self, data_uuid: str, day: str, batch_no: int, content_hash: str) -> None:
        """Written before each attempt, so a crash leaves the batch visibly in flight."""
        params = {"data_uuid": data_uuid, "day": day, "batch_no": batch_no, "content_hash": content_hash, "now": time.time()}
        with self._engine.begin() as conn:
            conn.execute(self._mark_sending, params)

    def record_result(self, data_uuid: str, day: str, batch_no: int, status: str, code: str, trace_id: str) -> None:
        params = {
            "k_data_uuid": data_uuid, "k_day": day, "k_batch_no": batch_no, "v_status": status, "v_code": code,
            "v_trace_id": trace_id, "v_acked_at": time.time() if status == "S" else None,
        }
        with self._engine.begin() as conn:
            conn.execute(self._record_result, params)

    def status_counts(self, data_uuid: str, day: str) -> dict[str, int]:
        t = ledger_table
        query = (
            sa.select(t.c.status, sa.func.count())
            .where(t.c.data_uuid == data_uuid, t.c.day == day)
            .group_by(t.c.status)
        )
        with self._engine.connect() as conn:
            return {status: n for status, n in conn.execute(query)}

    def acked_rate(self, data_uuid: str, day: str, window_s: float = 300.0) -> float:
        """Batches acknowledged per second over the last window: the measured rate."""
        t = ledger_table
        since = time.time() - window_s
        query = sa.select(sa.func.count(), sa.func.min(t.c.acked_at), sa.func.max(t.c.acked_at)).where(
            t.c.data_uuid == data_uuid, t.c.day == day, t.c.status == "S", t.c.acked_at >= since
        )
        with self._engine.connect() as conn:
            n, first, last = conn.execute(query).one()
        if n < 2 or last <= first:
            return 0.0
        return (n - 1) / (last - first)


_MAX_LATE_RETAKES = 20  # bounds the loop; past it the caller sends in its (late) slot


class RateLimiter:
    """A global spacing limiter: at most one slot every 1 / (cap x headroom) seconds.

    One atomic UPDATE reserves the next slot for the caller, who then sleeps until it.
    Consecutive slots are spaced by `interval`, so any cap+1 slots span at least
    cap x interval = 1 / headroom > 1 s: the cap holds in every sliding second with a
    margin for the jitter between taking a slot and the request's arrival.

    Priority: a caller for the current day queues for the next slot. A backfill only
    takes a slot that is free right now, so it uses what the current day leaves over
    and never queues ahead of it.
    """

    def __init__(self, engine: sa.Engine, cap_per_second: float, headroom: float = 0.98, name: str = "datahub"):
        if not 0 < headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        self._engine = engine
        self.name = name
        self.interval = 1.0 / (cap_per_second * headroom)
        # Any cap+1 slots span 1/headroom s: half of the margin over 1 s may go to a late
        # wake-up, the other half is left for the jitter between waking and arriving.
        self.late_tolerance = max((1.0 / headroom - 1.0) / 2, 0.001)
        self.late_retakes = 0  # slots given up because the caller woke too late (diagnostics)
        self.lateness_samples: list[float] | None = None  # set to a list to record each wake-up's lateness (s)
        now = _NOW[engine.dialect.name]
        t = limiter_table
        with engine.begin() as conn:
            stmt = _insert(engine, t).values(name=name, next_slot=0.0)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
        # `step` is how long the slot keeps the next caller out: one interval, or a
        # hold (see `exclusive`).
        step = sa.bindparam("step", type_=sa.Float)
        slot = sa.case((t.c.next_slot > now, t.c.next_slot), else_=now)
        self._reserve = (
            sa.update(t)
            .where(t.c.name == name)
            .values(next_slot=slot + step)
            .returning((t.c.next_slot - step - now).label("wait"), t.c.next_slot)
        )
        self._take_if_free = (
            sa.update(t)
            .where(t.c.name == name, t.c.next_slot <= now)
            .values(next_slot=now + step)
            .returning(sa.literal(0.0, sa.Float).label("wait"), t.c.next_slot)
        )
        self._release_hold = (
            sa.update(t)
            .where(t.c.name == name, t.c.next_slot == sa.bindparam("held", type_=sa.Float))
            .values(next_slot=now + self.interval)
        )

    def _take(self, priority: bool, step: float) -> float:
        """Take a slot; sleep until it; return the limiter's next_slot as left by us.

        The wait is counted from just before the statement (the database measures it
        from the statement's start), so the commit's round trip is not slept on top of it.
        A caller that wakes more than `late_tolerance` after its slot (the process was
        descheduled, or stalled) does not send in it: after a stall every waiting thread
        would fire at once, and those requests would bunch up at the partner and push
        that second over the cap. It takes a new slot instead; the missed slot stays unused.
        """
        for _ in range(_MAX_LATE_RETAKES + 1):
            while True:
                with self._engine.begin() as conn:
                    asked = time.monotonic()
                    row = conn.execute(self._reserve if priority else self._take_if_free, {"step": step}).first()
                if row is not None:
                    break
                # A backfill polls with jitter so waiting callers don't move in lockstep.
                time.sleep(self.interval * (0.5 + random.random()))
            slot_at = asked + max(row.wait, 0.0)
            pause = slot_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            late = time.monotonic() - slot_at
            if self.lateness_samples is not None and row.wait > 0:
                self.lateness_samples.append(late)
            if row.wait <= 0 or late <= self.late_tolerance:
                break
            self.late_retakes += 1
        return row.next_slot

    def acquire(self, priority: bool) -> None:
        """Block until the caller holds a slot."""
        self._take(priority, self.interval)

    @contextmanager
    def exclusive(self, priority: bool, max_hold_s: float = 2.0) -> Iterator[None]:
        """A slot that keeps every other caller out until the block ends (at most max_hold_s).

        For a call whose send time is unpredictable, such as the first call into a
        cold JVM (class loading, JIT: hundreds of ms): in a normal slot it would arrive
        late, among later slots' requests, and push that second over the cap.
        """
        held = self._take(priority, max_hold_s)
        try:
            yield
        finally:
            with self._engine.begin() as conn:
                conn.execute(self._release_hold, {"held": held})


class DeliveryDatabase(dg.ConfigurableResource):
    """The ledger and the global limiter, in one database shared by every uploader.

    `url` is a SQLAlchemy URL: sqlite:///path for one machine, postgresql://... in
    production (take it from an EnvVar: it may carry a password).
    """

    url: str
    cap_per_second: float = 20.0  # the partner's cap across all machines
    headroom: float = 0.98  # share of the cap used: the margin absorbs send-time jitter

    _engine = PrivateAttr(default=None)
    _lock = PrivateAttr(default_factory=threading.Lock)

    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                self._engine = create_delivery_engine(self.url)
            return self._engine

    def ledger(self) -> Ledger:
        return Ledger(self.engine())

    def limiter(self) -> RateLimiter:
        return RateLimiter(self.engine(), self.cap_per_second, self.headroom)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
