#!/usr/bin/env bash
# Fresh machine to a delivered day: set up, start the local endpoint, create the keys,
# generate a demo source and deliver it (or, with --ui, open the Dagster UI on it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m datahub_dev.demo "$@"
