"""The global rate limiter: one row in the delivery database that every uploading thread,
process and machine reserves its slots from, on the database's clock."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from datahub_assets.upload.database import NOW, insert, metadata

limiter_table = sa.Table(
    "rate_limiter",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("next_slot", sa.Float, nullable=False),  # epoch seconds, database clock
)


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
        now = NOW[engine.dialect.name]
        t = limiter_table
        with engine.begin() as conn:
            stmt = insert(engine, t).values(name=name, next_slot=0.0)
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


