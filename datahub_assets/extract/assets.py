"""<dataset>_extract: the day's raw source rows, as text, in Parquet."""

import tempfile
from pathlib import Path

import dagster as dg

from datahub_assets.catalog import contract_metadata
from datahub_assets.contract import Contract
from datahub_assets.extract.sources import LandingFiles, SourceDatabase, landing_file_to_parquet
from datahub_assets.lake import DataLake
from datahub_assets.partitions import Stage, asset_name, daily_partitions_def


def build_extract_asset(contract: Contract) -> dg.AssetsDefinition:
    source = contract.source

    common = dict(
        name=asset_name(contract, Stage.EXTRACT),
        group_name=contract.dataset,
        partitions_def=daily_partitions_def(contract),
        owners=list(contract.owners),
        metadata=contract_metadata(contract),
    )

    # Data minimization: only the columns the contract reads (and the date) leave the source.
    wanted = list(dict.fromkeys([*([source.date_column] if source.date_column else []), *contract.source_columns]))

    if source.kind == "table":

        @dg.asset(
            **common,
            kinds={"sql", "parquet"},
            description=f"The day's raw rows of {contract.dataset} from table `{source.table}`, every value as text.",
        )
        def _extract_table(
            context: dg.AssetExecutionContext, lake: DataLake, source_db: SourceDatabase
        ) -> dg.MaterializeResult:
            day = context.partition_key
            rows = source_db.extract_day(
                table=source.table, date_column=source.date_column, day=day,
                out_dir=lake.extract_dir(contract.dataset, day), columns=wanted,
            )
            context.log.info("extracted %d rows for %s", rows, day)
            return dg.MaterializeResult(metadata={"dagster/row_count": rows})

        return _extract_table

    @dg.asset(
        **common,
        kinds={"sftp", "parquet"},
        description=f"The day's raw rows of {contract.dataset} from landing files `{source.pattern}`, every value as text.",
    )
    def _extract_files(context: dg.AssetExecutionContext, lake: DataLake, landing: LandingFiles) -> dg.MaterializeResult:
        day = context.partition_key
        with tempfile.TemporaryDirectory() as tmp:
            local = landing.fetch(relative_path=source.pattern.format(date=day), dest_dir=Path(tmp))
            rows = landing_file_to_parquet(
                local, lake.extract_dir(contract.dataset, day), columns=wanted, max_field_bytes=landing.max_field_bytes
            )
        context.log.info("extracted %d rows for %s", rows, day)
        return dg.MaterializeResult(metadata={"dagster/row_count": rows})

    return _extract_files
