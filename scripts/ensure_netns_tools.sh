#!/usr/bin/env bash
# Make sure the tools of bench/rehearsal.py's simulated machines are here: `ip` (network
# namespaces, veth pairs) and `socat` (the relay to PostgreSQL), installing them from
# Debian packages on a bare machine. Creating namespaces also needs root.
set -euo pipefail
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v socat >/dev/null || missing+=(socat)
if [ ${#missing[@]} -gt 0 ]; then
  echo "netns tools: installing ${missing[*]} from Debian packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ "$(id -u)" -eq 0 ] || { echo "netns tools: simulated machines need root" >&2; exit 1; }
