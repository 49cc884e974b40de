"""<dataset>_delivered: a business date's proof of delivery, built once every batch range
of the date is uploaded.

Per date it records what the partner acknowledged, read from the ledger: the batches
and rows expected, the batches by ledger status, when sending began and ended, and the
slack left at completion; and it writes the proof file to the lake, one line per batch
with its traceId and content hash. TraceIds go into that file only, never into Dagster's
metadata or logs; no row value or id goes anywhere.

Its metadata is the date's verdict, plotted by the UI over dates (not over 32 ranges a
day): `delivered_by_deadline`, `slack_at_completion_s`, `batches_refused_F`. The watching
checks (failed, late, at risk, stalled) are declared on this asset and reported by the
watch sensors (monitoring/sensors.py says why not per date); a proof run evaluates them
too, so their results are current as soon as a proof lands.

Who builds it: declarative automation, not a sensor of ours. PROOF_CONDITION requests a
date once all its ranges are materialized and none is in progress, after any of them
was updated, whatever delivered them: the fan-out, a UI backfill, a range rerun. Dagster
already knows which runs and backfills are in progress, so a date that a backfill (or a
run) is about to prove is not proved twice, and a date gets a new proof each time one of
its ranges is materialized again. `datahub-deliver` proves its date itself, right after
the last range: a tick falling in between proves it twice, which changes nothing. (The
upload fan-out stays a sensor for the opposite reason: there, reacting to every snapshot
update is unwanted.)
"""

import csv
import hashlib
import os
import warnings
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from datahub_assets.catalog import contract_metadata
from datahub_assets.contract import Contract
from datahub_assets.lake import DataLake
from datahub_assets.partitions import (
    DATE_DIM,
    PARTNER_TZ,
    Stage,
    asset_name,
    batch_count,
    batch_slice,
    daily_partitions_def,
    deadline_for,
    range_keys,
)
from datahub_assets.upload.batches import snapshot_row_count
from datahub_assets.upload.ledger import Ledger
from datahub_assets.upload.outcome import BatchStatus
from datahub_assets.upload.resources import DeliveryDatabase

# After any range of a date is updated: once none is missing or in progress, and no run or
# backfill is already building the date's proof.
PROOF_CONDITION = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("every range of the date uploaded")
PROOF_SENSOR = "proof_of_delivery_sensor"
PROOF_COLUMNS = ("batch_number", "trace_id", "content_hash", "acknowledged_at_utc")


@dataclass(frozen=True)
class Proof:
    """A date's delivery as the ledger holds it, over the batches its snapshot expects."""

    rows_expected: int
    batches_expected: int
    by_status: Counter[BatchStatus]
    send_attempts: int
    first_sent_at: float | None  # epoch seconds; None when nothing was sent
    last_sent_at: float | None
    completed_at: float | None  # the last acknowledgement
    missing_ranges: tuple[str, ...]  # ranges holding a batch not acknowledged

    @property
    def complete(self) -> bool:
        return self.by_status[BatchStatus.SUCCESS] == self.batches_expected


def write_proof(ledger: Ledger, contract: Contract, day: str, rows_expected: int, path: Path) -> Proof:
    """The ledger's rows of the date's batches, written to `path` as CSV if every batch is
    acknowledged (the file is replaced whole, never left half written)."""
    total = batch_count(rows_expected)
    keys = range_keys(contract.batch_ranges)
    starts = [batch_slice(i, len(keys), total).start for i in range(len(keys))]
    by_status: Counter[BatchStatus] = Counter()
    acked: set[int] = set()
    attempts = 0
    first = last = completed = None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(PROOF_COLUMNS)
        for record in ledger.day_records(contract.data_uuid, day, range(total)):
            by_status[record.status] += 1
            attempts += record.attempts
            first = _min(first, record.first_sent_at)
            last = _max(last, record.last_sent_at)
            if record.status is BatchStatus.SUCCESS:
                acked.add(record.batch_no)
                completed = _max(completed, record.acked_at)
                when = datetime.fromtimestamp(record.acked_at, timezone.utc).isoformat() if record.acked_at else ""
                writer.writerow((record.batch_no, record.trace_id or "", record.content_hash, when))
    missing = {keys[bisect_right(starts, n) - 1] for n in range(total) if n not in acked}
    proof = Proof(
        rows_expected, total, by_status, attempts, first, last, completed, tuple(k for k in keys if k in missing)
    )
    if proof.complete:
        os.replace(partial, path)
    else:
        partial.unlink()
    return proof


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _partner_time(epoch_s: float) -> str:
    return f"{datetime.fromtimestamp(epoch_s, PARTNER_TZ):%Y-%m-%d %H:%M} GMT+8"


def proof_metadata(proof: Proof, day: str, path: Path, rows_quarantined: int | None) -> dict:
    """Every key names its unit; a figure that does not apply (no batch sent, no
    quarantine file) is left out rather than written as 0. A date with no batch to send
    was delivered by its deadline."""
    metadata = {
        "rows_expected": proof.rows_expected,
        "batches_expected": proof.batches_expected,
        "batches_acknowledged_S": proof.by_status[BatchStatus.SUCCESS],
        "batches_unknown_U": proof.by_status[BatchStatus.UNKNOWN],
        "batches_refused_F": proof.by_status[BatchStatus.FAILED],
    }
    if rows_quarantined is not None:
        metadata["rows_quarantined"] = rows_quarantined
    deadline = deadline_for(day).timestamp()
    metadata["delivered_by_deadline"] = proof.completed_at is None or proof.completed_at <= deadline
    if proof.completed_at is not None:
        metadata |= {
            "send_attempts": proof.send_attempts,
            "first_send_at": dg.MetadataValue.timestamp(proof.first_sent_at),
            "last_send_at": dg.MetadataValue.timestamp(proof.last_sent_at),
            "completed_at": dg.MetadataValue.timestamp(proof.completed_at),
            "deadline_at": dg.MetadataValue.timestamp(deadline),
            "send_duration_s": round(proof.completed_at - proof.first_sent_at, 1),
            "slack_at_completion_s": round(deadline - proof.completed_at, 1),
        }
    metadata |= {
        "proof_path": dg.MetadataValue.path(str(path)),
        "proof_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    return metadata


def build_delivered_asset(contract: Contract, uploaded: dg.AssetsDefinition) -> dg.AssetsDefinition:
    partitions_def = daily_partitions_def(contract)
    with warnings.catch_warnings():
        # Beta in Dagster 1.13, and the one mapping that says "a date's proof reads every
        # range of that date": silenced here, where it is built, once.
        warnings.simplefilter("ignore", dg.BetaWarning)
        by_date = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=DATE_DIM)

    @dg.asset(
        name=asset_name(contract, Stage.DELIVERED),
        group_name=contract.dataset,
        partitions_def=partitions_def,
        deps=[dg.AssetDep(uploaded, partition_mapping=by_date)],
        automation_condition=PROOF_CONDITION,
        kinds={"csv"},
        owners=list(contract.owners),
        metadata=contract_metadata(contract),
        description=(
            f"Proof that {contract.dataset} was delivered for the date: once every batch range is uploaded, "
            "the ledger's counts and times, and a file in the lake listing every batch with its traceId and "
            "content hash. The deadline checks are reported here by the watch sensors."
        ),
    )
    def _delivered(context: dg.AssetExecutionContext, lake: DataLake, delivery_db: DeliveryDatabase) -> dg.MaterializeResult:
        day = context.partition_key
        snapshot_path = lake.snapshot_path(contract.dataset, day)
        if not snapshot_path.exists():
            raise dg.Failure(f"no snapshot of {contract.dataset} for {day}: nothing was delivered to prove")
        path = lake.proof_path(contract.dataset, day)
        proof = write_proof(delivery_db.ledger(), contract, day, snapshot_row_count(snapshot_path), path)
        if not proof.complete:
            raise dg.Failure(
                f"{contract.dataset} {day} is not delivered: {proof.by_status[BatchStatus.SUCCESS]} of "
                f"{proof.batches_expected} batches acknowledged. Upload ranges {', '.join(proof.missing_ranges)} "
                "again (a rerun sends only what is not acknowledged), then build this proof."
            )
        quarantine = lake.quarantine_path(contract.dataset, day)
        rows_quarantined = snapshot_row_count(quarantine) if quarantine.exists() else None
        context.log.info(
            "%s %s delivered: %d batches, %d rows%s; proof written", contract.dataset, day, proof.batches_expected,
            proof.rows_expected, f", the last acknowledged at {_partner_time(proof.completed_at)}" if proof.completed_at else "",
        )
        return dg.MaterializeResult(metadata=proof_metadata(proof, day, path, rows_quarantined))

    return _delivered


def build_proof_sensor(delivered: list[dg.AssetKey]) -> dg.AutomationConditionSensorDefinition:
    """Evaluates PROOF_CONDITION: one run per date to prove, never a backfill."""
    return dg.AutomationConditionSensorDefinition(
        PROOF_SENSOR,
        target=dg.AssetSelection.assets(*delivered),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        emit_backfills=False,
        description="Builds a date's proof of delivery once every batch range of the date is uploaded.",
    )
