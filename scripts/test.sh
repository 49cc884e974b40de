#!/usr/bin/env bash
# Set everything up on a fresh machine and run every test. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/ensure_postgres.sh
scripts/ensure_mariadb.sh
scripts/ensure_chromium.sh
mkdir -p test-artifacts
exec .venv/bin/python -m pytest "$@"
