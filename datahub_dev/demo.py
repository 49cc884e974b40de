"""The README's main command, after setup: start the local endpoint, create the keys,
generate a demo source for yesterday (GMT+8), then either deliver that day end to end
and print a summary (default) or start the Dagster UI with everything wired (--ui).

All state lives under var/ (delete it to start over).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ui", action="store_true", help="start the Dagster UI instead of delivering a day")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--bad-share", type=float, default=0.02)
    parser.add_argument("--var", type=Path, default=REPO_ROOT / "var")
    parser.add_argument("--endpoint-port", type=int, default=8765)
    parser.add_argument("--ui-port", type=int, default=3000)
    args = parser.parse_args()

    from datahub_assets.partitions import business_date
    from datahub_dev.stack import start_local_stack
    from datahub_dev.synthetic import generate, write_table

    # SIGTERM ends the demo like Ctrl-C does, so the endpoint is stopped with it.
    signal.signal(signal.SIGTERM, _interrupt)
    stack = start_local_stack(args.var, port=args.endpoint_port)
    os.environ.update(stack.env)
    day = business_date()
    write_table(generate(args.rows, day, args.bad_share), stack.env["DATAHUB_SOURCE_DB_URL"])
    print(f"endpoint {stack.endpoint.url}; keys {stack.env['DATAHUB_KEYS_PATH']} (mode 600)")
    print(f"source: {args.rows} rows for {day}, {args.bad_share:.0%} of them broken")
    try:
        if args.ui:
            print(f"UI on http://127.0.0.1:{args.ui_port}  (Ctrl-C stops it and the endpoint)")
            subprocess.run(
                [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(args.ui_port)],
                cwd=REPO_ROOT,
                check=False,
            )
        else:
            deliver_day(day, stack)
    except KeyboardInterrupt:
        pass
    finally:
        stack.endpoint.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def deliver_day(day: str, stack) -> None:  # noqa: ANN001
    import dagster as dg

    from datahub_assets.contract import load_contracts
    from datahub_assets.definitions import build_dataset_assets
    from datahub_assets.partitions import Stage, asset_name, range_keys, upload_partition_key
    from datahub_assets.resources import build_resources

    started = time.monotonic()
    resources = build_resources()
    assets = {a.key.to_user_string(): a for a in build_dataset_assets(stack.contracts_dir)}
    with dg.DagsterInstance.get() as instance:
        for contract in load_contracts(stack.contracts_dir):
            name = contract.dataset
            snapshot, uploaded = asset_name(contract, Stage.SNAPSHOT), asset_name(contract, Stage.UPLOADED)
            prepared = dg.materialize(
                [assets[asset_name(contract, Stage.EXTRACT)], assets[snapshot]],
                partition_key=day, resources=resources, instance=instance, raise_on_error=False,
            )
            snap = {k: v.value for k, v in prepared.asset_materializations_for_node(snapshot)[0].metadata.items()} if prepared.success else {}
            if not prepared.success:
                sys.exit(f"{name}: extract/snapshot failed; open the UI (scripts/demo.sh --ui) to see why")
            sent = failed = 0
            for key in range_keys(contract.batch_ranges):
                result = dg.materialize(
                    [assets[uploaded]],
                    partition_key=upload_partition_key(day, key),
                    resources=resources, instance=instance, raise_on_error=False,
                )
                mats = result.asset_materializations_for_node(uploaded)
                if mats:
                    sent += mats[0].metadata["batches_sent"].value
                else:
                    failed += 1
            stats = stack.endpoint.stats()
            print(
                f"\n{name} {day}: {snap['source_rows']} source rows -> {snap['rows']} in the snapshot, "
                f"{snap['rejected_rows']} quarantined, {snap['duplicate_rows']} duplicates\n"
                f"  uploaded: {sent} batches sent in {contract.batch_ranges} ranges, {failed} ranges failed\n"
                f"  endpoint: {stats['rows_stored'].get(contract.data_uuid, 0)} rows stored, "
                f"max {stats['max_admitted_per_sliding_second']} requests in any second (cap {stats['cap']})"
            )
    print(f"\ndone in {time.monotonic() - started:.0f} s; see it in the UI: scripts/demo.sh --ui")


if __name__ == "__main__":
    main()
