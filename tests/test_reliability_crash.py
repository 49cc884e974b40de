"""Crash safety: an upload run SIGKILLed at a random point loses nothing, and its rerun
re-sends at most the batches that were in flight.

Each trial starts a real run worker in its own OS process (tests/worker.py:
the platform's definitions, resources from the DATAHUB_* environment, the instance from
DAGSTER_HOME, the stand-in SDK in that process's JVM), kills it with SIGKILL once a
randomly drawn number of batches is acknowledged (plus a random fraction of a second),
then reruns the same partition on the same instance and ledger. The endpoint answers
after a latency, so several batches are always in flight at the kill. Trials alternate
the ledger backend (SQLite, PostgreSQL). Set RELIABILITY_SEED to replay a sequence of
kill points; the seed is in every assertion message.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from conftest import USER_PROFILE_CONTRACT
from support import Day, endpoint_receipts, materialization_metadata, write_contract

from datahub_dev.stack import register_keys
from datahub_dev.synthetic import generate, write_table
from datahub_assets.partitions import business_date
from datahub_assets.upload.ledger import ledger_table
from datahub_assets.upload.resources import create_delivery_engine
from datahub_emulator.client import EmulatorProcess

WORKER = Path(__file__).with_name("worker.py")
ROWS = 4_000  # 40 batches: about 2 s at the cap
TRIALS = 5
SEED = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 2**31))
LATENCY = {"median": 300, "jitter": 100}  # ms: with 8 threads, several batches in flight
# The rerun waits for the killed worker's lease to expire (nothing renews it): shorter
# than the 30 s default, so that the wait does not dominate each trial.
LEASE_TTL_S = 10.0


@dataclass
class CrashStack:
    root: Path
    endpoint: EmulatorProcess
    keys_file: Path
    contracts_dir: Path
    sdk_jar: Path
    ids: list[str]
    day: str  # the business date: the uploads run in the limiter's priority lane, as on the day


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory, sdk_jar: Path) -> Iterator[CrashStack]:
    """One endpoint and one prepared snapshot (1 range of 80 batches) for every trial."""
    root = tmp_path_factory.mktemp("crash")
    endpoint = EmulatorProcess(db_path=root / "datahub.db", log_path=root / "datahub.log")
    with endpoint:
        keys_file = root / "keys" / "keys.properties"
        register_keys(endpoint.url, keys_file, [USER_PROFILE_CONTRACT])
        contracts = write_contract(root / "contracts", batch_ranges=1)
        # From the clock, here: should a run cross midnight GMT+8, it becomes a backfill,
        # which changes no assertion below.
        current = business_date()
        source = generate(ROWS, current, seed=11)
        with dg.instance_for_test() as instance:
            day = Day(root, sdk_jar, keys_file, f"sqlite:///{root / 'prepare.db'}", instance, contracts, day=current)
            write_table(source, day.source_url)
            day.prepare()
        yield CrashStack(root, endpoint, keys_file, contracts, sdk_jar, source["user_id"].to_list(), current)


def wait_until_quiet(endpoint: EmulatorProcess, quiet_s: float = 0.3, timeout_s: float = 10.0) -> None:
    """Until the endpoint's receipts stop growing for quiet_s."""
    deadline = time.monotonic() + timeout_s
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = len(endpoint_receipts(endpoint.db_path))
        if n != seen:
            seen, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)
    raise AssertionError("the endpoint kept receiving requests after the worker died")


def _ledger_counts(engine: sa.Engine) -> tuple[int, int]:
    """(rows, rows acknowledged S) in the ledger."""
    t = ledger_table
    query = sa.select(sa.func.count(), sa.func.count().filter(t.c.status == "S"))
    with engine.connect() as conn:
        return tuple(conn.execute(query).one())


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_at_a_random_point_loses_nothing_and_resends_only_what_was_in_flight(
    trial: int, crash_stack: CrashStack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED * 100 + trial)
    backend = "sqlite" if trial % 2 == 0 else "postgresql"
    url = f"sqlite:///{tmp_path / 'delivery.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    endpoint = crash_stack.endpoint
    endpoint.reset()
    endpoint.faults(latency_ms=LATENCY)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        day = Day(
            crash_stack.root, crash_stack.sdk_jar, crash_stack.keys_file, url, instance, crash_stack.contracts_dir,
            day=crash_stack.day,
        )  # the same lake, hence the same snapshot, for every trial
        total = -(-ROWS // 100)
        kill_after_acks = rng.randint(0, total - 12)  # 12 = a few more than in flight
        extra_delay_s = rng.uniform(0.0, 0.2)
        where = f"seed={SEED} trial={trial} backend={backend} kill after {kill_after_acks} acks + {extra_delay_s:.3f} s"

        engine = create_delivery_engine(url)
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), str(crash_stack.contracts_dir), crash_stack.day, "--ranges", "0",
             "--config", json.dumps({"progress_every_s": 1.0, "lease_ttl_s": LEASE_TTL_S})],
            env={**os.environ, **day.env(), "DAGSTER_HOME": str(home)},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started = time.monotonic()
        try:
            deadline = started + 120
            while (counts := _ledger_counts(engine))[1] < kill_after_acks or counts[0] == 0:
                assert worker.poll() is None, f"{where}: worker ended early ({worker.returncode})"
                assert time.monotonic() < deadline, f"{where}: worker never got going"
                time.sleep(0.01)
            time.sleep(extra_delay_s)
            killed_after_s = time.monotonic() - started
            worker.send_signal(signal.SIGKILL)
            assert worker.wait(30) == -signal.SIGKILL, f"{where}: the run finished before the kill"
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            log.close()
        wait_until_quiet(endpoint)  # requests the dead worker had fully sent are still answered

        at_kill = day.ledger()
        receipts_at_kill = endpoint_receipts(endpoint.db_path)
        in_flight = {n for n, e in at_kill.items() if e.status != "S"}  # P, or U awaiting a retry
        acked_at_kill = {n for n, e in at_kill.items() if e.status == "S"}
        assert len(acked_at_kill) >= kill_after_acks, where
        assert len(acked_at_kill) < total, f"{where}: nothing left to rerun"

        rerun_started = time.monotonic()
        rerun = day.upload_range("0")
        rerun_s = time.monotonic() - rerun_started
        assert rerun.success, where
        meta = materialization_metadata(rerun, day.uploaded)
        after = day.ledger()
        receipts = endpoint_receipts(endpoint.db_path)
        engine.dispose()

    # Nothing lost: the partner holds exactly the snapshot.
    reconciliation = endpoint.reconcile(day.contract.data_uuid, crash_stack.ids)
    assert reconciliation["missing"] == 0 and reconciliation["unexpected"] == 0, where
    assert reconciliation["stored"] == ROWS and endpoint.stats()["rows_stored"] == {day.contract.data_uuid: ROWS}, where

    # The ledger finished the job, and batches acknowledged before the kill were skipped.
    assert set(after) == set(range(total)) and {e.status for e in after.values()} == {"S"}, where
    assert (meta["batches_skipped"], meta["batches_sent"]) == (len(acked_at_kill), total - len(acked_at_kill)), where
    for n in acked_at_kill:
        assert after[n].attempts == at_kill[n].attempts, f"{where}: batch {n} was acknowledged, then re-sent"

    # The partner's receipts agree with the ledger: every rerun attempt reached it once...
    rerun_requests = len(receipts) - len(receipts_at_kill)
    assert rerun_requests == sum(e.attempts for e in after.values()) - sum(e.attempts for e in at_kill.values()), where
    # ...each batch's acknowledged attempt is one of its S receipts...
    s_receipts = {r["trace_id"] for r in receipts if r["status"] == "S"}
    assert {e.result_code for e in after.values()} == {"SUCCESS"}, where
    trace_ids = _trace_ids(url)
    assert set(trace_ids) <= s_receipts, where
    # ...and the only batches stored twice are batches that were in flight at the kill.
    stored_twice = len(s_receipts) - total
    assert 0 <= stored_twice <= len(in_flight), where
    print(
        "RELIABILITY crash",
        json.dumps(
            {
                "seed": SEED, "trial": trial, "backend": backend, "batches": total,
                "acked_at_kill": len(acked_at_kill), "in_flight_at_kill": len(in_flight),
                "requests_before_kill": len(receipts_at_kill), "rerun_requests": rerun_requests,
                "stored_twice": stored_twice, "missing": reconciliation["missing"],
                "unexpected": reconciliation["unexpected"],
                "killed_after_s": round(killed_after_s, 2), "rerun_s": round(rerun_s, 2),
            }
        ),
    )  # fmt: skip


def _trace_ids(url: str) -> list[str]:
    engine = create_delivery_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(ledger_table.c.trace_id)).scalars())
    finally:
        engine.dispose()
