"""Fixtures for the platform tests: real PostgreSQL databases and delivery engines."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from datahub_assets.upload.delivery_db import create_delivery_engine

PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """The name of a fresh, empty database on the local PostgreSQL, dropped afterwards."""
    name = f"datahub_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A SQLAlchemy URL of a fresh, empty PostgreSQL database."""
    return f"postgresql://postgres@127.0.0.1:5432/{pg_database}"


@pytest.fixture(params=["sqlite", "postgresql"])
def delivery_url(request: pytest.FixtureRequest, tmp_path) -> str:  # noqa: ANN001
    """Both ledger backends, through the same code."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'delivery.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def delivery_engine(delivery_url: str) -> Iterator[sa.Engine]:
    engine = create_delivery_engine(delivery_url)
    yield engine
    engine.dispose()
