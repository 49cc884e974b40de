"""SQLAlchemy URLs as the operator writes them."""

from __future__ import annotations

import sqlalchemy as sa


def engine_url(url: str) -> str:
    """The URL with an installed driver: SQLAlchemy 2.1 maps a bare `postgresql://` to
    psycopg 3, which is not installed; this project ships psycopg2."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def create_engine(url: str, **kwargs) -> sa.Engine:  # noqa: ANN003
    return sa.create_engine(engine_url(url), **kwargs)
