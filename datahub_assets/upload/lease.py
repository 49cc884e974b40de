"""One sender per (dataUuid, date, range): a lease in the delivery database.

A lease has an expiry on the database's clock and a fencing token that grows by one at
each grant. The holder renews it from a heartbeat thread, and every ledger write of an
attempt renews it in the same transaction, conditioned on the token: a holder that
lost its lease (paused past the expiry, or replaced) cannot record another attempt, so
it never sends one. A second uploader for a held range waits for the lease, or fails
naming the run that holds it.

The heartbeat also watches what the lease cannot see: a step process whose run worker
died, or whose run Dagster has already ended, stops sending by itself.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from datahub_assets.upload.database import NOW, insert, metadata

lease_table = sa.Table(
    "range_leases",
    metadata,
    sa.Column("data_uuid", sa.String(64), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("range_key", sa.String(16), primary_key=True),
    sa.Column("token", sa.Integer, nullable=False),  # the fencing token: +1 per grant
    sa.Column("holder", sa.Text, nullable=False),  # who holds it, for messages: run, pid and host
    sa.Column("run_id", sa.String(64)),  # the Dagster run holding it, if any
    sa.Column("expires_at", sa.Float, nullable=False),  # epoch seconds, database clock; 0 = released
)


class RangeHeldError(RuntimeError):
    """Another uploader holds the range; the message names it."""


class LeaseLostError(RuntimeError):
    """This uploader no longer holds its range: it must stop sending."""


@dataclass(frozen=True)
class RangeKey:
    data_uuid: str
    day: str
    range_key: str

    def where(self) -> sa.ColumnElement[bool]:
        t = lease_table
        return sa.and_(t.c.data_uuid == self.data_uuid, t.c.day == self.day, t.c.range_key == self.range_key)


class RangeLease:
    """A granted lease. `renew_in(conn)` fences a write; `check()` raises once it is lost."""

    def __init__(self, engine: sa.Engine, key: RangeKey, token: int, ttl_s: float):
        self._engine = engine
        self.key = key
        self.token = token
        self.ttl_s = ttl_s
        self._lost: str | None = None
        now = NOW[engine.dialect.name]
        t = lease_table
        self._renew = (
            sa.update(t)
            .where(key.where(), t.c.token == token, t.c.expires_at > now)
            .values(expires_at=now + ttl_s)
        )
        self._release = sa.update(t).where(key.where(), t.c.token == token).values(expires_at=0.0)

    def renew_in(self, conn: sa.Connection) -> None:
        """Extend the lease inside the caller's transaction, or raise LeaseLostError."""
        self.check()
        if conn.execute(self._renew).rowcount != 1:
            self.lose("its lease expired or was granted to another uploader")
            self.check()

    def renew(self) -> None:
        with self._engine.begin() as conn:
            self.renew_in(conn)

    def lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why

    @property
    def lost(self) -> str | None:
        return self._lost

    def check(self) -> None:
        if self._lost is not None:
            raise LeaseLostError(
                f"stopped sending range {self.key.range_key} of {self.key.day}: {self._lost}. "
                "Nothing is lost: a rerun resumes from the ledger."
            )

    def release(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(self._release)


def acquire_range_lease(
    engine: sa.Engine,
    key: RangeKey,
    holder: str,
    *,
    run_id: str | None = None,
    ttl_s: float = 30.0,
    wait_s: float = 0.0,
    poll_s: float = 1.0,
) -> RangeLease:
    """Take the range's lease, waiting up to wait_s for its holder to finish or expire."""
    t = lease_table
    now = NOW[engine.dialect.name]
    with engine.begin() as conn:
        conn.execute(
            insert(engine, t)
            .values(data_uuid=key.data_uuid, day=key.day, range_key=key.range_key, token=0, holder="", expires_at=0.0)
            .on_conflict_do_nothing(index_elements=["data_uuid", "day", "range_key"])
        )
    grant = (
        sa.update(t)
        .where(key.where(), t.c.expires_at <= now)
        .values(token=t.c.token + 1, holder=holder, run_id=run_id, expires_at=now + ttl_s)
        .returning(t.c.token)
    )
    deadline = time.monotonic() + wait_s
    while True:
        with engine.begin() as conn:
            token = conn.execute(grant).scalar()
            if token is None:
                current = conn.execute(sa.select(t.c.holder, (t.c.expires_at - now).label("left")).where(key.where())).one()
        if token is not None:
            return RangeLease(engine, key, token, ttl_s)
        if time.monotonic() >= deadline:
            raise RangeHeldError(
                f"range {key.range_key} of {key.day} is being sent by {current.holder} (its lease runs "
                f"{max(current.left, 0):.0f} s more unless renewed). Two senders on one range would send "
                "batches twice: wait for that run to end, or stop it, then run this range again."
            )
        time.sleep(poll_s)


@dataclass(frozen=True)
class AbandonedLease:
    run_id: str
    data_uuid: str
    day: str
    range_key: str
    silent_s: float  # since the lease expired: how long its holder has not renewed it


def abandoned_leases(engine: sa.Engine, run_ids: list[str]) -> list[AbandonedLease]:
    """Leases of these runs that expired without being released: their holder stopped
    renewing (its process is gone) without finishing."""
    if not run_ids:
        return []
    t = lease_table
    now = NOW[engine.dialect.name]
    query = sa.select(t.c.run_id, t.c.data_uuid, t.c.day, t.c.range_key, (now - t.c.expires_at).label("silent_s")).where(
        t.c.run_id.in_(run_ids), t.c.expires_at > 0, t.c.expires_at < now
    )
    with engine.connect() as conn:
        return [AbandonedLease(*row) for row in conn.execute(query)]


class LeaseKeeper:
    """Renews a lease every `every_s` until stopped, and gives it up when the process
    should not send any more: the moment its run worker (the parent of a step process)
    dies, and at the next beat once `run_is_over()` says Dagster has ended the run."""

    def __init__(
        self,
        lease: RangeLease,
        *,
        every_s: float,
        run_is_over: Callable[[], str | None],
        parent: multiprocessing.process.BaseProcess | None = None,
    ):
        self._lease = lease
        self._every_s = every_s
        self._run_is_over = run_is_over
        # The run worker, in a step process of the multiprocess executor; None when the
        # run worker sends itself (in-process executor, tests).
        self._parent = parent or multiprocessing.parent_process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="datahub-lease", daemon=True)
        # Written to at exit, so that the parent watch ends with the keeper.
        self._stopped, self._stopping = multiprocessing.Pipe(duplex=False)
        self._watch = threading.Thread(target=self._watch_parent, name="datahub-parent-watch", daemon=True)

    def __enter__(self) -> RangeLease:
        if self._parent is not None:
            self._watch.start()
        self._thread.start()
        return self._lease

    def _watch_parent(self) -> None:
        """Gives the range up as soon as the run worker dies (its sentinel becomes ready).
        Waiting for the next beat instead let an orphaned step send for up to a beat
        (2 s: 40 batches at the cap) into a run Dagster had already failed."""
        assert self._parent is not None
        ready = multiprocessing.connection.wait([self._parent.sentinel, self._stopped])
        if self._parent.sentinel in ready and not self._stop.is_set():
            self._lease.lose("its run worker is gone")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._stopping.send(None)
        self._thread.join()
        if self._watch.is_alive():
            self._watch.join()
        self._stopped.close()
        self._stopping.close()
        # The sender has drained: nothing of ours is in flight. Conditioned on our token,
        # so a lease granted to another uploader meanwhile stays theirs.
        self._lease.release()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            if self._lease.lost:
                return
            try:
                ended = self._run_is_over()
                if ended:
                    self._lease.lose(ended)
                    return
                self._lease.renew()
            except LeaseLostError:
                return
            except Exception:  # noqa: BLE001 - a database blip: the next beat tries again
                continue
