#!/usr/bin/env bash
# Make sure a MariaDB 10.11+ answers on 127.0.0.1:3306 and lets root in from loopback
# with an empty password, starting (or, on a bare Debian machine, installing) one if
# needed. The source tests and bench/mariadb_extract.py use it.
set -euo pipefail
HOST=127.0.0.1 PORT=${MARIADB_PORT:-3306}

alive() { mariadb-admin -h "$HOST" -P "$PORT" --connect-timeout=2 ping >/dev/null 2>&1; }
login() { mariadb -h "$HOST" -P "$PORT" -u root --connect-timeout=2 -e "select 1" >/dev/null 2>&1; }

if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then
  echo "mariadb: installing from Debian packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
fi
if ! alive; then
  install -d -o mysql -g mysql /run/mysqld
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  for _ in $(seq 30); do alive && break; sleep 1; done
fi
alive || { echo "mariadb: not answering on $HOST:$PORT" >&2; exit 1; }
if ! login; then
  # A fresh Debian install lets root in only through the socket (unix_socket auth):
  # add the empty password for loopback, as the tests expect.
  mariadb -u root -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
    CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;" \
    || { echo "mariadb: cannot log in as root on $HOST:$PORT, nor through the socket" >&2; exit 1; }
fi
login || { echo "mariadb: cannot log in as root (empty password) on $HOST:$PORT" >&2; exit 1; }
mariadb -h "$HOST" -P "$PORT" -u root -e "CREATE DATABASE IF NOT EXISTS test" >/dev/null
echo "mariadb: ready on $HOST:$PORT"
