"""The delivery database's shared pieces: one schema for the ledger and the limiter, and
the two things that differ by dialect (the upsert construct and the database's clock).

It is SQLite on one machine and PostgreSQL when several machines upload; every thread,
process and machine that uploads shares it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

metadata = sa.MetaData()

# The database's clock, not the caller's: machines with skewed clocks still space
# their requests correctly.
NOW = {
    "postgresql": sa.literal_column("extract(epoch from statement_timestamp())", sa.Float),
    "sqlite": sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Float),
}



def insert(engine: sa.Engine, table: sa.Table):  # noqa: ANN201
    """INSERT with ON CONFLICT support in the engine's dialect."""
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)
