#!/usr/bin/env bash
# Debian's Chromium for the browser test (tests/test_ui_browser.py). Playwright drives
# this binary; it never downloads a browser of its own (that download fails here).
# Idempotent: with Chromium present it only prints the version.
set -euo pipefail
CHROMIUM=/usr/bin/chromium

install_chromium() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
}

if [ ! -x "$CHROMIUM" ]; then
  command -v apt-get >/dev/null || { echo "chromium: $CHROMIUM missing and no apt-get to install it" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "chromium: $CHROMIUM missing; run this script as root to install it" >&2; exit 1; }
  echo "chromium: installing from Debian packages"
  # apt-get update only when needed: the package lists are missing (a fresh image) or
  # stale enough that the install fails (a security update replaced the listed version).
  if ! apt-cache show chromium >/dev/null 2>&1 || ! install_chromium; then
    apt-get update -qq
    install_chromium
  fi
fi
[ -x "$CHROMIUM" ] || { echo "chromium: $CHROMIUM still missing after install" >&2; exit 1; }
echo "chromium: $("$CHROMIUM" --version 2>/dev/null | head -1)"
