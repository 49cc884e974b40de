"""Run part of a day in this OS process, as a run worker would (the tests' one worker).

    python tests/worker.py CONTRACTS_DIR DATE [--prepare] [--ranges all|K,K] [--block K-L] [--config JSON]

--prepare materializes the extract and the snapshot of DATE; --ranges then uploads the
given batch ranges one run each, and --block ranges K..L in one run (as the daily
fan-out starts them). Resources come from the DATAHUB_* environment
(datahub_assets/resources.py), as in production; the instance from DAGSTER_HOME, or an
ephemeral one when it is unset. Exits 1 if any run failed. Prints nothing itself: the
tests read its stdout and stderr for leaked values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import dagster as dg

from datahub_assets.contract import load_contracts
from datahub_assets.definitions import build_dataset_assets
from datahub_assets.resources import build_resources
from datahub_assets.partitions import block_partition_tags, range_keys, upload_partition_key


def _resources_for(assets: list[dg.AssetsDefinition]) -> dict:
    needed = set().union(*(a.required_resource_keys for a in assets))
    return {k: v for k, v in build_resources().items() if k in needed}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("contracts_dir", type=Path)
    parser.add_argument("date")
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--ranges", default="")
    parser.add_argument("--block", default="", help="FIRST-LAST: one run over these ranges")
    parser.add_argument("--config", default="{}", help="UploadConfig values, JSON")
    args = parser.parse_args()

    (contract,) = load_contracts(args.contracts_dir)
    extract, snapshot, uploaded, _ = (
        a
        for a in build_dataset_assets(args.contracts_dir)
        if a.key.to_user_string().startswith(contract.dataset)
    )
    ok = True
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    with instance:
        if args.prepare:
            result = dg.materialize(
                [extract, snapshot],
                partition_key=args.date,
                resources=_resources_for([extract, snapshot]),
                instance=instance,
                raise_on_error=False,
            )
            ok = ok and result.success
        keys = range_keys(contract.batch_ranges) if args.ranges == "all" else [k for k in args.ranges.split(",") if k]
        targets = [{"partition_key": upload_partition_key(args.date, key)} for key in keys]
        if args.block:
            first, last = args.block.split("-")
            targets.append({"tags": block_partition_tags(args.date, first, last)})
        for target in targets:
            result = dg.materialize(
                [uploaded],
                resources=_resources_for([uploaded]),
                instance=instance,
                raise_on_error=False,
                run_config={"ops": {uploaded.op.name: {"config": json.loads(args.config)}}},
                **target,
            )
            ok = ok and result.success
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
