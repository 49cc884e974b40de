#!/usr/bin/env bash
# Check the pinned dependency tree (constraints.txt) against the known-vulnerability
# databases with pip-audit. Needs the network (PyPI and the advisory service); run it
# before changing constraints.txt, before a release, and weekly (docs/security.md).
# pip-audit lives in its own throwaway venv: it is not a dependency of the project.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${AUDIT_VENV:-"$(mktemp -d)/audit-venv"}
if [ ! -x "$tools/bin/pip-audit" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet pip-audit
fi
# --disable-pip with hashes: audit exactly the pinned versions, without resolving again;
# --require-hashes: the same hashes the install checks.
"$tools/bin/pip-audit" --requirement constraints.txt --require-hashes --disable-pip --strict "$@"
