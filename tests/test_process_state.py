"""What a process does once: start its JVM, and send its first batch alone (the first call
into a cold JVM has an unpredictable send time). Each test here starts fresh processes
(tests/worker.py), so what the test process already did cannot change the outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from datahub_assets.upload.ledger import LedgerEntry
from datahub_dev.synthetic import generate, write_table
from support import DAY, Day, write_contract

WORKER = Path(__file__).with_name("worker.py")


def wait_for_ledger(day: Day, done, what: str, timeout_s: float = 120) -> dict[int, LedgerEntry]:  # noqa: ANN001
    """Read the ledger (one consistent read each time) until done(entries); return those entries."""
    deadline = time.monotonic() + timeout_s
    while not done(entries := day.ledger()):
        assert time.monotonic() < deadline, f"never saw {what}: {entries}"
        time.sleep(0.005)
    return entries


@pytest.fixture
def two_range_day(tmp_path: Path, sdk_jar: Path, keys_file: Path) -> Day:
    """10 batches in two ranges: batches 0-4 and 5-9."""
    with dg.instance_for_test() as instance:
        contracts = write_contract(tmp_path / "contracts", batch_ranges=2)
        day = Day(tmp_path, sdk_jar, keys_file, f"sqlite:///{tmp_path / 'delivery.db'}", instance, contracts)
        write_table(generate(1_000, DAY), day.source_url)
        day.prepare()
        return day


def test_a_new_process_sends_its_first_batch_alone_and_later_ranges_at_once(two_range_day: Day, datahub_endpoint):
    day = two_range_day
    # No THROTTLED answer (each range's requests are numbered in order: 1-5, then 6-10).
    # Request 1, the process's first, is answered after 1.5 s; request 6, the second
    # range's first, only after the SDK's 30 s read timeout.
    datahub_endpoint.faults(cap=1000, scripted=[{"request": 1, "latency_ms": 1500}, {"request": 6, "latency_ms": 600_000}])
    env = {**os.environ, **day.env()}
    env.pop("DAGSTER_HOME", None)
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), str(day.contracts_dir), DAY, "--ranges", "0,1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Cold: no other batch is marked until the first call (request 1) has returned.
        seen = wait_for_ledger(day, lambda e: any(n in e for n in range(1, 5)), "a second batch of range 0")
        assert seen[0].status == "S", {n: e.status for n, e in seen.items()}
        # Warm (the same process): the second range opens its pool at once, so its other
        # batches are answered while request 6 is held. Had it gone alone, nothing else
        # would be sent before the SDK's 30 s timeout.
        def answered_beside_a_held_one(entries: dict[int, LedgerEntry]) -> bool:
            second = [entries[n] for n in range(5, 10) if n in entries]
            return any(e.status == "S" for e in second) and any(e.status == "P" and e.attempts == 1 for e in second)

        wait_for_ledger(day, answered_beside_a_held_one, "range 1 sending beside its held request", timeout_s=20)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()


# tests/worker.py, then whether this process started a JVM.
WORKER_THEN_JVM = """
import runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as end:
    code = end.code
import jpype
print("jvm", jpype.isJVMStarted())
sys.exit(code)
"""


def test_the_jvm_starts_only_in_a_process_that_sends(two_range_day: Day, datahub_endpoint, tmp_path: Path):
    day = two_range_day
    env = {**os.environ, **day.env()}
    env.pop("DAGSTER_HOME", None)

    def run_worker() -> str:
        run = subprocess.run(
            [sys.executable, "-c", WORKER_THEN_JVM, str(WORKER), str(day.contracts_dir), DAY, "--ranges", "0,1"],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout.strip().splitlines()[-1]

    assert run_worker() == "jvm True"  # it had batches to send
    # Every batch is acknowledged now: a second process has nothing to send, so it never
    # starts a JVM (its classpath and keys file are still checked at step start).
    assert run_worker() == "jvm False"
    assert datahub_endpoint.stats()["requests"] == 10


def test_the_crypto_warm_up_needs_only_the_jdk_and_runs_once_per_process():
    """The warm-up must keep working whatever SDK jar is configured: it touches no SDK
    class, no keys file and no row. Run in a JVM whose classpath holds nothing at all."""
    script = (
        "import jpype\n"
        "from datahub_assets.upload import sdk\n"
        "jpype.startJVM(classpath=[], convertStrings=False)\n"
        "assert not sdk._crypto_warmed.is_set()\n"
        "sdk.warm_up_crypto(batches=2)\n"
        "assert sdk._crypto_warmed.is_set()\n"
        "print('warmed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "warmed"
