"""The upload ledger: one row per (dataUuid, day, batch), written before and after every
attempt. Rerun-safe: a batch acknowledged with S and the same content is never sent again,
and a crash leaves what was in flight visible as P."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from datahub_assets.planning import measured_since
from datahub_assets.upload.database import insert, metadata
from datahub_assets.upload.lease import RangeLease
from datahub_assets.upload.outcome import BatchStatus


ledger_table = sa.Table(
    "upload_ledger",
    metadata,
    sa.Column("data_uuid", sa.String(64), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("batch_no", sa.Integer, primary_key=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(1), nullable=False),  # a BatchStatus
    # The partner's resultCode and traceId: text of whatever length the partner sends
    # (a length limit would fail record_result and leave the batch in flight).
    sa.Column("result_code", sa.Text),
    sa.Column("trace_id", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("first_sent_at", sa.Float),
    sa.Column("last_sent_at", sa.Float),
    sa.Column("acked_at", sa.Float),
    # The data key of the latest attempt (its id, not the key): which batches a rotation,
    # or a leaked key, concerns.
    sa.Column("data_key_id", sa.Text),
)


@dataclass(frozen=True)
class LedgerEntry:
    batch_no: int
    content_hash: str
    status: BatchStatus
    result_code: str | None
    attempts: int
    data_key_id: str | None = None


@dataclass(frozen=True)
class BatchRecord:
    """A batch's whole ledger row, for the proof of delivery: times are epoch seconds."""

    batch_no: int
    content_hash: str
    status: BatchStatus
    trace_id: str | None
    attempts: int
    first_sent_at: float | None
    last_sent_at: float | None
    acked_at: float | None


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
        key_id = sa.bindparam("key_id", type_=sa.Text)
        self._mark_sending = insert(engine, t).values(
            data_uuid=sa.bindparam("data_uuid", type_=sa.String), day=sa.bindparam("day", type_=sa.String),
            batch_no=sa.bindparam("batch_no", type_=sa.Integer), content_hash=content_hash,
            status=BatchStatus.IN_FLIGHT.value, attempts=1, first_sent_at=now, last_sent_at=now, data_key_id=key_id,
        ).on_conflict_do_update(
            index_elements=["data_uuid", "day", "batch_no"],
            set_={"content_hash": content_hash, "status": BatchStatus.IN_FLIGHT.value, "attempts": t.c.attempts + 1, "last_sent_at": now, "acked_at": None, "data_key_id": key_id},
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
        query = sa.select(t.c.batch_no, t.c.content_hash, t.c.status, t.c.result_code, t.c.attempts, t.c.data_key_id).where(
            t.c.data_uuid == data_uuid, t.c.day == day
        )
        if batches is not None:
            query = query.where(t.c.batch_no >= batches.start, t.c.batch_no < batches.stop)
        with self._engine.connect() as conn:
            return {
                r.batch_no: LedgerEntry(
                    r.batch_no, r.content_hash, BatchStatus(r.status), r.result_code, r.attempts, r.data_key_id
                )
                for r in conn.execute(query)
            }

    def day_records(self, data_uuid: str, day: str, batches: range) -> Iterator[BatchRecord]:
        """The day's rows of the given batch numbers, in batch order, read a chunk at a
        time: a day can hold 250,000 rows."""
        t = ledger_table
        query = (
            sa.select(
                t.c.batch_no, t.c.content_hash, t.c.status, t.c.trace_id, t.c.attempts,
                t.c.first_sent_at, t.c.last_sent_at, t.c.acked_at,
            )
            .where(t.c.data_uuid == data_uuid, t.c.day == day, t.c.batch_no >= batches.start, t.c.batch_no < batches.stop)
            .order_by(t.c.batch_no)
        )
        with self._engine.connect() as conn:
            for r in conn.execution_options(yield_per=10_000).execute(query):
                yield BatchRecord(
                    r.batch_no, r.content_hash, BatchStatus(r.status), r.trace_id, r.attempts,
                    r.first_sent_at, r.last_sent_at, r.acked_at,
                )

    def mark_sending(
        self, data_uuid: str, day: str, batch_no: int, content_hash: str, lease: RangeLease | None = None,
        key_id: str = "",
    ) -> None:
        """Written before each attempt, so a crash leaves the batch visibly in flight.

        With a lease, the write is fenced: it commits only while the lease is ours
        (LeaseLostError otherwise), so an uploader that lost its range records, and
        therefore sends, nothing more.
        """
        params = {
            "data_uuid": data_uuid, "day": day, "batch_no": batch_no, "content_hash": content_hash, "now": time.time(),
            "key_id": key_id or None,
        }
        with self._engine.begin() as conn:
            if lease is not None:
                lease.renew_in(conn)
            conn.execute(self._mark_sending, params)

    def record_result(
        self, data_uuid: str, day: str, batch_no: int, status: BatchStatus, code: str, trace_id: str
    ) -> None:
        status = BatchStatus(status)
        params = {
            "k_data_uuid": data_uuid, "k_day": day, "k_batch_no": batch_no, "v_status": status.value, "v_code": code,
            "v_trace_id": trace_id, "v_acked_at": time.time() if status is BatchStatus.SUCCESS else None,
        }
        with self._engine.begin() as conn:
            conn.execute(self._record_result, params)

    def status_counts(self, data_uuid: str, day: str) -> dict[BatchStatus, int]:
        t = ledger_table
        query = (
            sa.select(t.c.status, sa.func.count())
            .where(t.c.data_uuid == data_uuid, t.c.day == day)
            .group_by(t.c.status)
        )
        with self._engine.connect() as conn:
            return {BatchStatus(status): n for status, n in conn.execute(query)}

    def newer_delivered_day(self, data_uuid: str, day: str) -> str | None:
        """The newest date after `day` with any batch acknowledged, if there is one."""
        t = ledger_table
        query = sa.select(sa.func.max(t.c.day)).where(
            t.c.data_uuid == data_uuid, t.c.day > day, t.c.status == BatchStatus.SUCCESS.value
        )
        with self._engine.connect() as conn:
            return conn.execute(query).scalar()

    def acked_rate(
        self, data_uuid: str, day: str, now: float, acked_span: tuple[float, float] | None, window_s: float = 300.0
    ) -> float:
        """Batches acknowledged per second over the window before `now` (epoch seconds, the
        caller's clock), past the day's ramp-up once there is enough of it (`measured_since`
        of the day's `acked_span`): the measured rate.
        Acknowledgements that stopped show as a rate falling to 0, never as "nothing measured"."""
        since = measured_since(acked_span, now)
        start = now - window_s if since is None else max(now - window_s, since)
        t = ledger_table
        query = sa.select(sa.func.count(), sa.func.min(t.c.acked_at)).where(
            t.c.data_uuid == data_uuid, t.c.day == day, t.c.status == BatchStatus.SUCCESS.value,
            t.c.acked_at > start, t.c.acked_at <= now,
        )
        with self._engine.connect() as conn:
            n, first = conn.execute(query).one()
        if not n:
            return 0.0
        # The intervals between acknowledgements over the span from the window's first
        # one to now: a day that just started is not measured as slow, and a pause since
        # the last acknowledgement lowers the rate as it goes on.
        return max(n - 1, 1) / max(now - first, 1.0)

    def acked_span(self, data_uuid: str, day: str) -> tuple[float, float] | None:
        """The day's first and latest acknowledgement (epoch seconds); None before any."""
        t = ledger_table
        query = sa.select(sa.func.min(t.c.acked_at), sa.func.max(t.c.acked_at)).where(
            t.c.data_uuid == data_uuid, t.c.day == day, t.c.status == BatchStatus.SUCCESS.value
        )
        with self._engine.connect() as conn:
            first, last = conn.execute(query).one()
        return None if first is None else (first, last)


