"""The daily schedule, the fan-out and the watching sensors, against a real Dagster
instance, a real SQLite ledger, real snapshot files and a real local HTTP receiver
standing in for Slack and the webhook. The sensors' clock is frozen; nothing else is."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from datetime import time as clock_time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa
from dagster_graphql.test.utils import define_out_of_process_workspace, execute_dagster_graphql

from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contract
from datahub_assets.definitions import build_dataset_assets, build_definitions
from datahub_assets.extract.sources import LandingFiles, SourceDatabase
from datahub_dev.synthetic import generate, write_table
from datahub_assets.lake import DataLake
from datahub_assets.monitoring.clock import WatchClock
from datahub_assets.monitoring.notifier import Notifier
from datahub_assets.automation.daily import FAN_OUT_TAG, build_daily_delivery_schedule, build_prepare_job
from datahub_assets.monitoring.rules import (
    AT_RISK,
    FAILED,
    LATE,
    NOT_AT_RISK_CHECK,
    NOT_STALLED_CHECK,
    STALLED,
    NOT_FAILED_CHECK,
    ON_TIME_CHECK,
    Watch,
)
from datahub_assets.monitoring.sensors import build_delivery_checks, build_watch_sensor
from datahub_assets.partitions import DATE_DIM, PARTNER_TZ, RANGE_DIM, batch_slice, range_keys, upload_partitions_def
from datahub_assets.upload.ledger import Ledger, ledger_table
from datahub_assets.upload.resources import DeliveryDatabase, create_delivery_engine
from support import NoSendClient, Receiver, environment_of, write_contract

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = DEFAULT_CONTRACTS_DIR
CONTRACT = load_contract(CONTRACTS_DIR / "user_profile.yaml")
UPLOADED = dg.AssetKey("user_profile_uploaded")
DELIVERED = dg.AssetKey("user_profile_delivered")
KEYS = range_keys(CONTRACT.batch_ranges)
DAY = "2026-11-25"  # business date; due 2026-11-26 10:00 GMT+8
DAY_ROWS = 100_000  # 1,000 batches
DAY_BATCHES = 1_000
SLACK_TOKEN = "xoxb-test-token"


def on_due_day(hour: int, minute: int) -> datetime:
    """A time on the morning DAY is due, GMT+8."""
    return datetime(2026, 11, 26, hour, minute, tzinfo=PARTNER_TZ)


def range_of(batch_no: int) -> str:
    return next(k for i, k in enumerate(KEYS) if batch_no in batch_slice(i, len(KEYS), DAY_BATCHES))


@dataclass
class Platform:
    """A Dagster instance, the lake, the ledger and the sensors' resources."""

    instance: dg.DagsterInstance
    lake: DataLake
    ledger_engine: sa.Engine
    resources: dict
    tmp_path: Path

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.ledger_engine)

    def write_snapshot(self, day: str, rows: int) -> None:
        path = self.lake.snapshot_path(CONTRACT.dataset, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = [f"u{i:08d}" for i in range(rows)]
        pl.DataFrame(
            {"id": ids, "userName": ["name"] * rows, "userAge": ["30"] * rows, "screenWidth": ["390.5"] * rows}
        ).write_parquet(path)

    def record(self, day: str, batches: range | list[int], status: str = "S", code: str = "SUCCESS") -> None:
        ledger = self.ledger
        for n in batches:
            ledger.mark_sending(CONTRACT.data_uuid, day, n, f"hash{n}")
            ledger.record_result(CONTRACT.data_uuid, day, n, status, code, f"{n:010d}")

    def pace_acks(self, day: str, seconds_per_batch: float, until: datetime) -> None:
        """Spread the day's acknowledgements back from `until` (the sensor's clock), one every
        `seconds_per_batch`: the measured rate the ledger reports becomes 1 / seconds_per_batch."""
        t = ledger_table
        now = until.timestamp()
        last = sa.select(sa.func.max(t.c.batch_no)).where(t.c.status == "S").scalar_subquery()
        with self.ledger_engine.begin() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.day == day, t.c.status == "S")
                .values(acked_at=now - (last - t.c.batch_no) * seconds_per_batch)
            )

    def deliver(self, day: str, keys: list[str]) -> None:
        """Record uploaded ranges as the asset would: one materialization per partition."""
        for key in keys:
            self.instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key=UPLOADED, partition=dg.MultiPartitionKey({DATE_DIM: day, RANGE_DIM: key}))
            )

    def upload_run(self, day: str, key: str) -> dg.ExecuteInProcessResult:
        """A real run of <dataset>_uploaded for one range whose batches are all acknowledged."""
        return dg.materialize(
            [build_dataset_assets(CONTRACTS_DIR)[2]],
            partition_key=dg.MultiPartitionKey({DATE_DIM: day, RANGE_DIM: key}),
            instance=self.instance,
            resources={
                "lake": self.lake,
                "delivery_db": self.resources["delivery_db"],
                "sdk": NoSendClient(),
            },
            raise_on_error=False,
        )

    def prove(self, day: str, now: datetime) -> dg.ExecuteInProcessResult:
        """A real proof run for the date: <dataset>_delivered and the watching checks on it,
        judged at `now`."""
        *_, delivered = build_dataset_assets(CONTRACTS_DIR)
        return dg.materialize(
            [delivered, build_delivery_checks(CONTRACT, lookback_days=1)],
            partition_key=day,
            instance=self.instance,
            resources={
                "lake": self.lake,
                "delivery_db": self.resources["delivery_db"],
                "watch_clock": WatchClock(frozen_at=now.isoformat()),
            },
        )

    def settle(self) -> None:
        """Until the latest proof is over one second old: SQLite keeps a check result's time
        in whole seconds, so the sensor repeats a result reported sooner (see sensors.py)."""
        (latest,) = self.instance.fetch_materializations(DELIVERED, limit=1).records
        deadline = time.monotonic() + 30
        while time.time() <= latest.timestamp + 1.0:
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def tick(self, watch: Watch, now: datetime, cursor: str | None = None, lookback_days: int = 1) -> dg.SensorResult:
        """One sensor tick at `now` (the watch clock frozen by configuration); its check
        results are stored as the sensor daemon does."""
        sensor = build_watch_sensor(watch, [CONTRACT], lookback_days=lookback_days)
        resources = {**self.resources, "watch_clock": WatchClock(frozen_at=now.isoformat())}
        with dg.build_sensor_context(instance=self.instance, cursor=cursor, resources=resources) as context:
            result = sensor(context)
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
        return result

    def latest_check(self, check_name: str) -> dg.AssetCheckEvaluation:
        record = self.instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(DELIVERED, check_name))
        assert record is not None and record.event is not None
        return record.event.asset_check_evaluation


@pytest.fixture
def platform(tmp_path: Path, receiver: Receiver) -> Iterator[Platform]:
    ledger_url = f"sqlite:///{tmp_path / 'delivery.db'}"
    lake = DataLake(root=str(tmp_path / "lake"))
    resources = {
        "delivery_db": DeliveryDatabase(url=ledger_url),
        "lake": lake,
        "notifier": Notifier(
            slack_token=SLACK_TOKEN,
            slack_channel="#datahub-alerts",
            slack_api_url=f"{receiver.url}/slack/",
            webhook_url=f"{receiver.url}/hook",
            timeout_s=5,
        ),
    }
    engine = create_delivery_engine(ledger_url)
    with dg.instance_for_test() as instance:
        yield Platform(instance, lake, engine, resources, tmp_path)
    engine.dispose()


def numbers_only(metadata: dict) -> bool:
    return all(isinstance(v.value, int | float) and not isinstance(v.value, bool) for v in metadata.values())


@pytest.mark.parametrize(
    ("seconds_per_batch", "at_risk"),
    # 400 batches left at 09:00: at 0.1 batch/s they take 4,000 s (ETA 10:06:40); at 1/s, 400 s.
    [(10.0, True), (1.0, False)],
)
def test_at_nine_with_forty_percent_left_the_measured_rate_decides_at_risk(
    platform: Platform, receiver: Receiver, seconds_per_batch: float, at_risk: bool
):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(600))
    platform.pace_acks(DAY, seconds_per_batch, until=on_due_day(9, 0))
    done = [k for i, k in enumerate(KEYS) if batch_slice(i, len(KEYS), DAY_BATCHES).stop <= 600]
    platform.deliver(DAY, done)

    result = platform.tick(AT_RISK, on_due_day(9, 0))

    (evaluation,) = result.asset_events
    assert evaluation.check_name == NOT_AT_RISK_CHECK and evaluation.passed is not at_risk
    assert platform.latest_check(NOT_AT_RISK_CHECK).passed is not at_risk
    if not at_risk:
        assert receiver.posts == []
        return
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert numbers_only(evaluation.metadata)
    assert meta["batches_total"] == DAY_BATCHES and meta["batches_remaining"] == 400
    assert meta["rate_batches_per_s"] == pytest.approx(0.1, rel=0.05)
    assert -450 < meta["slack_s"] < -350  # 3,600 s left, ~4,000 s of work
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    missing = [k for k in KEYS if k not in done]
    assert meta["ranges_flagged"] == len(missing) == 13
    (alert,) = receiver.webhook_alerts()
    assert (alert["state"], alert["dataset"], alert["date"], alert["ranges"]) == ("at_risk", "user_profile", DAY, missing)
    assert "ETA 10:06 GMT+8" in alert["text"] and alert["text"].endswith("Ranges: 19-31.")
    # What would save the day: 400 batches in the 3,600 s left, which the cap allows.
    assert meta["rate_needed_batches_per_s"] == pytest.approx(400 / 3600, rel=0.01)
    assert "0.11 batches/s would finish by 10:00 and the cap (20/s) allows it: e.g. N·M = 1 x 0.11" in alert["text"]


@pytest.mark.parametrize(
    ("seconds_since_last_ack", "at_risk"),
    # 50 batches acknowledged over 10 s of start-up (5/s), 950 left, 180 s to the deadline:
    # at the start-up's 5/s they take 190 s; at the limiter's 19.6/s, 48 s.
    [(0.0, False), (15.0, True)],
)
def test_in_the_first_minute_a_sending_day_is_planned_at_the_limiters_rate_and_a_silent_one_at_its_own(
    platform: Platform, receiver: Receiver, seconds_since_last_ack: float, at_risk: bool
):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(50))
    now = on_due_day(9, 57)
    platform.pace_acks(DAY, 0.2, until=now - timedelta(seconds=seconds_since_last_ack))

    (evaluation,) = platform.tick(AT_RISK, now).asset_events

    assert evaluation.passed is not at_risk
    if at_risk:
        meta = {k: v.value for k, v in evaluation.metadata.items()}
        assert meta["rate_batches_per_s"] < 5  # the measured rate, falling since the acknowledgements stopped
        assert [a["state"] for a in receiver.webhook_alerts()] == ["at_risk"]
    else:
        assert receiver.posts == []


def test_after_ten_an_incomplete_date_is_late_and_alerted_once(platform: Platform, receiver: Receiver):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(batch_slice(29, len(KEYS), DAY_BATCHES).stop))  # ranges 00-29: 937 batches
    platform.deliver(DAY, KEYS[:30])

    before = platform.tick(LATE, on_due_day(9, 59))
    assert [e.passed for e in before.asset_events] == [True] and receiver.posts == []

    late = platform.tick(LATE, on_due_day(10, 1), before.cursor)
    (evaluation,) = late.asset_events
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert numbers_only(evaluation.metadata)
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert (meta["ranges_missing"], meta["minutes_past_deadline"], meta["batches_remaining"]) == (2, 1, 63)
    assert [a["ranges"] for a in receiver.webhook_alerts()] == [KEYS[30:]]

    # The next tick sees the same late ranges: no new alert, and no new check result (upload
    # runs leave the delivered asset, and its checks, alone).
    again = platform.tick(LATE, on_due_day(10, 3), late.cursor)
    assert len(receiver.webhook_alerts()) == 1 and again.asset_events == []

    # Delivered: the check passes again, and nobody is told twice about anything.
    platform.deliver(DAY, KEYS[30:])
    done = platform.tick(LATE, on_due_day(10, 20), again.cursor)
    assert [e.passed for e in done.asset_events] == [True]
    assert platform.latest_check(ON_TIME_CHECK).passed
    assert len(receiver.webhook_alerts()) == 1 and len(receiver.slack_messages()) == 1

    # Days later the cursor forgets the date: it is no longer watched.
    later = platform.tick(LATE, datetime(2026, 11, 29, 10, 1, tzinfo=PARTNER_TZ), done.cursor)
    assert DAY not in later.cursor


UI_CHECKS_QUERY = """
query Checks($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks { name executionForLatestMaterialization { status evaluation { success description } } }
        }
      }
    }
  }
}
"""


def test_the_ui_shows_each_sensor_result_on_the_delivered_asset(platform: Platform):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.deliver(DAY, KEYS[:30])
    definitions_file = str(REPO_ROOT / "datahub_assets" / "definitions.py")
    with define_out_of_process_workspace(definitions_file, "defs", platform.instance) as workspace:

        def shown(asset: dg.AssetKey) -> dict:
            """What the asset's Checks tab shows, through the webserver's GraphQL."""
            result = execute_dagster_graphql(
                workspace.create_request_context(), UI_CHECKS_QUERY, {"key": {"path": asset.path}}
            )
            checks = result.data["assetNodeOrError"]["assetChecksOrError"]["checks"]
            return {c["name"]: c["executionForLatestMaterialization"] for c in checks}

        assert shown(UPLOADED) == {}  # no check runs in an upload run
        assert set(shown(DELIVERED)) == {NOT_FAILED_CHECK, ON_TIME_CHECK, NOT_AT_RISK_CHECK, NOT_STALLED_CHECK}
        late = platform.tick(LATE, on_due_day(10, 1))
        assert shown(DELIVERED)[ON_TIME_CHECK]["status"] == "FAILED"
        assert "2 of 32 ranges not delivered" in shown(DELIVERED)[ON_TIME_CHECK]["evaluation"]["description"]

        # A range of another date lands (a real run; its day is empty, so nothing is sent):
        # the delivered asset's checks stand, and the sensor has nothing new to report.
        platform.write_snapshot("2026-11-24", 0)
        assert platform.upload_run("2026-11-24", KEYS[0]).success
        assert shown(DELIVERED)[ON_TIME_CHECK]["status"] == "FAILED"
        again = platform.tick(LATE, on_due_day(10, 3), late.cursor)
        assert again.asset_events == []

        # That date's proof lands: its run evaluates the checks for the new materialization,
        # so the UI still shows them; the sensor reports its unchanged result once more.
        assert platform.prove("2026-11-24", on_due_day(10, 4)).success
        assert shown(DELIVERED)[ON_TIME_CHECK]["status"] == "FAILED"
        assert "2 of 32 ranges not delivered" in shown(DELIVERED)[ON_TIME_CHECK]["evaluation"]["description"]
        platform.settle()
        again = platform.tick(LATE, on_due_day(10, 5), again.cursor)
        assert len(again.asset_events) == 1
        assert platform.tick(LATE, on_due_day(10, 6), again.cursor).asset_events == []


def test_executing_the_checks_by_hand_evaluates_like_the_sensors(platform: Platform, receiver: Receiver):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.deliver(DAY, KEYS[:30])
    checks = build_delivery_checks(CONTRACT, lookback_days=1)
    resources = {
        **{k: platform.resources[k] for k in ("delivery_db", "lake")},
        "watch_clock": WatchClock(frozen_at=on_due_day(10, 1).isoformat()),
    }

    run = dg.materialize(
        [checks], selection=dg.AssetSelection.checks(checks), instance=platform.instance, resources=resources
    )

    by_name = {e.check_name: e for e in run.get_asset_check_evaluations()}
    # After 10:00 at-risk hands over to late: it no longer passes as "on course".
    assert {name: e.passed for name, e in by_name.items()} == {
        NOT_FAILED_CHECK: True, ON_TIME_CHECK: False, NOT_AT_RISK_CHECK: False, NOT_STALLED_CHECK: True
    }
    assert "see the late alert" in by_name[NOT_AT_RISK_CHECK].description
    (reported,) = platform.tick(LATE, on_due_day(10, 1)).asset_events
    assert by_name[ON_TIME_CHECK].description == reported.description
    assert by_name[ON_TIME_CHECK].metadata == reported.metadata
    assert len(receiver.webhook_alerts()) == 1  # only the sensor notifies


@pytest.mark.parametrize(("last_ack", "by_deadline", "slack_s"), [((9, 0), True, 3600.0), ((10, 30), False, -1800.0)])
def test_a_proof_records_whether_its_date_was_delivered_by_the_deadline(
    platform: Platform, last_ack: tuple[int, int], by_deadline: bool, slack_s: float
):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(DAY_BATCHES))
    platform.pace_acks(DAY, 1.0, until=on_due_day(*last_ack))
    platform.deliver(DAY, KEYS)

    proof = platform.prove(DAY, on_due_day(11, 0))

    (materialization,) = proof.asset_materializations_for_node(DELIVERED.path[-1])
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert (meta["delivered_by_deadline"], meta["slack_at_completion_s"]) == (by_deadline, slack_s)
    assert meta["completed_at"] == on_due_day(*last_ack).timestamp()
    # The run evaluated the watching checks too: the date is complete, so none is flagged.
    assert {e.check_name: e.passed for e in proof.get_asset_check_evaluations()} == dict.fromkeys(
        [NOT_FAILED_CHECK, ON_TIME_CHECK, NOT_AT_RISK_CHECK, NOT_STALLED_CHECK], True
    )


def test_a_date_whose_batches_are_all_acknowledged_is_not_late(platform: Platform, receiver: Receiver):
    # Every batch S in the ledger (say a range run crashed after its last ack) counts as delivered.
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(DAY_BATCHES))
    platform.deliver(DAY, KEYS[:31])

    result = platform.tick(LATE, on_due_day(10, 1))

    assert [e.passed for e in result.asset_events] == [True] and receiver.posts == []


def test_a_refused_batch_fails_its_range_and_each_failure_is_alerted_once(platform: Platform, receiver: Receiver):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(200))
    platform.record(DAY, [221], status="F", code="DATA_CHECK_FAILED")
    assert range_of(221) == "07"

    cursor = None
    for minute in (0, 2, 4):  # three ticks, one state
        result = platform.tick(FAILED, on_due_day(7, minute), cursor)
        cursor = result.cursor
    assert [a["ranges"] for a in receiver.webhook_alerts()] == [["07"]]
    assert platform.latest_check(NOT_FAILED_CHECK).passed is False

    # A second range fails later: one more alert, for that range only.
    platform.record(DAY, [700], status="F", code="PARAM_ILLEGAL")
    result = platform.tick(FAILED, on_due_day(7, 6), cursor)
    platform.tick(FAILED, on_due_day(7, 8), result.cursor)

    assert [a["ranges"] for a in receiver.webhook_alerts()] == [["07"], [range_of(700)]]
    slack = receiver.slack_messages()
    assert [m["channel"] for m in slack] == ["#datahub-alerts"] * 2
    assert "FAILED" in slack[1]["text"] and f"Ranges: {range_of(700)}." in slack[1]["text"]
    check = platform.latest_check(NOT_FAILED_CHECK)
    assert {k: v.value for k, v in check.metadata.items()}["batches_failed"] == 2
    # Only the Authorization header carries the token; no message carries an id or a secret.
    assert all(h["Authorization"] == f"Bearer {SLACK_TOKEN}" for p, h, _ in receiver.posts if p.startswith("/slack/"))
    for _, _, body in receiver.posts:
        assert CONTRACT.data_uuid not in json.dumps(body) and SLACK_TOKEN not in json.dumps(body)


def test_an_alert_the_receiver_refused_goes_out_on_the_next_tick(platform: Platform, receiver: Receiver):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, [40], status="F", code="PARAM_ILLEGAL")
    platform.resources["notifier"] = Notifier(webhook_url=f"{receiver.url}/hook", timeout_s=5)
    receiver.refusing[0] = True

    refused = platform.tick(FAILED, on_due_day(7, 0))
    assert json.loads(refused.cursor)["notified"] == []  # nothing was received
    receiver.refusing[0] = False
    platform.tick(FAILED, on_due_day(7, 2), refused.cursor)

    assert [a["ranges"] for a in receiver.webhook_alerts()] == [[range_of(40)]]


def test_each_channel_gets_an_alert_once_even_when_another_channel_refuses(platform: Platform, receiver: Receiver):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, [40], status="F", code="PARAM_ILLEGAL")
    receiver.refused_paths.add("/hook")  # Slack answers, the webhook refuses

    cursor = platform.tick(FAILED, on_due_day(7, 0)).cursor
    cursor = platform.tick(FAILED, on_due_day(7, 2), cursor).cursor  # still refused
    assert len(receiver.slack_messages()) == 1 and receiver.webhook_alerts() == []

    receiver.refused_paths.clear()
    cursor = platform.tick(FAILED, on_due_day(7, 4), cursor).cursor
    platform.tick(FAILED, on_due_day(7, 6), cursor)

    # Slack got the alert once, on the first tick; the webhook once, when it answered.
    assert [m["text"].split(".")[0] for m in receiver.slack_messages()] == [f"[datahub] user_profile {DAY}: FAILED"]
    assert [(a["state"], a["ranges"]) for a in receiver.webhook_alerts()] == [("failed", [range_of(40)])]
    assert sorted(map(tuple, json.loads(cursor)["notified"])) == [
        ("user_profile", DAY, range_of(40), "slack"),
        ("user_profile", DAY, range_of(40), "webhook"),
    ]


def test_a_failed_upload_run_fails_its_range(platform: Platform, receiver: Receiver):
    # No snapshot for DAY: the upload run fails before sending anything.
    assert not platform.upload_run(DAY, "05").success

    result = platform.tick(FAILED, on_due_day(7, 0))

    (evaluation,) = result.asset_events
    assert not evaluation.passed
    assert {k: v.value for k, v in evaluation.metadata.items()}["runs_failed"] == 1
    assert [(a["state"], a["ranges"]) for a in receiver.webhook_alerts()] == [("failed", ["05"])]


def test_a_disabled_channel_sends_nothing_and_an_enabled_one_then_gets_the_alert(
    platform: Platform, receiver: Receiver
):
    platform.record(DAY, [3], status="F", code="PARAM_ILLEGAL")
    platform.write_snapshot(DAY, DAY_ROWS)
    # Every address points at the receiver, but each channel misses a setting: both are off.
    platform.resources["notifier"] = Notifier(
        slack_token=SLACK_TOKEN, slack_channel="", slack_api_url=f"{receiver.url}/slack/", webhook_url=""
    )

    result = platform.tick(FAILED, on_due_day(7, 0))

    assert [e.passed for e in result.asset_events] == [False] and receiver.posts == []
    assert json.loads(result.cursor)["notified"] == []  # no channel received it

    # Once the webhook is configured, it gets the alert, and Slack (still off) nothing.
    platform.resources["notifier"] = Notifier(
        slack_token=SLACK_TOKEN, slack_channel="", slack_api_url=f"{receiver.url}/slack/",
        webhook_url=f"{receiver.url}/hook",
    )  # fmt: skip
    platform.tick(FAILED, on_due_day(7, 2), result.cursor)
    assert [p for p, _, _ in receiver.posts] == ["/hook"]


def test_a_cursor_from_before_channels_were_remembered_sends_nothing_again(platform: Platform, receiver: Receiver):
    platform.record(DAY, [3], status="F", code="PARAM_ILLEGAL")
    platform.write_snapshot(DAY, DAY_ROWS)
    old_cursor = json.dumps({"notified": [["user_profile", DAY, "00"]], "outcomes": {}})

    platform.tick(FAILED, on_due_day(7, 0), old_cursor)

    assert receiver.posts == []


def test_the_schedule_starts_yesterdays_extract_and_snapshot_in_gmt8():
    schedule = build_daily_delivery_schedule(CONTRACT, build_prepare_job(CONTRACT))
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 5 * * *", "Asia/Shanghai")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    later = build_daily_delivery_schedule(CONTRACT, build_prepare_job(CONTRACT), start=clock_time(4, 5))
    assert later.cron_schedule == "5 4 * * *"

    # 05:30 GMT+8 on the 26th is 21:30 UTC on the 25th: the business date is the 25th.
    tick = datetime(2026, 11, 25, 21, 30, tzinfo=timezone.utc)
    defs = build_definitions()
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        )
        (request,) = defs.resolve_schedule_def("user_profile_daily_schedule").evaluate_tick(context).run_requests

    assert request.partition_key == DAY
    assert schedule.job_name == "user_profile_prepare_job"  # extract and snapshot
    assert request.tags[FAN_OUT_TAG] == "user_profile"
    assert (request.tags["datahub/dataset"], request.tags["datahub/date"]) == ("user_profile", DAY)


def test_a_successful_tagged_snapshot_run_fans_out_every_range_once(tmp_path: Path):
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    for day in (DAY, "2026-11-24", "2026-11-23"):
        write_table(generate(500, day), source_url)
    extract, snapshot, *_ = build_dataset_assets(CONTRACTS_DIR)
    resources = {
        "lake": DataLake(root=str(tmp_path / "lake")),
        "source_db": SourceDatabase(url=source_url),
        "landing": LandingFiles(url=str(tmp_path / "landing")),
    }
    defs = build_definitions()
    sensor = defs.resolve_sensor_def("user_profile_upload_fan_out_sensor")
    with dg.instance_for_test() as instance:
        tagged = {FAN_OUT_TAG: "user_profile"}
        for day, assets, tags in (
            (DAY, [extract, snapshot], tagged),
            ("2026-11-24", [extract, snapshot], {}),  # a hand run without the tag stays alone
            ("2026-11-23", [extract], tagged),  # no snapshot built: nothing to upload
        ):
            run = dg.materialize(assets, partition_key=day, resources=resources, instance=instance, tags=tags)
            assert run.success

        # evaluate_tick resolves the requests against the definitions, as the daemon does.
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        second = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs))

    # Every range of the tagged date once, in the contract's 4 runs of a block of 8.
    partitions = upload_partitions_def(CONTRACT)
    targets = [partitions.get_partition_keys_in_range(r.partition_key_range) for r in first.run_requests]
    assert sorted(str(k) for block in targets for k in block) == [f"{DAY}|{k}" for k in KEYS]
    assert sensor.job_name == "user_profile_upload_job"
    assert sorted(r.tags["datahub/range"] for r in first.run_requests) == ["00-07", "08-15", "16-23", "24-31"]
    assert len({r.run_key for r in first.run_requests}) == CONTRACT.upload_runs == 4
    assert second.run_requests == []


def test_definitions_declare_the_checks_schedules_and_sensors_per_contract(tmp_path: Path):
    # A second contract with another start date and range count: its assets have other
    # partitions definitions, so nothing may target both contracts' assets at once.
    write_contract(tmp_path)
    write_contract(tmp_path, dataset="device_profile", data_uuid="0" * 32, start_date="2026-06-01", batch_ranges=8)
    defs = build_definitions(tmp_path)
    dg.Definitions.validate_loadable(defs)

    checks = defs.resolve_asset_graph().asset_check_keys
    for dataset in ("user_profile", "device_profile"):
        for check in (NOT_FAILED_CHECK, ON_TIME_CHECK, NOT_AT_RISK_CHECK, NOT_STALLED_CHECK):
            assert dg.AssetCheckKey(dg.AssetKey(f"{dataset}_delivered"), check) in checks
        assert not [c for c in checks if c.asset_key == dg.AssetKey(f"{dataset}_uploaded")]
        jobs = {f"{dataset}_{job}_job" for job in ("prepare", "upload", "proof")}
        assert jobs <= {j.name for j in defs.resolve_all_job_defs()}
    assert {s.name: s.default_status for s in defs.sensors} == dict.fromkeys(
        [
            "user_profile_upload_fan_out_sensor",
            "device_profile_upload_fan_out_sensor",
            "delivery_failed_sensor",
            "delivery_late_sensor",
            "delivery_at_risk_sensor",
            "delivery_stalled_sensor",
            "dead_upload_run_sensor",
            "proof_of_delivery_sensor",
        ],
        dg.DefaultSensorStatus.RUNNING,
    )
    assert sorted(s.name for s in defs.schedules) == ["device_profile_daily_schedule", "user_profile_daily_schedule"]


def test_dagster_validates_the_definitions_without_any_setting(tmp_path: Path):
    """The one-machine location, and the two Kubernetes locations loaded side by side (the
    deliver location's uploaded asset depends on the prepare location's snapshot)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAHUB_")}
    env["DAGSTER_HOME"] = str(tmp_path)
    (tmp_path / "two_locations.yaml").write_text(
        "load_from:\n"
        "  - python_module: {module_name: datahub_assets.locations.prepare, location_name: prepare}\n"
        "  - python_module: {module_name: datahub_assets.locations.deliver, location_name: deliver}\n"
    )
    dagster = str(Path(sys.executable).parent / "dagster")
    for target in (["-m", "datahub_assets.definitions"], ["-w", str(tmp_path / "two_locations.yaml")]):
        result = subprocess.run(
            [dagster, "definitions", "validate", *target],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_at_half_past_nine_a_stall_is_flagged_stalled_and_at_risk_each_once(platform: Platform, receiver: Receiver):
    # 30 % left at 09:30, the last acknowledgement 5 minutes ago: the measured rate has
    # fallen toward 0, which is never replaced by the cap.
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(700))
    platform.pace_acks(DAY, 0.05, until=on_due_day(9, 25))
    done = [k for i, k in enumerate(KEYS) if batch_slice(i, len(KEYS), DAY_BATCHES).stop <= 700]
    platform.deliver(DAY, done)

    stalled = platform.tick(STALLED, on_due_day(9, 30))
    at_risk = platform.tick(AT_RISK, on_due_day(9, 30))
    assert [e.passed for e in stalled.asset_events] == [False]
    assert [e.passed for e in at_risk.asset_events] == [False]
    assert platform.tick(STALLED, on_due_day(9, 32), stalled.cursor).asset_events == []
    platform.tick(AT_RISK, on_due_day(9, 32), at_risk.cursor)
    alerts = receiver.webhook_alerts()
    assert sorted(a["state"] for a in alerts) == ["at_risk", "stalled"]  # each sent once
    (stall,) = [a for a in alerts if a["state"] == "stalled"]
    assert stall["numbers"]["minutes_since_last_ack"] == 5 and stall["numbers"]["batches_remaining"] == 300
    (risk,) = [a for a in alerts if a["state"] == "at_risk"]
    assert "would finish by 10:00" in risk["text"] and "N·M" in risk["text"]


def test_at_ten_past_one_a_date_still_sending_is_late_with_a_new_eta(platform: Platform, receiver: Receiver):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(900))
    platform.pace_acks(DAY, 0.1, until=on_due_day(10, 1))  # 10 batches/s, still going
    platform.deliver(DAY, [k for i, k in enumerate(KEYS) if batch_slice(i, len(KEYS), DAY_BATCHES).stop <= 900])

    (late,) = platform.tick(LATE, on_due_day(10, 1)).asset_events
    (at_risk,) = platform.tick(AT_RISK, on_due_day(10, 1)).asset_events
    assert not late.passed and "new ETA 10:01 GMT+8" in late.description
    assert not at_risk.passed  # after the deadline at-risk hands over to late, never "on course"


def test_a_date_superseded_by_a_newer_delivered_date_is_not_late_and_the_check_says_why(
    platform: Platform, receiver: Receiver
):
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(100))  # 10 % sent, then the newer date was delivered
    platform.record("2026-11-26", range(5))

    late = platform.tick(LATE, on_due_day(10, 1))
    at_risk = platform.tick(AT_RISK, on_due_day(9, 0))
    stalled = platform.tick(STALLED, on_due_day(9, 30))

    for result in (late, at_risk, stalled):
        (evaluation,) = result.asset_events
        assert evaluation.passed
        assert f"{DAY} superseded by 2026-11-26" in evaluation.description
        assert evaluation.metadata["dates_superseded"].value == 1
    assert receiver.posts == []


def test_a_date_nothing_was_started_for_is_not_alerted_on_the_first_tick(platform: Platform, receiver: Receiver):
    # Watched at 10:01 on DAY's due morning: DAY (snapshot built, partly sent) and the date
    # before it, for which nothing ever happened (the platform was deployed since).
    untouched = "2026-11-24"
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.record(DAY, range(100))

    first = platform.tick(LATE, on_due_day(10, 1), lookback_days=2)
    (evaluation,) = first.asset_events
    assert not evaluation.passed and untouched in evaluation.description  # shown, not hidden
    assert [a["date"] for a in receiver.webhook_alerts()] == [DAY]

    platform.tick(LATE, on_due_day(10, 3), first.cursor, lookback_days=2)
    assert [a["date"] for a in receiver.webhook_alerts()] == [DAY]  # still only DAY, once
    assert len(receiver.slack_messages()) == 1


@pytest.mark.parametrize(("frozen_at", "late"), [("2026-11-26T09:59:00+08:00", False), ("2026-11-26T10:01:00+08:00", True)])
def test_the_deployed_sensor_judges_at_the_time_configuration_freezes(
    platform: Platform, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, frozen_at: str, late: bool
):
    """The platform's own definitions, configured through the environment alone."""
    platform.write_snapshot(DAY, DAY_ROWS)
    platform.deliver(DAY, KEYS[:30])
    for name, value in {**environment_of(platform.resources), "DATAHUB_WATCH_FROZEN_AT": frozen_at}.items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(CONTRACTS_DIR)

    repository = defs.get_repository_def()
    sensor = repository.get_sensor_def("delivery_late_sensor")
    resources = {k: v for k, v in repository.get_top_level_resources().items() if k in sensor.required_resource_keys}
    with dg.build_sensor_context(instance=platform.instance, resources=resources) as context:
        (evaluation,) = sensor(context).asset_events

    # DAY is late only from 10:00 (the dates before it, never started, are shown, not alerted).
    assert (f"{DAY}: " in evaluation.description) is late
    assert [a["date"] for a in receiver.webhook_alerts()] == ([DAY] if late else [])
