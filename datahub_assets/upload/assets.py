"""<dataset>_uploaded: the day's batches delivered to Alipay+ DataHub, per (date, batch range)."""

import os
import socket
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial

import dagster as dg
from pydantic import Field

from datahub_assets.catalog import contract_metadata
from datahub_assets.contract import Contract
from datahub_assets.lake import DataLake
from datahub_assets.partitions import (
    DATE_DIM,
    Stage,
    asset_name,
    batch_count,
    batch_slice,
    deadline_for,
    is_current_day,
    range_keys,
    split_upload_key,
    upload_partitions_def,
)
from datahub_assets.planning import plan, plan_rest_of_day
from datahub_assets.upload.batches import Batch, batch_problems, read_batches, snapshot_row_count
from datahub_assets.upload.lease import LeaseKeeper, RangeKey, acquire_range_lease
from datahub_assets.upload.ledger import Ledger
from datahub_assets.upload.outcome import KEY_CODES, BatchStatus, UploadClient
from datahub_assets.upload.resources import DeliveryDatabase
from datahub_assets.upload.sender import RangeSender, RetryPolicy, pending_batches

UPLOAD_POOL = "datahub_upload"


class UploadConfig(dg.Config):
    threads: int = 8  # requests in flight from this run; the limiter holds the global cap
    max_attempts: int = 8  # per batch and run, for U outcomes and SDK exceptions
    retry_base_delay_s: float = 1.0
    progress_every_s: float = 10.0
    lease_ttl_s: float = Field(
        default=30.0, gt=0,
        description="How long a range stays held after its uploader stops renewing it (it renews every 2 s).",
    )
    lease_wait_s: float = Field(
        default=60.0, ge=0,
        description="How long to wait for another uploader of the same range to finish (0: fail at once).",
    )
    allow_older_date: bool = Field(
        default=False,
        description=(
            "Send a date older than one already delivered. The partner keeps one value per id, "
            "so this overwrites newer values with older ones: for deliberate corrections only."
        ),
    )
    dry_run: bool = Field(
        default=False,
        description=(
            "Read and check every batch of the range against the contract and report the counts and "
            "the day's ETA at the cap, as an observation: nothing is sent, nothing is written to the "
            "ledger, and the partition is not materialized."
        ),
    )


# A range at least this long warms the JVM's cryptography before its first slot
# (DataHubSdkResource.start): a few seconds of CPU once, against first sends that would
# otherwise leave late enough to crowd the partner's second. Shorter ranges skip it.
WARM_UP_MIN_BATCHES = 100
LEASE_BEAT_S = 2.0  # how often an uploader renews its range lease, at most (3 beats per lease_ttl_s at least)


def _run_ended(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why this run should send nothing more, if Dagster has already ended it."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.is_finished:
        return f"its run {run_id} has already ended ({run.status.value})"
    return None


def build_uploaded_asset(contract: Contract, snapshot: dg.AssetsDefinition) -> dg.AssetsDefinition:
    partitions_def = upload_partitions_def(contract)
    keys = range_keys(contract.batch_ranges)
    with warnings.catch_warnings():
        # Beta in Dagster 1.13, and the one mapping that says "every range of a date
        # reads that date's snapshot": silenced here, where it is built, once.
        warnings.simplefilter("ignore", dg.BetaWarning)
        by_date = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=DATE_DIM)

    @dg.asset(
        name=asset_name(contract, Stage.UPLOADED),
        group_name=contract.dataset,
        partitions_def=partitions_def,
        deps=[
            dg.AssetDep(snapshot, partition_mapping=by_date)
        ],
        kinds={"java", "alipay"},
        pool=UPLOAD_POOL,
        output_required=False,  # a dry run observes the range and materializes nothing
        owners=list(contract.owners),
        metadata=contract_metadata(contract),
        description=(
            f"{contract.dataset} delivered to Alipay+ DataHub (dataUuid in {contract.path.name}). "
            f"Each partition sends one of {contract.batch_ranges} contiguous ranges of the day's "
            "100-row batches through the partner's SDK, under the global cap; the ledger makes "
            "reruns send only what is not yet acknowledged."
        ),
    )
    def _uploaded(
        context: dg.AssetExecutionContext,
        config: UploadConfig,
        lake: DataLake,
        sdk: dg.ResourceParam[UploadClient],
        delivery_db: DeliveryDatabase,
    ) -> Iterator[dg.AssetMaterialization | dg.AssetObservation]:
        # One range, or a block of them (the daily fan-out's runs): each is sent, leased and
        # materialized on its own, in order, through the one JVM this process starts. The
        # next range is read from the snapshot while the current one is sent.
        # A thread woken for its slot gets the interpreter within 1 ms even while that read
        # holds it, instead of the default 5 ms.
        sys.setswitchinterval(0.001)
        failed: dict[str, _RangeFailure] = {}
        partition_keys = list(context.partition_keys)
        following = dict(zip(partition_keys, [*partition_keys[1:], None]))
        with _RangeReader(lambda key: _read_range(lake, key)) as reader:
            for partition_key in partition_keys:
                failure = yield from _send_range(
                    context, config, sdk, delivery_db, reader.get(partition_key),
                    while_sending=partial(reader.start, following[partition_key]),
                )
                if failure is not None:
                    failed[failure.range_key] = failure
                    if failure.stops_the_run:
                        break  # the next ranges would meet the same refusal: their batches stay pending
        if failed:
            raise dg.Failure(
                description=" ".join(f.description for f in failed.values())
                + " See the ledger for traceIds; a rerun sends only what is not acknowledged.",
                metadata={"failed_batch_numbers": dg.MetadataValue.json({k: f.batch_numbers for k, f in failed.items()})},
            )

    def _read_range(lake: DataLake, partition_key: str) -> _Range:
        day, range_key = split_upload_key(partitions_def, partition_key)
        snapshot_path = lake.snapshot_path(contract.dataset, day)
        if not snapshot_path.exists():
            raise dg.Failure(f"no snapshot of {contract.dataset} for {day}: materialize {contract.dataset}_snapshot first")
        total_batches = batch_count(snapshot_row_count(snapshot_path))
        numbers = batch_slice(keys.index(range_key), len(keys), total_batches)
        return _Range(partition_key, day, range_key, numbers, total_batches, read_batches(snapshot_path, numbers))

    def _send_range(
        context: dg.AssetExecutionContext, config: UploadConfig, sdk: UploadClient, delivery_db: DeliveryDatabase,
        the_range: _Range, while_sending: Callable[[], None],
    ) -> Generator[dg.AssetMaterialization | dg.AssetObservation, None, "_RangeFailure | None"]:
        """Send one range and yield its materialization; returns what failed if some of its
        batches did not succeed. `while_sending` is called as its first slot is sought."""
        partition_key, day, range_key = the_range.partition_key, the_range.day, the_range.range_key
        numbers, total_batches, batches = the_range.numbers, the_range.total_batches, the_range.batches
        ledger = delivery_db.ledger()
        if config.dry_run:
            while_sending()
            yield _dry_run(contract, partition_key, day, range_key, batches, total_batches, ledger, delivery_db.cap_per_second, context)
            return None

        # Never regress the partner: it keeps one value per id, the last one sent.
        newer = ledger.newer_delivered_day(contract.data_uuid, day)
        if newer is not None and not config.allow_older_date:
            raise dg.Failure(
                f"refused to send {day}: {newer} of {contract.dataset} is already (partly) delivered, and the "
                f"partner keeps one value per id, so {day} would overwrite newer values with older ones. "
                "Nothing was sent. To correct an old date on purpose, run again with allow_older_date: true."
            )
        if newer is not None:
            context.log.warning(
                "allow_older_date: sending %s although %s is already delivered; its rows replace newer ones",
                day, newer,
            )

        lease = acquire_range_lease(
            delivery_db.engine(),
            RangeKey(contract.data_uuid, day, range_key),
            holder=f"run {context.run.run_id} (pid {os.getpid()} on {socket.gethostname()})",
            run_id=context.run.run_id,
            ttl_s=config.lease_ttl_s,
            wait_s=config.lease_wait_s,
        )
        sender = RangeSender(
            client=sdk,
            ledger=ledger,
            limiter=delivery_db.limiter(),
            data_uuid=contract.data_uuid,
            day=day,
            priority=is_current_day(day),
            threads=config.threads,
            retry=RetryPolicy(max_attempts=config.max_attempts, base_delay_s=config.retry_base_delay_s),
            log=context.log,
            progress_every_s=config.progress_every_s,
            lease=lease,
        )
        context.log.info(
            "range %s of %s: batches %d..%d of %d", range_key, day, numbers.start, numbers.stop - 1, total_batches
        )
        # Several beats per lease period, so that one late beat (a loaded machine) never lets it expire.
        beat_s = min(LEASE_BEAT_S, config.lease_ttl_s / 3)
        keeper = LeaseKeeper(lease, every_s=beat_s, run_is_over=lambda: _run_ended(context.instance, context.run.run_id))
        with keeper:
            pending = len(sender.pending(batches))
            if pending:
                # The JVM, the keys and the client before the first ledger row or slot:
                # a configuration error costs nothing and names its fix.
                sdk.start(warm_up=pending >= WARM_UP_MIN_BATCHES)
            while_sending()
            report = sender.send(batches)

        metadata = {
            "first_batch_number": numbers.start,
            "last_batch_number": numbers.stop - 1,
            "batches": report.batches_total,
            "batches_skipped": report.batches_skipped,
            "batches_sent": report.batches_sent,
            "batches_failed": report.batches_failed,
            "batches_not_sent": report.batches_not_sent,
            "rows_sent": report.rows_sent,
            "attempts": report.attempts,
            "retries": report.retries,
            "attempts_throttled": report.throttled,
            "duration_s": round(report.seconds, 3),
        }
        if report.rows_sent:  # a rerun that only skips has no rate
            metadata["rows_per_s"] = round(report.rows_per_s, 1)
        metadata |= _day_outlook(ledger, contract, day, total_batches, delivery_db)
        if not report.batches_failed:
            yield dg.AssetMaterialization(asset_key=context.asset_key, partition=partition_key, metadata=metadata)
            return None
        # The counts of a range that failed stay in the event log, as an observation.
        yield dg.AssetObservation(asset_key=context.asset_key, partition=partition_key, metadata=metadata)
        codes = ", ".join(f"{code} x{n}" for code, n in sorted(report.failed_codes.items()))
        others = report.batches_total - report.batches_failed - report.batches_not_sent
        hint, stops_the_run = "", True
        if KEY_CODES & set(report.failed_codes):
            hint = (
                f" The partner refused the client's keys, so the other {report.batches_not_sent} batches were not "
                "sent: check that DATAHUB_KEYS_PATH is the keys.properties registered with the partner "
                "(its clientId, private key and grants)."
            )
        elif any(code.startswith("ENDPOINT_UNREACHABLE") for code in report.failed_codes):
            hint = f" The partner endpoint {sdk.endpoint} was unreachable: nothing of these batches arrived."
        else:
            stops_the_run = False
        description = (
            f"{report.batches_failed} of {report.batches_total} batches of range {range_key} ({day}) "
            f"did not succeed: {codes}."
            + (f" The other {others} are acknowledged." if others else "")
            + hint
        )
        return _RangeFailure(range_key, description, sorted(report.failed_batches), stops_the_run)

    return _uploaded


@dataclass(frozen=True)
class _Range:
    """One range's batches as read from the date's snapshot."""

    partition_key: str
    day: str
    range_key: str
    numbers: range
    total_batches: int
    batches: list[Batch]


class _RangeReader:
    """Reads a block run's next range from the snapshot in a thread while the current one
    is sent, so that going from one range to the next does not leave the cap idle for the
    read (seconds for a range of the 25M-row day)."""

    def __init__(self, read: Callable[[str], _Range]):
        self._read = read
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="next-range")
        self._started: dict[str, Future[_Range]] = {}

    def start(self, partition_key: str | None) -> None:
        if partition_key is not None and partition_key not in self._started:
            self._started[partition_key] = self._pool.submit(self._read, partition_key)

    def get(self, partition_key: str) -> _Range:
        started = self._started.pop(partition_key, None)
        return started.result() if started is not None else self._read(partition_key)

    def __enter__(self) -> "_RangeReader":
        return self

    def __exit__(self, *exc: object) -> None:
        # A run that stops early does not wait for a read nobody will use.
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _RangeFailure:
    range_key: str
    description: str
    batch_numbers: list[int]
    stops_the_run: bool  # keys refused or the endpoint unreachable: the run's next ranges would fail alike


def _day_outlook(ledger: Ledger, contract: Contract, day: str, total_batches: int, delivery_db: DeliveryDatabase) -> dict[str, float]:
    """The day's outlook from the whole ledger (every range, every machine) at the rate the
    at-risk sensor plans it at (`plan_rest_of_day`). The ETA only while batches remain, and the
    slack only for the delivery due today: a backfilled date's deadline passed long before
    it was sent."""
    remaining = total_batches - ledger.status_counts(contract.data_uuid, day).get(BatchStatus.SUCCESS, 0)
    outlook = {"day_batches_total": total_batches, "day_batches_remaining": remaining}
    if remaining:
        now, span = datetime.now(timezone.utc), ledger.acked_span(contract.data_uuid, day)
        day_plan = plan_rest_of_day(
            batches=remaining, now=now, deadline=deadline_for(day), cap=delivery_db.cap_per_second,
            limiter_rate=delivery_db.limiter_rate, acked_span=span,
            measured_rate=ledger.acked_rate(contract.data_uuid, day, now=now.timestamp(), acked_span=span),
        )
        outlook["day_eta_s"] = round(day_plan.duration_s, 1)
        if is_current_day(day):
            outlook["day_slack_s"] = round(day_plan.slack_s, 1)
    return outlook


def _dry_run(
    contract: Contract, partition_key: str, day: str, range_key: str, batches: list[Batch], total_batches: int, ledger: Ledger,
    cap: float, context: dg.AssetExecutionContext,
) -> dg.AssetObservation:
    """The range checked and counted, and the day's ETA at the cap; nothing sent or written."""
    problems: Counter[str] = Counter()
    for batch in batches:
        problems += batch_problems(contract, batch)
    acknowledged = len(batches) - len(pending_batches(ledger, contract.data_uuid, day, batches))
    remaining = total_batches - ledger.status_counts(contract.data_uuid, day).get(BatchStatus.SUCCESS, 0)
    newer = ledger.newer_delivered_day(contract.data_uuid, day)
    context.log.info(
        "dry run of range %s (%s): %d batches, %d rows, %d already acknowledged, %d problems%s; nothing sent",
        range_key, day, len(batches), sum(len(b.rows) for b in batches), acknowledged, sum(problems.values()),
        f"; a real run would be refused, {newer} is already delivered" if newer else "",
    )
    metadata = {
        "dry_run": True,
        "batches": len(batches),
        "rows": sum(len(b.rows) for b in batches),
        "batches_already_acknowledged": acknowledged,
        "batches_to_send": len(batches) - acknowledged,
        "problems": sum(problems.values()),
        "problems_by_kind": dg.MetadataValue.json(dict(sorted(problems.items()))),
        "day_batches_remaining": remaining,
    }
    if remaining:
        day_plan = plan(batches=remaining, cap=cap, start=datetime.now(timezone.utc), deadline=deadline_for(day), measured_rate=cap)
        metadata["day_eta_at_cap_s"] = round(day_plan.duration_s, 1)
    if newer:
        metadata["refused_as_older_than"] = newer
    return dg.AssetObservation(asset_key=context.asset_key, partition=partition_key, metadata=metadata)
