"""Scratch databases on the local servers: PostgreSQL (127.0.0.1:5432, user postgres,
trust auth; scripts/ensure_postgres.sh starts one) and MariaDB (127.0.0.1:3306, user
root, empty password; scripts/ensure_mariadb.sh starts one). A fresh database per test or
benchmark run, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import sqlalchemy as sa

PG_SERVER_URL = "postgresql://postgres@127.0.0.1:5432"


def pg_url(database: str) -> str:
    return f"{PG_SERVER_URL}/{database}"


def pg_admin_execute(sql: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE) on the server."""
    from datahub_assets.sql import create_engine

    admin = create_engine(pg_url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(sql))
    finally:
        admin.dispose()


@contextlib.contextmanager
def scratch_database(prefix: str = "datahub_scratch") -> Iterator[str]:
    """A fresh, empty database, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    pg_admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(name)
    finally:
        pg_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


MARIADB_SERVER_URL = "mysql+pymysql://root@127.0.0.1:3306"


def mariadb_url(database: str) -> str:
    return f"{MARIADB_SERVER_URL}/{database}?charset=utf8mb4"


def mariadb_admin_execute(sql: str, params: dict | None = None) -> None:
    """One statement (CREATE/DROP DATABASE or USER, GRANT) on the MariaDB server."""
    admin = sa.create_engine(MARIADB_SERVER_URL + "/?charset=utf8mb4", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(sql), params or {})
    finally:
        admin.dispose()


@contextlib.contextmanager
def scratch_mariadb_database(prefix: str = "datahub_scratch") -> Iterator[str]:
    """A fresh, empty MariaDB database (utf8mb4), dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    mariadb_admin_execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield mariadb_url(name)
    finally:
        mariadb_admin_execute(f"DROP DATABASE IF EXISTS `{name}`")
