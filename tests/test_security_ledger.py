"""The ledger keeps whatever the partner answers: a resultCode or traceId of any length
is recorded on both backends, and a database created with the older bounded columns is
widened when the engine is created."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from datahub_assets.upload.ledger import Ledger, ledger_table
from datahub_assets.sql import create_engine
from datahub_assets.upload.resources import create_delivery_engine

UUID = "6b42f8c92190425fa2d8d92ff723a11a"
DAY = "2026-11-26"
LONG_CODE = "DATA_CHECK_FAILED_" + "X" * 282
LONG_TRACE = "7" * 300


def _trace_ids(engine: sa.Engine) -> dict[int, str]:
    t = ledger_table
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t.c.batch_no, t.c.trace_id).where(t.c.data_uuid == UUID, t.c.day == DAY)).all())


def test_a_300_character_code_and_trace_id_are_recorded(delivery_engine):
    ledger = Ledger(delivery_engine)
    ledger.mark_sending(UUID, DAY, 0, "h0")
    ledger.record_result(UUID, DAY, 0, "F", LONG_CODE, LONG_TRACE)
    entry = ledger.entries(UUID, DAY)[0]
    assert (entry.status, entry.result_code) == ("F", LONG_CODE)
    assert _trace_ids(delivery_engine) == {0: LONG_TRACE}


def _old_ledger_schema() -> sa.MetaData:
    """upload_ledger as databases created before the columns were unbounded hold it."""
    old = sa.MetaData()
    sa.Table(
        "upload_ledger", old,
        *(sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in ledger_table.columns
          if c.name not in ("result_code", "trace_id")),
        sa.Column("result_code", sa.String(64)),
        sa.Column("trace_id", sa.String(64)),
    )
    return old


def _lengths(engine: sa.Engine) -> dict[str, int | None]:
    query = sa.text(
        "SELECT column_name, character_maximum_length FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'upload_ledger' "
        "AND column_name IN ('result_code', 'trace_id')"
    )
    with engine.connect() as conn:
        return dict(conn.execute(query).all())


def test_an_existing_postgres_ledger_is_widened_at_engine_creation(pg_url):
    plain = create_engine(pg_url)
    try:
        _old_ledger_schema().create_all(plain)
        assert _lengths(plain) == {"result_code": 64, "trace_id": 64}
        # The failure the widening removes: the old column refuses the long code.
        old = Ledger(plain)
        old.mark_sending(UUID, DAY, 1, "h1")
        with pytest.raises(sa.exc.DataError):
            old.record_result(UUID, DAY, 1, "F", LONG_CODE, LONG_TRACE)
        assert old.entries(UUID, DAY)[1].status == "P"

        for _ in range(2):  # the second creation finds nothing to alter
            engine = create_delivery_engine(pg_url)
            try:
                assert _lengths(engine) == {"result_code": None, "trace_id": None}
                ledger = Ledger(engine)
                ledger.record_result(UUID, DAY, 1, "F", LONG_CODE, LONG_TRACE)
                assert ledger.entries(UUID, DAY)[1].result_code == LONG_CODE
                assert _trace_ids(engine) == {1: LONG_TRACE}
            finally:
                engine.dispose()
    finally:
        plain.dispose()
