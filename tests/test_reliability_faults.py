"""Partner faults: unknown outcomes, lost acknowledgements, latency spikes, throttling,
a 20 s outage and a permanent one, injected F results.

Every fault is injected by the real endpoint (its admin API) while a real upload run
sends through the stand-in SDK in this process's JVM. The invariants: every row is
delivered once the faults pass; no batch is sent more often than UploadConfig.max_attempts;
the ledger's attempts and the endpoint's receipts agree; a partition fails only when a
batch's budget runs out (or the partner answers F), with a summary, and the failed
sensor flags it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from support import DAY, Day, endpoint_receipts, materialization_metadata, write_contract

from datahub_dev.synthetic import generate, write_table
from datahub_assets.lake import DataLake
from datahub_assets.monitoring.clock import WatchClock
from datahub_assets.monitoring.notifier import Notifier
from datahub_assets.monitoring.rules import FAILED
from datahub_assets.monitoring.sensors import build_watch_sensor
from datahub_assets.partitions import PARTNER_TZ, upload_partitions_def
from datahub_assets.upload.ledger import ledger_table
from datahub_assets.upload.resources import DeliveryDatabase, create_delivery_engine
from datahub_emulator.client import EmulatorProcess

MAX_ATTEMPTS = 8  # UploadConfig's default budget per batch and run


@pytest.fixture
def make_day(tmp_path: Path, sdk_jar: Path, keys_file: Path) -> Iterator[Callable[..., Day]]:
    """A prepared day of `rows` source rows in one batch range, on the given ledger and cap."""
    with dg.instance_for_test() as instance:

        def make(rows: int, delivery_url: str | None = None, limiter_cap: float = 20.0) -> Day:
            contracts = write_contract(tmp_path / "contracts", batch_ranges=1)
            url = delivery_url or f"sqlite:///{tmp_path / 'delivery.db'}"
            day = Day(tmp_path, sdk_jar, keys_file, url, instance, contracts)
            # A limiter below the partner's cap rules out THROTTLED answers where a test
            # counts attempts exactly.
            day.resources["delivery_db"] = DeliveryDatabase(url=url, cap_per_second=limiter_cap)
            write_table(generate(rows, DAY, seed=5), day.source_url)
            day.prepare()
            return day

        yield make


def trace_ids(day: Day) -> dict[int, str]:
    engine = create_delivery_engine(day.delivery_url)
    try:
        with engine.connect() as conn:
            t = ledger_table
            return {n: trace for n, trace in conn.execute(sa.select(t.c.batch_no, t.c.trace_id))}
    finally:
        engine.dispose()


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.message


def assert_ledger_and_partner_agree(day: Day, endpoint: EmulatorProcess) -> dict:
    """Every row delivered once; budgets held; ledger attempts == endpoint receipts."""
    total = -(-day.snapshot_frame().height // 100)
    ledger = day.ledger()
    receipts = endpoint_receipts(endpoint.db_path)
    ids = day.snapshot_frame()["id"].to_list()
    reconciliation = endpoint.reconcile(day.contract.data_uuid, ids)
    assert (reconciliation["missing"], reconciliation["unexpected"], reconciliation["stored"]) == (0, 0, len(ids))
    assert set(ledger) == set(range(total)) and {e.status for e in ledger.values()} == {"S"}
    attempts = [e.attempts for e in ledger.values()]
    assert max(attempts) <= MAX_ATTEMPTS
    # Every attempt the ledger counts reached the partner once, and nothing else did.
    assert sum(attempts) == len(receipts)
    s_receipts = {r["trace_id"] for r in receipts if r["status"] == "S"}
    assert len(s_receipts) == total  # each batch acknowledged exactly once
    assert set(trace_ids(day).values()) == s_receipts
    return {
        "batches": total,
        "requests": len(receipts),
        "by_code": dict(Counter(f"{r['status']}/{r['code']}" for r in receipts)),
        "max_attempts_seen": max(attempts),
        "rows_missing": reconciliation["missing"],
        "rows_unexpected": reconciliation["unexpected"],
    }


# Faults at fixed request numbers (the endpoint counts every upload request, retries
# included): the same faults on every run, whatever the machine's speed.
SCRIPTED_FAULTS = [
    {"request": 3, "outcome": "U/UNKNOWN_EXCEPTION"},
    {"request": 5, "outcome": "lost_ack"},
    {"request": 7, "latency_ms": 2000},  # a latency spike: the answer comes 2 s late
    {"request": 9, "outcome": "U/THROTTLED"},
    {"request": 12, "outcome": "U/UNKNOWN_EXCEPTION", "latency_ms": 1500},
    {"request": 16, "outcome": "lost_ack", "latency_ms": 800},
    {"request": 21, "outcome": "U/THROTTLED"},
    {"request": 30, "outcome": "U/UNKNOWN_EXCEPTION"},
]


def test_unknown_outcomes_lost_acks_latency_spikes_and_throttling_lose_nothing(make_day, datahub_endpoint):
    # The limiter stays below the partner's cap, so every THROTTLED answer is a scripted one.
    day = make_day(4_000, limiter_cap=10)  # 40 batches
    datahub_endpoint.faults(scripted=SCRIPTED_FAULTS)

    result = day.upload_range("0", {"retry_base_delay_s": 0.2})

    assert result.success
    meta = materialization_metadata(result, day.uploaded)
    assert meta["batches_failed"] == 0
    figures = assert_ledger_and_partner_agree(day, datahub_endpoint)
    # Each scripted fault cost one request, and each was retried to S.
    assert figures["by_code"] == {"S/SUCCESS": 40, "U/UNKNOWN_EXCEPTION": 5, "U/THROTTLED": 2}
    assert meta["attempts_throttled"] == 2
    assert meta["retries"] == figures["requests"] - figures["batches"] == 7
    # Lost acknowledgements: stored, answered U, re-sent, upserted (no duplicate rows).
    receipts = endpoint_receipts(datahub_endpoint.db_path)
    lost_acks = sum(1 for r in receipts if r["status"] == "U" and r["rows"])
    assert lost_acks == 2
    assert sum(1 for r in receipts if r["rows"]) == figures["batches"] + lost_acks
    print("RELIABILITY faults", json.dumps({**figures, "lost_acks": lost_acks}))


def test_a_20_s_outage_is_ridden_out_within_the_retry_budget(make_day, datahub_endpoint, pg_url):
    # Backoff with base 0.5 s (equal jitter, cap 30 s): the 7 waits of an 8-attempt budget
    # sum to at least 0.25+0.5+1+2+4+8+15 = 30.75 s, longer than the outage.
    day = make_day(3_000, pg_url)  # 30 batches, ledger on PostgreSQL
    window: dict[str, float] = {}

    def outage_from_the_first_batch() -> None:
        # On as soon as the first batch is marked in flight: the 30 batches take at least
        # 1.5 s at the cap, so most of the range meets the outage however slow the start.
        deadline = time.monotonic() + 300
        while not day.ledger():
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.005)
        start = time.time()
        datahub_endpoint.faults(outages=[{"start": start, "end": start + 20.0}])
        # Requests stamped before the endpoint took the outage in were answered as usual;
        # only those stamped after the call returned are certain to meet it.
        window["start"], window["end"] = time.time(), start + 20.0

    watcher = threading.Thread(target=outage_from_the_first_batch)
    watcher.start()
    try:
        result = day.upload_range("0", {"retry_base_delay_s": 0.5})
    finally:
        watcher.join()

    assert result.success
    figures = assert_ledger_and_partner_agree(day, datahub_endpoint)
    receipts = endpoint_receipts(datahub_endpoint.db_path)
    during = [r for r in receipts if window["start"] <= r["arrived_at"] < window["end"]]
    assert during and {(r["status"], r["code"]) for r in during} <= {("U", "UNKNOWN_EXCEPTION"), ("U", "THROTTLED")}
    acked_after = [r for r in receipts if r["status"] == "S" and r["arrived_at"] >= window["end"]]
    assert len(acked_after) > figures["batches"] // 2  # most of the range rode through the outage
    assert figures["max_attempts_seen"] >= 3
    print("RELIABILITY outage", json.dumps({**figures, "requests_during_outage": len(during),
                                              "acked_after_outage": len(acked_after)}))  # fmt: skip


def failed_sensor_tick(day: Day) -> dg.AssetCheckEvaluation:
    """One tick of the failed sensor on the morning the day is due, as the daemon runs it."""
    now = datetime(2026, 11, 27, 8, 0, tzinfo=PARTNER_TZ)
    sensor = build_watch_sensor(FAILED, [day.contract], lookback_days=1)
    resources = {
        "delivery_db": DeliveryDatabase(url=day.delivery_url),
        "lake": DataLake(root=day.lake.root),
        "notifier": Notifier(),  # no channel configured: sends nothing
        "watch_clock": WatchClock(frozen_at=now.isoformat()),
    }
    with dg.build_sensor_context(instance=day.instance, resources=resources) as context:
        result = sensor(context)
    (evaluation,) = result.asset_events
    return evaluation


def test_a_permanent_outage_fails_the_partition_only_when_the_budget_runs_out(make_day, datahub_endpoint):
    day = make_day(500, limiter_cap=10)  # 5 batches
    now = time.time()
    datahub_endpoint.faults(outages=[{"start": now - 1, "end": now + 3600}])

    result = day.upload_range("0", {"max_attempts": 2}, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert f"5 of 5 batches of range 0 ({DAY}) did not succeed: UNKNOWN_EXCEPTION x5" in message
    ledger = day.ledger()
    assert {(e.status, e.result_code, e.attempts) for e in ledger.values()} == {("U", "UNKNOWN_EXCEPTION", 2)}
    receipts = endpoint_receipts(datahub_endpoint.db_path)
    assert len(receipts) == 10 and {r["code"] for r in receipts} == {"UNKNOWN_EXCEPTION"}
    status = day.instance.get_status_by_partition(
        day.uploaded.key, [day.partition_key("0")], upload_partitions_def(day.contract)
    )
    assert status == {day.partition_key("0"): dg.AssetPartitionStatus.FAILED}
    flagged = failed_sensor_tick(day)
    assert not flagged.passed
    assert {k: v.value for k, v in flagged.metadata.items()}["runs_failed"] == 1

    # The partner comes back: a rerun sends the batches left U, and the flag clears.
    datahub_endpoint.faults(outages=[])
    rerun = day.upload_range("0", {"max_attempts": 2})
    assert rerun.success
    assert {(e.status, e.attempts) for e in day.ledger().values()} == {("S", 3)}
    assert failed_sensor_tick(day).passed
    print("RELIABILITY permanent_outage", json.dumps({"batches": 5, "requests": len(receipts), "message": message[-120:]}))


def test_an_f_answer_fails_only_its_batch_and_is_never_retried(make_day, datahub_endpoint):
    day = make_day(2_000, limiter_cap=10)  # 20 batches; no THROTTLED answer, one request per batch
    datahub_endpoint.faults(scripted=[{"request": n, "outcome": "F/DATA_CHECK_FAILED"} for n in (2, 5, 11, 17)])

    result = day.upload_range("0", raise_on_error=False)

    ledger = day.ledger()
    refused = {n for n, e in ledger.items() if e.status == "F"}
    assert len(refused) == 4
    assert not result.success
    assert "did not succeed: DATA_CHECK_FAILED x4" in failure_message(result)
    assert {ledger[n].attempts for n in refused} == {1}  # F is final: never retried
    assert {e.status for n, e in ledger.items() if n not in refused} == {"S"}
    receipts = endpoint_receipts(datahub_endpoint.db_path)
    assert len(receipts) == sum(e.attempts for e in ledger.values()) == 20
    flagged = failed_sensor_tick(day)
    assert {k: v.value for k, v in flagged.metadata.items()}["batches_failed"] == 4

    # Once the cause is fixed, a rerun re-sends only the refused batches.
    datahub_endpoint.faults(scripted=[])
    assert day.upload_range("0").success
    assert len(endpoint_receipts(datahub_endpoint.db_path)) - len(receipts) == 4
    assert_ledger_and_partner_agree_after_f(day, datahub_endpoint)
    print("RELIABILITY f_answers", json.dumps({"batches": 20, "refused": len(refused)}))


def assert_ledger_and_partner_agree_after_f(day: Day, endpoint: EmulatorProcess) -> None:
    ids = day.snapshot_frame()["id"].to_list()
    reconciliation = endpoint.reconcile(day.contract.data_uuid, ids)
    assert (reconciliation["missing"], reconciliation["unexpected"]) == (0, 0)
    assert {e.status for e in day.ledger().values()} == {"S"}
