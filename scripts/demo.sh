#!/usr/bin/env bash
# Fresh machine to delivered days: set up, start the local endpoint, create the keys,
# generate a source for every contract and deliver it (or, with --ui, open the Dagster UI
# on it). `scripts/demo.sh --help` lists the flags.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
# The set-up's own output (pip, the Java build) goes to its log; one line here.
echo "setup: virtualenv, pinned dependencies, stand-in SDK jar (log: var/setup.log)"
if ! scripts/setup.sh >var/setup.log 2>&1; then
  tail -n 15 var/setup.log >&2
  echo "setup failed: the whole log is var/setup.log" >&2
  exit 1
fi
exec .venv/bin/python -m datahub_dev.demo "$@"
