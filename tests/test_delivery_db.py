"""The ledger and the global limiter on both backends (SQLite and the local PostgreSQL)."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from datahub_assets.upload.ledger import Ledger
from datahub_assets.upload.database import NOW
from datahub_assets.upload.limiter import (
    CREEP_BACK, MAX_SLOWDOWN, THROTTLED_KICK, DatabaseClock, RateLimiter, limiter_table,
)
from datahub_emulator.service import max_in_window

UUID = "6b42f8c92190425fa2d8d92ff723a11a"


def test_ledger_records_attempts_and_results(delivery_engine):
    ledger = Ledger(delivery_engine)
    ledger.mark_sending(UUID, "2026-11-26", 3, "h1")
    assert ledger.entries(UUID, "2026-11-26")[3].status == "P"
    ledger.record_result(UUID, "2026-11-26", 3, "U", "UNKNOWN_EXCEPTION", "111")
    ledger.mark_sending(UUID, "2026-11-26", 3, "h1")
    ledger.record_result(UUID, "2026-11-26", 3, "S", "SUCCESS", "222")
    ledger.mark_sending(UUID, "2026-11-26", 4, "h2")
    entries = ledger.entries(UUID, "2026-11-26", range(0, 4))
    assert list(entries) == [3]
    assert entries[3].status == "S" and entries[3].attempts == 2 and entries[3].content_hash == "h1"
    assert ledger.status_counts(UUID, "2026-11-26") == {"S": 1, "P": 1}
    assert ledger.status_counts(UUID, "2026-11-25") == {}


def _slots(
    limiter: RateLimiter, threads: int, per_thread: int, priority: bool, out: list[float]
) -> None:
    """Every slot the threads were granted, as the limiter granted it (database clock)."""
    lock = threading.Lock()

    def worker():
        for _ in range(per_thread):
            slot = limiter.acquire(priority=priority)
            with lock:
                out.append(slot)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def test_limiter_holds_the_cap_in_every_sliding_second(delivery_engine):
    limiter = RateLimiter(delivery_engine, cap_per_second=20, headroom=0.98, name="t1")
    grants: list[float] = []
    _slots(limiter, threads=8, per_thread=8, priority=True, out=grants)
    assert len(grants) == 64
    # The guarantee is the slots' spacing, on the database's clock. When a woken thread
    # gets the CPU back is the machine's: a clock read after acquire() returns can bunch
    # under load. How much of the cap it uses is measured in bench/cap_use.py.
    gaps = [b - a for a, b in zip(sorted(grants), sorted(grants)[1:])]
    assert min(gaps) >= limiter.interval - 1e-6
    assert max_in_window(sorted(grants)) <= 20


def _next_slot_and_now(engine: sa.Engine, name: str) -> tuple[float, float]:
    """The limiter's row and the database's clock, read in one statement."""
    t = limiter_table
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.c.next_slot, NOW[engine.dialect.name]).where(t.c.name == name)).one()
    return row[0], row[1]


def _in_thread(target) -> tuple[threading.Thread, threading.Event]:  # noqa: ANN001
    """Run target in a daemon thread; the event is set once it has returned.

    A caller a test leaves waiting (for a slot 1,000 s away) outlives the test and fails
    once the test's database is dropped under it. That failure ends the thread without
    setting the event, so any test still waiting on the event sees it; it is not raised
    into a later test.
    """
    done = threading.Event()

    def run() -> None:
        try:
            target()
        except Exception:  # noqa: BLE001
            return
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def test_a_backfill_takes_no_slot_while_a_priority_reservation_holds_the_next_one(delivery_engine):
    # One slot per 1000 s: a reservation keeps next_slot in the future for the whole test.
    limiter = RateLimiter(delivery_engine, cap_per_second=0.001, name="lanes")
    limiter.acquire(priority=True)  # the row is free: the slot is now, the next one 1000 s on
    next_slot, now = _next_slot_and_now(delivery_engine, "lanes")
    assert next_slot > now + 900

    # The backfill lane only takes a slot that is free now: it polls and never queues.
    _, took = _in_thread(lambda: limiter.acquire(priority=False))
    assert not took.wait(1.0)
    assert _next_slot_and_now(delivery_engine, "lanes")[0] == next_slot  # nothing reserved behind it

    # The priority lane queues behind the reservation instead: it reserves the next slot.
    _, queued = _in_thread(lambda: limiter.acquire(priority=True))
    deadline = time.monotonic() + 30
    while _next_slot_and_now(delivery_engine, "lanes")[0] == next_slot:
        assert time.monotonic() < deadline, "the priority caller reserved no slot"
        time.sleep(0.01)
    assert _next_slot_and_now(delivery_engine, "lanes")[0] == pytest.approx(next_slot + limiter.interval)
    assert not queued.is_set() and not took.is_set()


def test_a_backfill_takes_a_free_slot_at_once(delivery_engine):
    limiter = RateLimiter(delivery_engine, cap_per_second=0.001, name="free")
    _, took = _in_thread(lambda: limiter.acquire(priority=False))
    assert took.wait(30)
    next_slot, now = _next_slot_and_now(delivery_engine, "free")
    assert next_slot > now + 900  # and its slot now keeps everyone else out for one interval


def test_an_exclusive_hold_keeps_every_caller_out_until_it_ends(delivery_engine):
    limiter = RateLimiter(delivery_engine, cap_per_second=20, name="hold")
    with limiter.exclusive(priority=True, max_hold_s=3600):
        held, now = _next_slot_and_now(delivery_engine, "hold")
        assert held > now + 3000  # the hold, not one interval
        _, took = _in_thread(lambda: limiter.acquire(priority=False))
        assert not took.wait(1.0)
    # Released: the next slot is one interval after the release, and the backfill gets it.
    next_slot, now = _next_slot_and_now(delivery_engine, "hold")
    assert next_slot <= now + limiter.interval
    assert took.wait(30)


def test_an_exclusive_hold_that_was_overtaken_is_not_released_over_a_later_reservation(delivery_engine):
    # The hold ran past max_hold_s: another caller reserved after it. Ending the block
    # must not move the other caller's reservation.
    limiter = RateLimiter(delivery_engine, cap_per_second=0.001, name="overtaken")
    with limiter.exclusive(priority=True, max_hold_s=0.0):
        limiter.acquire(priority=True)  # free at once: the hold of 0 s is over
        after_other, _ = _next_slot_and_now(delivery_engine, "overtaken")
    assert _next_slot_and_now(delivery_engine, "overtaken")[0] == after_other


LATE_CALLER = """
import json, sys
from datahub_assets.upload.database import NOW
from datahub_assets.upload.limiter import RateLimiter, limiter_table
from datahub_assets.upload.resources import create_delivery_engine
limiter = RateLimiter(create_delivery_engine(sys.argv[1]), cap_per_second=20, name="late")
print("ready", flush=True)
sys.stdin.readline()
limiter.acquire(priority=True)
print(json.dumps({"late_retakes": limiter.late_retakes}), flush=True)
"""


def test_a_caller_that_wakes_late_gives_up_its_slot_and_takes_a_new_one(delivery_url, delivery_engine):
    # The caller runs in its own process, stopped (SIGSTOP) while it sleeps towards its
    # slot and resumed well past it: it wakes late whatever the machine's load.
    limiter = RateLimiter(delivery_engine, cap_per_second=20, name="late")
    caller = subprocess.Popen(
        [sys.executable, "-c", LATE_CALLER, delivery_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert caller.stdout.readline().strip() == "ready"
        # Its slot will be 2 s from now.
        with delivery_engine.begin() as conn:
            t = limiter_table
            now = NOW[delivery_engine.dialect.name]
            conn.execute(sa.update(t).where(t.c.name == "late").values(next_slot=now + 2.0))
        slot, _ = _next_slot_and_now(delivery_engine, "late")
        caller.stdin.write("go\n")
        caller.stdin.flush()
        deadline = time.monotonic() + 30
        while _next_slot_and_now(delivery_engine, "late")[0] == slot:  # until it reserved the slot
            assert time.monotonic() < deadline, "the caller reserved no slot"
            time.sleep(0.005)
        caller.send_signal(signal.SIGSTOP)
        while _next_slot_and_now(delivery_engine, "late")[1] < slot + 0.5:  # the database's clock
            time.sleep(0.05)
        caller.send_signal(signal.SIGCONT)
        out, _ = caller.communicate(timeout=30)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
    assert caller.returncode == 0
    assert json.loads(out) == {"late_retakes": 1}
    # The missed slot stays unused: the new one was taken after the wake-up.
    assert _next_slot_and_now(delivery_engine, "late")[0] > slot + 0.5 + limiter.interval


def test_a_reservation_the_database_starts_late_still_waits_for_its_whole_slot(delivery_engine):
    # On a loaded machine the database can start a statement tens of ms after it was
    # sent (its process waits for a core). The slot is on the database's clock, so a
    # caller that counted its wait from the moment it sent the statement would wake
    # that much early, among the previous slot's requests. Here every third reservation
    # is held 0.1 s before it reaches the database. The delivery database's clock is
    # this machine's, so time.time() when acquire() returns is comparable with the slot.
    limiter = RateLimiter(delivery_engine, cap_per_second=4, headroom=1.0, name="stalled")
    stalls = itertools.cycle([0.0, 0.0, 0.1])

    def hold(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("UPDATE RATE_LIMITER"):
            time.sleep(next(stalls))

    sa.event.listen(delivery_engine, "before_cursor_execute", hold)
    try:
        woke_early_by = []
        for _ in range(9):
            slot = limiter.acquire(priority=True)
            woke_early_by.append(slot - time.time())
    finally:
        sa.event.remove(delivery_engine, "before_cursor_execute", hold)
    # 20 ms covers the clock's reading (half the quickest round trip) and the clocks'
    # resolution; a wait counted from the send would wake 100 ms early.
    assert max(woke_early_by) < 0.02


def test_the_database_clock_is_read_from_the_quickest_round_trip_and_relearned_when_stepped():
    clock = DatabaseClock()
    clock.observe(sent=0.0, answered=0.001, database_time=1000.0005)  # offset 1000
    clock.observe(sent=1.0, answered=1.060, database_time=1001.0001)  # a slow answer, read near the send
    assert clock.local(1003.0) == pytest.approx(3.0, abs=0.001)
    clock.observe(sent=2.0, answered=2.001, database_time=3002.0005)  # the database's clock stepped 1000 s
    assert clock.local(3003.0) == pytest.approx(3.0, abs=0.001)


THROTTLED_CALLER = """
import sys
from datahub_assets.upload.limiter import RateLimiter
from datahub_assets.upload.resources import create_delivery_engine
limiter = RateLimiter(create_delivery_engine(sys.argv[1]), cap_per_second=20, name="kick")
limiter.throttled()
limiter.throttled()
"""


def test_a_throttled_answer_in_one_process_slows_every_sender_and_the_spacing_creeps_back(
    delivery_url, delivery_engine
):
    limiter = RateLimiter(delivery_engine, cap_per_second=20, name="kick")
    # Another process (another machine: the row is all they share) is answered THROTTLED twice.
    subprocess.run([sys.executable, "-c", THROTTLED_CALLER, delivery_url], check=True, timeout=60)
    slowdown = 2 * THROTTLED_KICK * limiter.interval
    assert limiter.slowdown() == pytest.approx(slowdown)

    # This process's next slot is widened by it: the slot after it comes one interval
    # plus the slowdown later, and the slowdown shrinks by CREEP_BACK.
    t = limiter_table
    with delivery_engine.begin() as conn:
        now = NOW[delivery_engine.dialect.name]
        conn.execute(sa.update(t).where(t.c.name == "kick").values(next_slot=now + 0.2))
    slot, _ = _next_slot_and_now(delivery_engine, "kick")
    limiter.acquire(priority=True)
    assert _next_slot_and_now(delivery_engine, "kick")[0] == pytest.approx(slot + limiter.interval + slowdown)
    assert limiter.slowdown() == pytest.approx(slowdown * CREEP_BACK)


def test_a_caller_that_will_send_late_keeps_the_next_caller_out_that_much_longer(delivery_engine):
    limiter = RateLimiter(delivery_engine, cap_per_second=20, name="late_by")
    t = limiter_table
    with delivery_engine.begin() as conn:
        now = NOW[delivery_engine.dialect.name]
        conn.execute(sa.update(t).where(t.c.name == "late_by").values(next_slot=now + 0.2))
    slot, _ = _next_slot_and_now(delivery_engine, "late_by")
    limiter.acquire(priority=True, late_by_s=0.3)
    assert _next_slot_and_now(delivery_engine, "late_by")[0] == pytest.approx(slot + limiter.interval + 0.3)


def test_the_slowdown_after_throttled_answers_is_bounded(delivery_engine):
    limiter = RateLimiter(delivery_engine, cap_per_second=20, name="bounded")
    for _ in range(int(MAX_SLOWDOWN / THROTTLED_KICK) + 5):
        limiter.throttled()
    assert limiter.slowdown() == pytest.approx(MAX_SLOWDOWN * limiter.interval)


def test_a_limiter_row_from_before_the_slowdown_column_gets_it(delivery_url):
    from datahub_assets.upload.resources import create_delivery_engine

    engine = create_delivery_engine(delivery_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE rate_limiter"))
            conn.execute(sa.text("CREATE TABLE rate_limiter (name VARCHAR(64) PRIMARY KEY, next_slot FLOAT NOT NULL)"))
            conn.execute(sa.text("INSERT INTO rate_limiter VALUES ('old', 5.0)"))
    finally:
        engine.dispose()
    engine = create_delivery_engine(delivery_url)
    try:
        limiter = RateLimiter(engine, cap_per_second=20, name="old")
        assert limiter.slowdown() == 0
        limiter.throttled()
        assert limiter.slowdown() > 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("headroom", [0.0, 1.5])
def test_limiter_rejects_a_nonsense_headroom(delivery_engine, headroom):
    with pytest.raises(ValueError):
        RateLimiter(delivery_engine, cap_per_second=20, headroom=headroom)


class _SlotRecorder(RateLimiter):
    """The real limiter; the slots it grants are kept for the test to read."""

    slots: list[float]

    def acquire(self, priority: bool, late_by_s: float = 0.0) -> float:
        slot = super().acquire(priority, late_by_s)
        self.slots.append(slot)
        return slot


def test_the_first_call_from_a_ranges_pool_keeps_the_next_slot_out_for_the_pools_opening(
    delivery_engine, datahub_endpoint, sdk_jar, keys_file, user_profile_uuid
):
    """While a range's pool opens, its threads convert and mark their first batches on the
    cores the first call needs to leave: the next slot waits for that."""
    import logging

    from datahub_assets.upload.batches import Batch
    from datahub_assets.upload.sdk import DataHubSdkResource
    from datahub_assets.upload.sender import POOL_OPENING_S, RangeSender, RetryPolicy

    sdk = DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(keys_file))
    sdk.start()
    limiter = _SlotRecorder(delivery_engine, cap_per_second=20, name="pool_opening")
    rows = [json.dumps({"id": f"{n}-{i}"}) for n in range(12) for i in range(3)]
    batches = [Batch(number=n, rows=rows[3 * n : 3 * n + 3], content_hash=f"h{n}") for n in range(12)]
    gaps_by_range = []
    for numbers in (range(6), range(6, 12)):  # two ranges, each with its own pool
        limiter.slots = []
        RangeSender(
            client=sdk, ledger=Ledger(delivery_engine), limiter=limiter, data_uuid=user_profile_uuid, day="2026-11-25",
            priority=True, threads=4, retry=RetryPolicy(max_attempts=1), log=logging.getLogger("test"),
        ).send([batches[n] for n in numbers])  # fmt: skip
        slots = sorted(limiter.slots)  # threads record them as they wake, not always in order
        gaps_by_range.append([b - a for a, b in zip(slots, slots[1:])])
    sdk.teardown_after_execution(None)

    for gaps in gaps_by_range:
        assert len(gaps) >= 4  # 5 or 6 slots: the process's very first call goes alone, outside acquire()
        assert gaps[0] >= limiter.interval + POOL_OPENING_S - 1e-6
        assert all(gap >= limiter.interval - 1e-6 for gap in gaps[1:])
