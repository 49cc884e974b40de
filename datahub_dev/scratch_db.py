"""Scratch PostgreSQL databases on the local server (127.0.0.1:5432, user postgres, trust
auth; scripts/ensure_postgres.sh starts one): a fresh database per test or benchmark run,
dropped afterwards."""

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
