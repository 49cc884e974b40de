"""Materialize one uploaded partition in this process (a separate OS process per call).

    python tests/upload_worker.py CONTRACTS_DIR DATASET "RANGE|DATE"

Resources come from the DATAHUB_* environment, as in production.
"""

import sys
from pathlib import Path

import dagster as dg

from datahub_assets.definitions import build_dataset_assets, build_resources

contracts_dir, dataset, partition_key = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(uploaded,) = [
    a
    for a in build_dataset_assets(contracts_dir)
    if a.key.to_user_string() == f"{dataset}_uploaded"
]
result = dg.materialize(
    [uploaded],
    partition_key=partition_key,
    resources=build_resources(),
    instance=dg.DagsterInstance.ephemeral(),
    raise_on_error=False,
)
sys.exit(0 if result.success else 1)
