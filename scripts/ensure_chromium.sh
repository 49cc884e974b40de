#!/usr/bin/env bash
# Debian's Chromium for the browser test (Playwright drives it; it never downloads one).
set -euo pipefail
if ! command -v chromium >/dev/null; then
  echo "chromium: installing from Debian packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
echo "chromium: $(chromium --version 2>/dev/null | head -1)"
