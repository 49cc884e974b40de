"""Send one range of a day's batches: a thread pool under the global limiter, with
every attempt and result in the ledger.

Outcomes: S is done. U, or an SDK exception, is retried with backoff and
jitter, and every retry takes a limiter slot. PARAM_ILLEGAL, DATA_CHECK_FAILED and
any other F are never retried blindly: the batch is marked failed and the others go
on, except after a refusal of the client's keys (signature, client, grant), which
every batch would meet: the range then stops sending. A crash loses nothing: the
ledger skips batches acknowledged with S and an unchanged content hash, so a rerun
re-sends at most the batches that were in flight.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from datahub_assets.upload.batches import Batch
from datahub_assets.upload.lease import RangeLease
from datahub_assets.upload.ledger import Ledger
from datahub_assets.upload.limiter import RateLimiter
from datahub_assets.upload.outcome import BatchStatus, UploadClient, UploadOutcome


# Set once any SDK call in this process has returned: from then on the JVM (one per
# process) is warm, and no later send needs to go alone.
_process_has_uploaded = threading.Event()


class _SdkWork:
    """How long the SDK works on the calling thread before its request leaves.

    The SDK encrypts every value and signs the request on the calling thread, and only
    then hands the request to its HTTP client. Warm, that is about 3 ms of CPU. While
    the JVM still compiles the SDK's code (the first minute or so of a process, longer
    on a busy machine) it is tens to hundreds of ms, and varies from call to call: a
    request that leaves that late can arrive among the requests of later slots. The
    CPU time of the latest call (the calling thread's, so time spent descheduled does
    not count) predicts the next one's; the limiter keeps the next caller out for the
    part of it beyond what its margin absorbs.
    """

    latest_cpu_s = 0.0  # one per process: the JVM's state is the process's
    # A bound on the extra spacing one call asks for: a longer pause would stall every
    # sender (and leave ranges without a ledger write, which renews their leases).
    MAX_LATE_BY_S = 0.5

    @classmethod
    def measure(cls, call):
        started = time.thread_time()
        try:
            return call()
        finally:
            cls.latest_cpu_s = time.thread_time() - started


_gc_frozen_lock = threading.Lock()
_gc_frozen_senders = 0


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """No full garbage collections over the objects that exist when sending starts.

    An upload process holds millions of long-lived objects (Dagster, SQLAlchemy,
    polars, the batches). Each full (generation 2) collection walks all of them with
    the GIL held, for up to a hundred milliseconds (docs/performance.md). A thread
    that wakes for its limiter slot during one wakes that much late, and its slot is
    lost (or, sent late, it bunches up with the next requests at the partner).
    gc.freeze() moves those objects out of the collector's sight; memory is still
    freed by reference counting, and they come back at the end of the last send.
    """
    global _gc_frozen_senders
    with _gc_frozen_lock:
        if _gc_frozen_senders == 0:
            gc.freeze()
        _gc_frozen_senders += 1
    try:
        yield
    finally:
        with _gc_frozen_lock:
            _gc_frozen_senders -= 1
            if _gc_frozen_senders == 0:
                gc.unfreeze()


THROTTLED = "THROTTLED"  # the partner's answer when its cap was exceeded
# When a range's thread pool opens, every thread converts its first batch to a Java list
# and marks it in the ledger at once, on the cores the first slot's call needs to leave:
# that call can leave tens of ms late and arrive among the next second's requests
# (docs/performance.md, "A range's pool opens without a burst"). The first call of a
# pool keeps the next slot out this much longer: 0.1 s of the cap a range, 3.2 s on a
# day of 32 ranges.
POOL_OPENING_S = 0.1
MAX_CALLS_PER_BATCH = 100  # bounds a batch's loop however often it is throttled


def pending_batches(ledger: Ledger, data_uuid: str, day: str, batches: list[Batch]) -> list[Batch]:
    """The batches not yet acknowledged with this exact content."""
    if not batches:
        return []
    numbers = range(batches[0].number, batches[-1].number + 1)
    acked = ledger.entries(data_uuid, day, numbers)
    return [
        b for b in batches
        if not ((e := acked.get(b.number)) and e.status is BatchStatus.SUCCESS and e.content_hash == b.content_hash)
    ]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0

    def throttled_delay(self) -> float:
        """After THROTTLED: the partner's window is one second; come back within it, spread."""
        return random.uniform(0.5, 1.5)

    def delay(self, attempt: int) -> float:
        """Equal jitter: at least half the exponential delay, so that the attempts of a
        batch outlast an outage of sum(delays) while callers still spread out."""
        d = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return d / 2 + random.uniform(0, d / 2)


@dataclass
class RangeReport:
    batches_total: int = 0
    batches_skipped: int = 0  # already acknowledged with the same content
    batches_sent: int = 0
    batches_failed: int = 0
    batches_not_sent: int = 0  # left unsent after the partner refused the client's keys
    attempts: int = 0
    retries: int = 0
    throttled: int = 0
    rows_sent: int = 0
    seconds: float = 0.0
    failed_codes: Counter = field(default_factory=Counter)
    failed_batches: list[int] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows_sent / self.seconds if self.seconds else 0.0


class RangeSender:
    def __init__(
        self,
        *,
        client: UploadClient,
        ledger: Ledger,
        limiter: RateLimiter,
        data_uuid: str,
        day: str,
        priority: bool,
        threads: int,
        retry: RetryPolicy,
        log: logging.Logger,
        progress_every_s: float = 10.0,
        lease: RangeLease | None = None,
    ):
        self._client = client
        self._lease = lease
        self._ledger = ledger
        self._limiter = limiter
        self._data_uuid = data_uuid
        self._day = day
        self._priority = priority
        self._threads = threads
        self._retry = retry
        self._log = log
        self._progress_every_s = progress_every_s
        self._lock = threading.Lock()
        self._report = RangeReport()
        self._keys_refused = threading.Event()
        self._pool_opened = False  # the pool's first slot is taken
        self._opening = threading.Lock()  # held while the pool takes its first slot

    def pending(self, batches: list[Batch]) -> list[Batch]:
        return pending_batches(self._ledger, self._data_uuid, self._day, batches)

    def send(self, batches: list[Batch]) -> RangeReport:
        report = self._report
        report.batches_total = len(batches)
        todo = self.pending(batches)
        report.batches_skipped = len(batches) - len(todo)
        started = time.monotonic()
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(started, len(todo), done), daemon=True)
        ticker.start()
        try:
            with _gc_frozen():
                first = 0
                if todo and not _process_has_uploaded.is_set():
                    # The first call of this process may be the first into a cold JVM (class
                    # loading, JIT): it goes alone, before the pool opens. Later sends in the
                    # same process (the in-process executor) find the JVM warm and skip the hold.
                    self._send_one(todo[0], alone=True)
                    first = 1
                with ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="datahub-upload") as pool:
                    # list() re-raises the first unexpected error (a bug, or the ledger down).
                    list(pool.map(self._send_one, todo[first:]))
        finally:
            done.set()
            ticker.join()
            report.seconds = time.monotonic() - started
        return report

    def _send_one(self, batch: Batch, alone: bool = False) -> None:
        if self._keys_refused.is_set():
            with self._lock:
                self._report.batches_not_sent += 1
            return
        attempt = 0  # attempts that count against the budget: THROTTLED ones do not
        calls = 0
        rows = self._client.prepare(batch.rows)  # before any slot: see _send_in_slot
        while True:
            attempt += 1
            calls += 1
            # Marked before the wait, so nothing but the SDK call sits between the slot
            # and the request: that keeps arrivals at the partner as evenly spaced as the slots.
            self._ledger.mark_sending(
                self._data_uuid, self._day, batch.number, batch.content_hash, self._lease, self._client.key_id
            )
            outcome = self._send_in_slot(rows, alone=alone and calls == 1)
            self._ledger.record_result(
                self._data_uuid, self._day, batch.number, outcome.status, outcome.code, outcome.trace_id
            )
            throttled = outcome.code == THROTTLED
            with self._lock:
                self._report.attempts += 1
                self._report.retries += calls > 1
                self._report.throttled += throttled
            if outcome.status is BatchStatus.SUCCESS:
                with self._lock:
                    self._report.batches_sent += 1
                    self._report.rows_sent += len(batch.rows)
                return
            if throttled:
                # Every sender slows down: the partner counted more than its cap.
                self._limiter.throttled()
            if throttled and calls < MAX_CALLS_PER_BATCH:
                # The partner refused it unseen, for the cap alone: not a failed attempt.
                attempt -= 1
                time.sleep(self._retry.throttled_delay())
                continue
            if outcome.status is BatchStatus.FAILED or attempt >= self._retry.max_attempts:
                if outcome.refuses_keys:
                    self._keys_refused.set()
                with self._lock:
                    self._report.batches_failed += 1
                    self._report.failed_codes[outcome.code] += 1
                    self._report.failed_batches.append(batch.number)
                # The traceId is in the ledger; the log names only the batch and the code.
                self._log.warning(
                    "batch %d ended %s/%s after %d call(s)", batch.number, outcome.status, outcome.code, calls
                )
                return
            time.sleep(self._retry.delay(attempt))

    def _send_in_slot(self, rows: object, alone: bool) -> UploadOutcome:
        """One SDK call in a limiter slot. Between the slot and the call there is only an
        in-memory lease check: the rows were converted (`prepare`) and the ledger marked
        before the slot, so the request leaves as soon after its slot as it can."""
        if alone:
            # Not measured: the first call's class loading is a one-off, not the next
            # call's send delay.
            with self._limiter.exclusive(priority=self._priority):
                outcome = self._upload(rows)
        else:
            late_by = min(_SdkWork.latest_cpu_s - self._limiter.late_tolerance, _SdkWork.MAX_LATE_BY_S)
            self._acquire(late_by)
            outcome = _SdkWork.measure(lambda: self._upload(rows))
        _process_has_uploaded.set()  # one call has run through the SDK: its code paths are warm
        return outcome

    def _acquire(self, late_by: float) -> None:
        """A slot. The pool's first one is reserved before any other thread of the pool
        reserves, and keeps the next slot out POOL_OPENING_S longer."""
        if not self._pool_opened:
            with self._opening:
                if not self._pool_opened:
                    self._limiter.acquire(priority=self._priority, late_by_s=max(late_by, POOL_OPENING_S))
                    self._pool_opened = True
                    return
        self._limiter.acquire(priority=self._priority, late_by_s=late_by)

    def _upload(self, rows: object) -> UploadOutcome:
        if self._lease is not None:
            self._lease.check()  # lost while waiting for the slot: send nothing more
        return self._client.upload(data_uuid=self._data_uuid, rows=rows)

    def _tick(self, started: float, total: int, done: threading.Event) -> None:
        """Progress at a steady cadence, not once per batch."""
        while not done.wait(self._progress_every_s):
            with self._lock:
                finished = self._report.batches_sent + self._report.batches_failed
                rows = self._report.rows_sent
            elapsed = max(time.monotonic() - started, 1e-9)
            rate = finished / elapsed
            eta = f"{(total - finished) / rate:.0f} s" if rate else "unknown"
            self._log.info("progress: %d/%d batches, %.0f rows/s, ETA %s", finished, total, rows / elapsed, eta)
