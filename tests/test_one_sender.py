"""Delivery that survives operations: one sender per range (a lease with a fencing token),
no older date over a newer one, configuration errors before the first batch, and strict
contracts. Real JVM, real endpoint, both ledger backends."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from support import CONTRACT, DAY, Day, endpoint_receipts, write_contract

from datahub_assets.contract import ContractError, load_contract, load_contracts
from datahub_assets.partitions import previous_date
from datahub_assets.upload.lease import (
    LeaseKeeper,
    LeaseLostError,
    RangeHeldError,
    RangeKey,
    acquire_range_lease,
    lease_table,
)
from datahub_assets.upload.ledger import Ledger, ledger_table
from datahub_dev.synthetic import generate, write_table
from datahub_emulator.toolkit import read_properties, write_properties

KEY = RangeKey(CONTRACT.data_uuid, DAY, "0")
WORKER = Path(__file__).with_name("worker.py")


def wait_until(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- the lease ----------------------------------------------------------------------------


def test_a_held_range_is_refused_naming_its_holder_and_granted_again_after_release(delivery_engine):
    first = acquire_range_lease(delivery_engine, KEY, holder="run A")
    with pytest.raises(RangeHeldError, match="being sent by run A"):
        acquire_range_lease(delivery_engine, KEY, holder="run B", wait_s=0)
    first.release()
    second = acquire_range_lease(delivery_engine, KEY, holder="run B")
    assert second.token == first.token + 1  # every grant fences off the ones before


def test_a_waiting_uploader_gets_the_range_when_its_holder_releases_it(delivery_engine):
    first = acquire_range_lease(delivery_engine, KEY, holder="run A")
    threading.Timer(0.5, first.release).start()
    second = acquire_range_lease(delivery_engine, KEY, holder="run B", wait_s=60, poll_s=0.1)
    assert second.token == first.token + 1


def test_an_uploader_that_lost_its_lease_records_and_sends_nothing_more(delivery_engine):
    ledger = Ledger(delivery_engine)
    paused = acquire_range_lease(delivery_engine, KEY, holder="run A")
    ledger.mark_sending(KEY.data_uuid, DAY, 0, "h0", paused)
    # The holder is paused past its expiry; another uploader is granted the range.
    with delivery_engine.begin() as conn:
        conn.execute(sa.update(lease_table).values(expires_at=0.0))
    successor = acquire_range_lease(delivery_engine, KEY, holder="run B")
    with pytest.raises(LeaseLostError, match="rerun resumes from the ledger"):
        ledger.mark_sending(KEY.data_uuid, DAY, 1, "h1", paused)
    assert set(ledger.entries(KEY.data_uuid, DAY)) == {0}
    paused.release()  # conditioned on its own token: the successor keeps the range
    ledger.mark_sending(KEY.data_uuid, DAY, 1, "h1", successor)
    assert set(ledger.entries(KEY.data_uuid, DAY)) == {0, 1}


def test_the_keeper_gives_the_range_up_once_the_run_has_ended(delivery_engine):
    ended = threading.Event()
    lease = acquire_range_lease(delivery_engine, KEY, holder="run A")
    keeper = LeaseKeeper(lease, every_s=0.05, run_is_over=lambda: "its run has ended" if ended.is_set() else None)
    with keeper:
        lease.check()
        ended.set()
        wait_until(lambda: lease.lost is not None, what="the keeper to notice")
        with pytest.raises(LeaseLostError, match="its run has ended"):
            lease.check()
    # Released on exit: the next uploader does not wait for the expiry.
    assert acquire_range_lease(delivery_engine, KEY, holder="run B", wait_s=0).token == lease.token + 1


def test_the_keeper_gives_the_range_up_as_soon_as_its_run_worker_dies(delivery_engine):
    # A stand-in run worker; the keeper's beat (an hour) never comes, so only its watch
    # on the parent can notice the death.
    run_worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(3600,), daemon=True)
    run_worker.start()
    lease = acquire_range_lease(delivery_engine, KEY, holder="run A")
    with LeaseKeeper(lease, every_s=3600, run_is_over=lambda: None, parent=run_worker):
        lease.check()
        run_worker.kill()
        wait_until(lambda: lease.lost is not None, what="the keeper to notice")
        with pytest.raises(LeaseLostError, match="its run worker is gone"):
            lease.check()


# --- two uploaders on one range, through the asset -----------------------------------------


@pytest.fixture
def day(tmp_path, sdk_jar, keys_file, delivery_url):  # noqa: ANN001
    with dg.instance_for_test() as instance:
        contracts = write_contract(tmp_path / "contracts", batch_ranges=1)
        yield Day(tmp_path, sdk_jar, keys_file, delivery_url, instance, contracts)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every error message of a failed run, causes included."""
    texts = []
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            texts.append(error.message)
            error = error.cause
    return " ".join(texts)


def test_a_second_uploader_of_a_range_in_flight_fails_naming_its_holder_and_nothing_is_sent_twice(
    day, datahub_endpoint
):
    write_table(generate(3_000, DAY, seed=2), day.source_url)
    day.prepare()
    # The first uploader, a run worker of its own, holds the range while the second one
    # tries: its second request is answered only once the second uploader has failed.
    datahub_endpoint.faults(latency_ms={"median": 300, "jitter": 0}, scripted=[{"request": 2, "latency_ms": 600_000}])
    env = {**os.environ, **day.env()}
    env.pop("DAGSTER_HOME", None)
    first = subprocess.Popen(
        [sys.executable, str(WORKER), str(day.contracts_dir), DAY, "--ranges", "0", "--config", '{"threads": 2}'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    # A bound, not a timing: a loaded machine takes long to start a worker and its JVM.
    wait_until(lambda: len(day.ledger()) >= 2, timeout_s=180, what="the first uploader's second batch")
    second = day.upload_range("0", {"lease_wait_s": 0}, raise_on_error=False)
    datahub_endpoint.release()
    output, _ = first.communicate(timeout=300)

    assert first.returncode == 0, output.decode()[-3000:]
    assert not second.success
    assert "being sent by run " in failure_text(second) and f"(pid {first.pid} " in failure_text(second)
    receipts = endpoint_receipts(datahub_endpoint.db_path)
    assert sum(r["status"] == "S" for r in receipts) == 30 == len(receipts)


# --- never regress the partner -------------------------------------------------------------


def stored_rows(db_path: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id_key, row_ciphertext FROM rows ORDER BY id_key").fetchall()
    finally:
        conn.close()


def test_an_older_date_is_refused_after_a_newer_one_unless_overridden(
    tmp_path, sdk_jar, keys_file, delivery_url, datahub_endpoint
):
    contracts = write_contract(tmp_path / "contracts", batch_ranges=1)
    older = previous_date(DAY)
    with dg.instance_for_test() as instance:
        newer_day = Day(tmp_path, sdk_jar, keys_file, delivery_url, instance, contracts, day=DAY)
        older_day = Day(tmp_path, sdk_jar, keys_file, delivery_url, instance, contracts, day=older)
        # The same ids on both dates, with other content.
        write_table(generate(1_000, DAY, seed=4, version=2), newer_day.source_url)
        write_table(generate(1_000, older, seed=4, version=1), older_day.source_url)
        newer_day.prepare()
        older_day.prepare()
        assert newer_day.upload_range("0").success
        delivered = stored_rows(datahub_endpoint.db_path)

        refused = older_day.upload_range("0", raise_on_error=False)
        assert not refused.success
        message = failure_text(refused)
        assert f"refused to send {older}" in message and DAY in message and "allow_older_date" in message
        assert stored_rows(datahub_endpoint.db_path) == delivered  # not one ciphertext changed
        assert older_day.ledger() == {}

        overridden = older_day.upload_range("0", {"allow_older_date": True})
        assert overridden.success
        logged = [e.message for e in instance.all_logs(overridden.run_id) if e.user_message]
        assert any("allow_older_date" in m for m in logged)
        assert stored_rows(datahub_endpoint.db_path) != delivered


# --- configuration errors before the first batch --------------------------------------------


def _broken(tmp_path: Path, keys_file: Path, sdk_jar: Path, case: str, endpoint) -> dict:  # noqa: ANN001
    """The sdk resource settings for one broken configuration."""
    bad_keys = tmp_path / "bad" / "keys.properties"
    bad_keys.parent.mkdir(exist_ok=True)
    keys = read_properties(keys_file)
    if case == "garbage key":
        write_properties(bad_keys, {**keys, "clientPrivateKey": "bm90IGEga2V5"})
        return {"keys_file": bad_keys}
    if case == "missing jar":
        return {"sdk_jar": tmp_path / "no-such-sdk.jar"}
    if case == "missing keys file":
        return {"keys_file": tmp_path / "nowhere" / "keys.properties"}
    if case == "mode 0644":
        write_properties(bad_keys, keys)
        bad_keys.chmod(0o644)
        return {"keys_file": bad_keys}
    if case == "endpoint down":
        endpoint.stop()
        return {}
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("garbage key", "DATAHUB_KEYS_PATH"),
        ("missing jar", "DATAHUB_SDK_CLASSPATH"),
        ("missing keys file", "DATAHUB_KEYS_PATH"),
        ("mode 0644", "chmod 600"),
        ("endpoint down", "unreachable"),
    ],
)
def test_a_configuration_error_fails_before_any_batch_is_recorded_or_sent(
    case, expected, tmp_path, sdk_jar, keys_file, datahub_endpoint
):
    contracts = write_contract(tmp_path / "contracts", batch_ranges=1)
    settings = {"sdk_jar": sdk_jar, "keys_file": keys_file}
    with dg.instance_for_test() as instance:
        good = Day(tmp_path, sdk_jar, keys_file, f"sqlite:///{tmp_path / 'delivery.db'}", instance, contracts)
        write_table(generate(500, DAY, seed=6), good.source_url)
        good.prepare()
        settings.update(_broken(tmp_path, keys_file, sdk_jar, case, datahub_endpoint))
        day = Day(tmp_path, settings["sdk_jar"], settings["keys_file"], good.delivery_url, instance, contracts)
        result = day.upload_range("0", raise_on_error=False)
    assert not result.success
    errors = failure_text(result)
    assert expected in errors
    assert "clientPrivateKey=" not in errors and read_properties(keys_file)["dataKey"] not in errors
    assert day.ledger() == {}
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'delivery.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger_table)).scalar() == 0
    engine.dispose()
    if case != "endpoint down":
        assert endpoint_receipts(datahub_endpoint.db_path) == []


# --- strict contracts -----------------------------------------------------------------------


BASE = yaml.safe_load(CONTRACT.path.read_text())


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"max_rejects_share": 0.1}, "max_rejects_share", "unknown key"),
        ({"start_date": "2026-13-45"}, "start_date", "month must be in 1..12"),
        ({"data_uuid": "x"}, "data_uuid", "[0-9a-f]{32}"),
        ({"columns": [*BASE["columns"], {"name": "os version", "type": "String", "source": "os"}]}, "columns.4.name", "pattern"),
        ({"batch_ranges": "four"}, "batch_ranges", "valid integer"),
        ({"columns": [{"name": "userName", "type": "String", "source": "user_name"}]}, "columns", "'id' column"),
        ({"source": {"kind": "files", "pattern": "no-date.csv"}}, "source", "{date}"),
    ],
)
def test_a_bad_contract_is_refused_naming_the_file_the_field_and_what_is_allowed(tmp_path, change, field, says):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({**BASE, **change}))
    with pytest.raises(ContractError) as refused:
        load_contract(path)
    message = str(refused.value)
    assert message.startswith("broken.yaml: ") and field in message and says in message


# --- a run whose worker is gone ---------------------------------------------------------------


def test_a_run_whose_worker_was_killed_is_failed_with_its_cause_alerted_once_and_resumed(
    tmp_path, sdk_jar, keys_file, datahub_endpoint, receiver
):
    # The worker runs like `dagster asset materialize`: its run has no code location
    # origin, so Dagster's run retries cannot start it again, and the sensor requests the retry.
    # The run sends a block of two ranges, as the daily fan-out's runs do.
    from datahub_assets.monitoring.dead_runs import build_dead_run_sensor
    from datahub_assets.monitoring.notifier import Notifier
    from datahub_assets.upload.resources import DeliveryDatabase

    contracts = write_contract(tmp_path / "contracts", batch_ranges=2)
    home = tmp_path / "dagster_home"
    home.mkdir()
    retries = {"run_retries": {"enabled": True, "max_retries": 2}}
    with dg.instance_for_test(temp_dir=str(home), overrides=retries) as instance:
        day = Day(tmp_path, sdk_jar, keys_file, f"sqlite:///{tmp_path / 'delivery.db'}", instance, contracts)
        write_table(generate(4_000, DAY, seed=8), day.source_url)
        day.prepare()
        datahub_endpoint.faults(latency_ms={"median": 200, "jitter": 0})
        env = {**os.environ, **day.env(), "DAGSTER_HOME": str(home)}
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), str(contracts), DAY, "--block", "0-1",
             "--config", '{"threads": 2, "lease_ttl_s": 10}'],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # A bound, not a timing: a loaded machine takes long to start a worker and its JVM.
        wait_until(lambda: len(day.ledger()) >= 3, timeout_s=180, what="the worker's first batches")
        worker.kill()  # SIGKILL: no cleanup, the run stays STARTED
        worker.wait()
        # Requests already written to the socket still arrive: these batches may be
        # stored once by the dead worker and once more by the relaunch.
        in_flight = {e.content_hash for e in day.ledger().values() if e.status != "S"}
        (run,) = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))

        sensor = build_dead_run_sensor(load_contracts(contracts), grace_s=0)
        resources = {
            "delivery_db": DeliveryDatabase(url=day.delivery_url),
            "notifier": Notifier(webhook_url=f"{receiver.url}/hook"),
        }

        requested = []

        def tick() -> None:
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                result = sensor(context)
            requested.extend(getattr(result, "run_requests", None) or [])

        # A bound, not a timing: the lease expires 10 s after the kill; a loaded machine ticks slowly.
        wait_until(
            lambda: tick() or instance.get_run_by_id(run.run_id).is_finished, timeout_s=120, what="the run to be failed"
        )
        failed = instance.get_run_by_id(run.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE
        (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        # The range it was sending when killed (a loaded machine may have reached the second).
        (alert,) = receiver.webhook_alerts()
        assert alert["state"] == "worker_gone" and alert["ranges"] in (["0"], ["1"])
        assert f"worker of range {alert['ranges'][0]} of " in failure.message
        assert "it is retried and resumes from the ledger" in failure.message
        tick()
        assert len(receiver.webhook_alerts()) == 1
        # One retry of the same block of partitions, as Dagster's own retries would tag it.
        (retry,) = requested
        assert retry.partition_key is None and retry.job_name == "user_profile_upload_retry"
        assert (retry.partition_key_range.start, retry.partition_key_range.end) == (f"{DAY}|0", f"{DAY}|1")
        assert retry.tags["dagster/parent_run_id"] == run.run_id and retry.tags["dagster/retry_number"] == "1"
        assert retry.run_config == run.run_config

        # The relaunch resumes from the ledger.
        datahub_endpoint.faults(latency_ms={"median": 0, "jitter": 0})
        assert day.upload_block("0", "1").success
    receipts = endpoint_receipts(datahub_endpoint.db_path)
    acked = [r["content_hash"] for r in receipts if r["status"] == "S"]
    # Every batch acknowledged; a second copy only of a batch that was in flight at the kill.
    assert len(set(acked)) == 40
    assert {h for h in acked if acked.count(h) > 1} <= in_flight
