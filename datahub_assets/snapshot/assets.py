"""<dataset>_snapshot: the day conformed to the contract, with its checks."""

import dagster as dg
import polars as pl

from datahub_assets.catalog import contract_metadata, partner_table_schema
from datahub_assets.contract import Contract, PartnerType
from datahub_assets.lake import DataLake
from datahub_assets.partitions import Stage, asset_name, batch_count, daily_partitions_def, previous_date
from datahub_assets.snapshot.conform import conform

SCHEMA_CHECK = "schema_conforms"
REJECT_SHARE_CHECK = "reject_share_under_threshold"
ROW_COUNT_CHANGE_CHECK = "row_count_change"


def schema_violations(contract: Contract, snapshot: pl.LazyFrame) -> dict[str, int]:
    """Counts of what would break the partner's schema; all zero for a good snapshot."""
    names = [c.name for c in contract.columns]
    schema = snapshot.collect_schema()
    if schema.names() != names or any(t != pl.String for t in schema.dtypes()):
        return {"wrong_columns": 1}
    exprs = [
        pl.col("id").is_null().sum().alias("missing_id"),
        (pl.len() - pl.col("id").n_unique()).alias("duplicate_id"),
        (pl.col("id") < pl.col("id").shift(1)).sum().alias("unsorted_id"),
    ]
    for c in contract.columns:
        if c.type is PartnerType.BIGINT:
            exprs.append((~pl.col(c.name).str.contains(r"^-?(0|[1-9][0-9]*)$")).sum().alias(f"bad_{c.name}"))
        elif c.type is PartnerType.DOUBLE:
            parsed = pl.col(c.name).cast(pl.Float64, strict=False)
            bad = parsed.is_null() & pl.col(c.name).is_not_null() | parsed.is_nan() | parsed.is_infinite()
            exprs.append(bad.sum().alias(f"bad_{c.name}"))
    return {k: int(v) for k, v in snapshot.select(exprs).collect().row(0, named=True).items()}


def build_snapshot_asset(contract: Contract, extract: dg.AssetsDefinition) -> dg.AssetsDefinition:
    name = asset_name(contract, Stage.SNAPSHOT)

    @dg.asset(
        name=name,
        group_name=contract.dataset,
        partitions_def=daily_partitions_def(contract),
        deps=[extract],
        kinds={"polars", "parquet"},
        owners=list(contract.owners),
        metadata={**contract_metadata(contract), **partner_table_schema(contract)},
        description=(
            f"{contract.dataset} for the day, conformed to its contract ({contract.path.name}): "
            "canonical text per type, rejects quarantined with their reason, ids de-duplicated "
            "and sorted, so batch i is rows [100i, 100i+100)."
        ),
        check_specs=[
            dg.AssetCheckSpec(SCHEMA_CHECK, asset=name, description="Columns, types and canonical values match the contract."),
            dg.AssetCheckSpec(
                REJECT_SHARE_CHECK,
                asset=name,
                blocking=True,
                description=f"Rejected rows are at most {contract.max_reject_share:.1%} of the source.",
            ),
            dg.AssetCheckSpec(
                ROW_COUNT_CHANGE_CHECK,
                asset=name,
                description=f"Rows changed by at most {contract.max_row_count_change:.0%} since the previous day.",
            ),
        ],
    )
    def _snapshot(context: dg.AssetExecutionContext, lake: DataLake):
        day = context.partition_key
        extract_dir = lake.extract_dir(contract.dataset, day)
        snapshot_path = lake.snapshot_path(contract.dataset, day)
        extract = pl.scan_parquet(extract_dir / "*.parquet")
        stats = conform(contract, extract, snapshot_path, lake.quarantine_path(contract.dataset, day))
        context.log.info(
            "%d source rows: %d in the snapshot, %d rejected, %d duplicates",
            stats.source_rows, stats.snapshot_rows, stats.rejected_rows, stats.duplicate_rows,
        )
        yield dg.MaterializeResult(
            metadata={
                "source_rows": stats.source_rows,
                "dagster/row_count": stats.snapshot_rows,
                "rejected_rows": stats.rejected_rows,
                "duplicate_rows": stats.duplicate_rows,
                "reject_share": stats.reject_share,
                "batches": batch_count(stats.snapshot_rows),
                "snapshot_path": dg.MetadataValue.path(str(snapshot_path)),
                "quarantine_path": dg.MetadataValue.path(str(lake.quarantine_path(contract.dataset, day))),
            }
        )

        violations = schema_violations(contract, pl.scan_parquet(snapshot_path))
        yield dg.AssetCheckResult(
            check_name=SCHEMA_CHECK, passed=not any(violations.values()), metadata=violations
        )
        yield dg.AssetCheckResult(
            check_name=REJECT_SHARE_CHECK,
            passed=stats.reject_share <= contract.max_reject_share,
            metadata={"reject_share": stats.reject_share, "threshold": contract.max_reject_share},
        )
        previous = lake.snapshot_path(contract.dataset, previous_date(day))
        if previous.exists():
            before = pl.scan_parquet(previous).select(pl.len()).collect().item()
            change = abs(stats.snapshot_rows - before) / before if before else float(stats.snapshot_rows > 0)
            yield dg.AssetCheckResult(
                check_name=ROW_COUNT_CHANGE_CHECK,
                passed=change <= contract.max_row_count_change,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"previous_rows": before, "rows": stats.snapshot_rows, "change_share": change},
            )
        else:
            yield dg.AssetCheckResult(
                check_name=ROW_COUNT_CHANGE_CHECK,
                passed=True,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"rows": stats.snapshot_rows},
                description="No previous day to compare with.",
            )
        # Retention: the dates this one puts past the contract's window leave the lake.
        removed = lake.delete_older_than(contract.dataset, day, contract.retention_days)
        if removed:
            context.log.info(
                "retention (%d days): removed %d extract, snapshot and quarantine entries of older dates",
                contract.retention_days, len(removed),
            )

    return _snapshot
