"""The global rate limiter: one row in the delivery database that every uploading thread,
process and machine reserves its slots from, on the database's clock."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from datahub_assets.upload.database import NOW, insert, metadata

limiter_table = sa.Table(
    "rate_limiter",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("next_slot", sa.Float, nullable=False),  # epoch seconds, database clock
    # Seconds added to the spacing after THROTTLED answers; shrinks back slot by slot.
    sa.Column("slowdown", sa.Float, nullable=False, server_default="0"),
)


_MAX_LATE_RETAKES = 20  # bounds the loop; past it the caller sends in its (late) slot

# Feedback from the partner. Each THROTTLED answer, whichever machine got it, adds
# THROTTLED_KICK intervals to the spacing of every later slot (up to MAX_SLOWDOWN
# intervals); each slot taken keeps CREEP_BACK of the slowdown, so it halves in about
# 70 slots (3.5 s at the cap). One throttle so costs about KICK / (1 - CREEP_BACK) =
# 5 slots. At a steady share p of throttled requests the slowdown settles at 5p
# intervals: 0.1 interval (5 ms) at 2 %. It is a brake for a machine that stays loaded,
# not a cure for a rare late request: that is the margin's job.
THROTTLED_KICK = 0.05
CREEP_BACK = 0.99
MAX_SLOWDOWN = 0.5

# The share of the cap the limiter gives out: any cap+1 slots span 1/0.98 s, and the
# 20 ms over the partner's second absorb send-time jitter.
DEFAULT_HEADROOM = 0.98


class DatabaseClock:
    """This process's reading of the database's clock, learned from the limiter's own
    round trips, NTP-style.

    A slot is granted on the database's clock. The caller must sleep until it on its own
    clock, so it needs to know where the database's clock stands. Counting the wait from
    the moment the request left for the database is wrong by however long the database
    took to start the statement: on a loaded machine its process waits for a core, at times
    tens of ms (a p99 of 16-52 ms under two CPU burners, docs/performance.md), and the
    caller would then fire that much before its slot, among the requests of the slot
    before. Instead each round trip is a sample: the database's clock was read somewhere
    between sending and answering, so the quickest round trip of the last WINDOW_S
    bounds the offset most tightly (within half its duration, a fraction of a ms).
    """

    WINDOW_S = 30.0  # keeps up with drift and clock steps; many samples a second while sending

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (sent, round trip, offset), in increasing round trip: the sliding-window minimum.
        self._samples: deque[tuple[float, float, float]] = deque()

    def observe(self, sent: float, answered: float, database_time: float) -> None:
        """One round trip: sent and answered on time.monotonic(), the database's clock read in between."""
        round_trip = answered - sent
        sample = (sent, round_trip, database_time - (sent + answered) / 2)
        with self._lock:
            if self._samples:
                # Every round trip bounds the offset: [database_time - answered, database_time
                # - sent]. Two that do not overlap mean a clock was stepped: start again.
                _, best_round_trip, best = self._samples[0]
                low, high = database_time - answered, database_time - sent
                if best + best_round_trip / 2 < low or best - best_round_trip / 2 > high:
                    self._samples.clear()
            while self._samples and self._samples[-1][1] >= round_trip:
                self._samples.pop()
            self._samples.append(sample)
            while len(self._samples) > 1 and self._samples[0][0] < answered - self.WINDOW_S:
                self._samples.popleft()

    def local(self, database_time: float) -> float:
        """An instant on the database's clock, on this process's time.monotonic()."""
        with self._lock:
            return database_time - self._samples[0][2]


class RateLimiter:
    """A global spacing limiter, slowed down by the partner's THROTTLED answers.

    The partner counts requests when they *arrive*, in every sliding second. This
    limiter can only decide when a request *leaves*; the time in between (the SDK's
    encryption and signature, the HTTP hand-over, the scheduler) varies by a few ms
    quiet and by tens of ms on a loaded machine. So:

    - Spacing. One atomic UPDATE reserves the next slot for the caller, who then sleeps
      until it. Slots are `interval` = 1 / (cap x headroom) apart, so any cap+1 slots
      span 1 / headroom s: with headroom 0.98, 20 ms more than the partner's second.
      That margin is what a request may lose to the jitter between its slot and its
      arrival without pushing a sliding second over the cap. A caller that wakes too
      late for its slot does not use it (see `_take`), and none wakes early: the slot is
      read on the database's clock (`DatabaseClock`).
    - Feedback. A THROTTLED answer means the jitter beat the margin. `throttled()`
      widens the spacing of every later slot, on every machine (the slowdown lives in
      the shared row), and the spacing creeps back to `interval` slot by slot. A
      machine that is loaded for a while (jitter above the margin) so settles at a
      spacing that suits it, and goes back to full speed when the load goes.
    - Known lateness. A caller that knows its request will leave late (see
      `acquire(late_by_s=...)`) keeps the next caller out for that much longer.

    Both live in one row of the delivery database and run on the database's clock, so
    skewed machine clocks change nothing.

    Priority: a caller for the current day queues for the next slot. A backfill only
    takes a slot that is free right now, so it uses what the current day leaves over
    and never queues ahead of it.
    """

    def __init__(self, engine: sa.Engine, cap_per_second: float, headroom: float = DEFAULT_HEADROOM, name: str = "datahub"):
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
        self._clock = DatabaseClock()
        now = NOW[engine.dialect.name]
        t = limiter_table
        with engine.begin() as conn:
            stmt = insert(engine, t).values(name=name, next_slot=0.0, slowdown=0.0)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
        # `step` is how long the slot keeps the next caller out: one interval, or a
        # hold (see `exclusive`); the slowdown comes on top, and shrinks by CREEP_BACK.
        # RETURNING shows the row as updated, so the slowdown this slot paid is
        # slowdown / CREEP_BACK.
        step = sa.bindparam("step", type_=sa.Float)
        paid = t.c.slowdown / CREEP_BACK
        slot = sa.case((t.c.next_slot > now, t.c.next_slot), else_=now)
        granted = (t.c.next_slot - step - paid).label("slot")  # the slot's start, as updated
        self._reserve = (
            sa.update(t)
            .where(t.c.name == name)
            .values(next_slot=slot + step + t.c.slowdown, slowdown=t.c.slowdown * CREEP_BACK)
            .returning((t.c.next_slot - step - paid - now).label("wait"), t.c.next_slot, granted, now.label("now"))
        )
        self._take_if_free = (
            sa.update(t)
            .where(t.c.name == name, t.c.next_slot <= now)
            .values(next_slot=now + step + t.c.slowdown, slowdown=t.c.slowdown * CREEP_BACK)
            .returning(sa.literal(0.0, sa.Float).label("wait"), t.c.next_slot, granted, now.label("now"))
        )
        self._release_hold = (
            sa.update(t)
            .where(t.c.name == name, t.c.next_slot == sa.bindparam("held", type_=sa.Float))
            .values(next_slot=now + self.interval + t.c.slowdown)
        )
        widened = t.c.slowdown + THROTTLED_KICK * self.interval
        self._slow_down = (
            sa.update(t)
            .where(t.c.name == name)
            .values(
                slowdown=sa.case(
                    (widened > MAX_SLOWDOWN * self.interval, MAX_SLOWDOWN * self.interval), else_=widened
                )
            )
        )

    def _take(self, priority: bool, step: float) -> sa.Row:
        """Take a slot; sleep until it; return the limiter's row as left by us (`slot`: the
        slot's start; `next_slot`: where it left the next one).

        The slot is granted on the database's clock and slept until on this process's,
        through `DatabaseClock`: neither the statement's nor the commit's round trip
        moves it. A caller that wakes more than `late_tolerance` after its slot (the process was
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
                        self._clock.observe(asked, time.monotonic(), row.now)
                if row is not None:
                    break
                # A backfill polls with jitter so waiting callers don't move in lockstep.
                time.sleep(self.interval * (0.5 + random.random()))
            slot_at = self._clock.local(row.slot)
            pause = slot_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            late = time.monotonic() - slot_at
            if self.lateness_samples is not None and row.wait > 0:
                self.lateness_samples.append(late)
            if row.wait <= 0 or late <= self.late_tolerance:
                break
            self.late_retakes += 1
        return row

    def acquire(self, priority: bool, late_by_s: float = 0.0) -> float:
        """Block until the caller holds a slot; return its start (epoch seconds, the
        database's clock). Slots start at least `interval` apart, on every machine.

        late_by_s: how much later than usual the caller expects its request to leave
        after the slot (a cold JVM still compiling the SDK's code). The next slot comes
        that much later too, so the late request cannot bunch up with the next ones.
        """
        return self._take(priority, self.interval + max(late_by_s, 0.0)).slot

    @contextmanager
    def exclusive(self, priority: bool, max_hold_s: float = 2.0) -> Iterator[None]:
        """A slot that keeps every other caller out until the block ends (at most max_hold_s).

        For a call whose send time is unpredictable, such as the first call into a
        cold JVM (class loading, JIT: hundreds of ms): in a normal slot it would arrive
        late, among later slots' requests, and push that second over the cap.
        """
        held = self._take(priority, max_hold_s).next_slot
        try:
            yield
        finally:
            with self._engine.begin() as conn:
                conn.execute(self._release_hold, {"held": held})

    def throttled(self) -> None:
        """The partner answered THROTTLED: widen the spacing of every sender's later slots."""
        with self._engine.begin() as conn:
            conn.execute(self._slow_down)

    def slowdown(self) -> float:
        """The seconds the spacing is currently widened by (diagnostics, tests)."""
        with self._engine.connect() as conn:
            t = limiter_table
            return conn.execute(sa.select(t.c.slowdown).where(t.c.name == self.name)).scalar_one()
