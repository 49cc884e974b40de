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


def _admin_execute(server_url: str, sql: str, params: dict | None = None) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE, users, grants)."""
    from datahub_assets.sql import create_engine

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(sql), params or {})
    finally:
        admin.dispose()


@contextlib.contextmanager
def _scratch(prefix: str, create: str, drop: str, execute, url_of) -> Iterator[str]:  # noqa: ANN001
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    execute(create.format(name=name))
    try:
        yield url_of(name)
    finally:
        execute(drop.format(name=name))


def pg_admin_execute(sql: str) -> None:
    _admin_execute(pg_url("postgres"), sql)


def scratch_database(prefix: str = "datahub_scratch") -> contextlib.AbstractContextManager[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards; yields its URL."""
    return _scratch(prefix, 'CREATE DATABASE "{name}"', 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', pg_admin_execute, pg_url)


MARIADB_SERVER_URL = "mysql+pymysql://root@127.0.0.1:3306"


def mariadb_url(database: str) -> str:
    return f"{MARIADB_SERVER_URL}/{database}?charset=utf8mb4"


def mariadb_admin_execute(sql: str, params: dict | None = None) -> None:
    _admin_execute(MARIADB_SERVER_URL + "/?charset=utf8mb4", sql, params)


def scratch_mariadb_database(prefix: str = "datahub_scratch") -> contextlib.AbstractContextManager[str]:
    """A fresh, empty MariaDB database (utf8mb4), dropped afterwards; yields its URL."""
    return _scratch(
        prefix,
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "DROP DATABASE IF EXISTS `{name}`",
        mariadb_admin_execute,
        mariadb_url,
    )
