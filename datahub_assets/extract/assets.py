"""<dataset>_extract: the day's raw source rows, as text, in Parquet."""

import tempfile
from pathlib import Path

import dagster as dg

from datahub_assets.contract import Contract
from datahub_assets.extract.sources import LandingFiles, SourceDatabase, landing_file_to_parquet
from datahub_assets.lake import DataLake
from datahub_assets.partitions import daily_partitions_def


def build_extract_asset(contract: Contract) -> dg.AssetsDefinition:
    source = contract.source
    where = f"table `{source.table}`" if source.kind == "table" else f"landing files `{source.pattern}`"

    @dg.asset(
        name=f"{contract.dataset}_extract",
        group_name=contract.dataset,
        partitions_def=daily_partitions_def(contract),
        kinds={"sql" if source.kind == "table" else "sftp", "parquet"},
        description=f"The day's raw rows of {contract.dataset} from {where}, every value kept as text.",
    )
    def _extract(
        context: dg.AssetExecutionContext, lake: DataLake, source_db: SourceDatabase, landing: LandingFiles
    ) -> dg.MaterializeResult:
        day = context.partition_key
        out_dir = lake.extract_dir(contract.dataset, day)
        if source.kind == "table":
            rows = source_db.extract_day(table=source.table, date_column=source.date_column, day=day, out_dir=out_dir)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                local = landing.fetch(relative_path=source.pattern.format(date=day), dest_dir=Path(tmp))
                rows = landing_file_to_parquet(local, out_dir)
        context.log.info("extracted %d rows for %s", rows, day)
        return dg.MaterializeResult(metadata={"rows": rows})

    return _extract
