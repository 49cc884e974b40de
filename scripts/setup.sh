#!/usr/bin/env bash
# Set up a fresh checkout: virtualenv, hash-pinned dependencies (constraints.txt), the
# stand-in SDK jar.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in python3 javac jar; do
  command -v "$tool" >/dev/null || { echo "setup: $tool not found (need Python 3.11+ and JDK 17+)" >&2; exit 1; }
done
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python 3.11+ required" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # Every dependency from constraints.txt, each checked against its recorded hashes;
  # then this project itself (editable, so no hash), which adds nothing (--no-deps).
  .venv/bin/pip install --quiet --require-hashes -r constraints.txt
  .venv/bin/pip install --quiet --no-deps -e '.[emulator,mysql,test]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
scripts/build_sdk.sh
