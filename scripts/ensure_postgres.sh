#!/usr/bin/env bash
# Make sure a PostgreSQL 15+ answers on 127.0.0.1:5432 (user postgres, trust auth on
# loopback), starting (or, on a bare Debian machine, installing) one if needed.
set -euo pipefail
HOST=127.0.0.1 PORT=${PGPORT:-5432}

ready() { pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null; }

if ! command -v pg_isready >/dev/null; then
  echo "postgres: installing from Debian packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! ready; then
  for version in $(ls /etc/postgresql 2>/dev/null); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  for _ in $(seq 30); do ready && break; sleep 1; done
fi
ready || { echo "postgres: not answering on $HOST:$PORT" >&2; exit 1; }
psql -h "$HOST" -p "$PORT" -U postgres -tAc "select 1" >/dev/null \
  || { echo "postgres: cannot log in as postgres on $HOST:$PORT (trust auth expected)" >&2; exit 1; }
echo "postgres: ready on $HOST:$PORT"
