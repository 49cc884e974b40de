"""The ledger and the global limiter on both backends (SQLite and the local PostgreSQL)."""

from __future__ import annotations

import threading
import time

import pytest

from datahub_assets.upload.ledger import Ledger
from datahub_assets.upload.limiter import RateLimiter
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
    lock = threading.Lock()

    def worker():
        for _ in range(per_thread):
            limiter.acquire(priority=priority)
            with lock:
                out.append(time.time())

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
    assert max_in_window(sorted(grants)) <= 20  # how much of the cap it uses is measured in bench/cap_use.py


def test_backfill_only_takes_slots_the_current_day_leaves(delivery_engine):
    limiter = RateLimiter(delivery_engine, cap_per_second=20, name="t2")
    current: list[float] = []
    backfill: list[float] = []
    stop = threading.Event()

    def backfiller():
        while not stop.is_set():
            limiter.acquire(priority=False)
            backfill.append(time.time())

    b = threading.Thread(target=backfiller, daemon=True)
    b.start()
    time.sleep(0.5)  # the backfill runs alone: it gets the slots
    before = len(backfill)
    _slots(limiter, threads=4, per_thread=10, priority=True, out=current)
    stop.set()
    b.join(timeout=2)
    during = [t for t in backfill if current[0] <= t <= current[-1]]
    assert before >= 5
    # While the current day saturates the cap, the backfill gets (almost) nothing.
    assert len(during) <= 2
    assert max_in_window(sorted(current + backfill)) <= 20


@pytest.mark.parametrize("headroom", [0.0, 1.5])
def test_limiter_rejects_a_nonsense_headroom(delivery_engine, headroom):
    with pytest.raises(ValueError):
        RateLimiter(delivery_engine, cap_per_second=20, headroom=headroom)
