"""The tables of the store, for SQLite and PostgreSQL alike.

- `resources`: one row per logical resource: its current version and whether it
  is deleted. The row is what concurrent writers lock.
- `resource_versions`: every version ever written, content included; `seq` is a
  global change sequence, so history and incremental sync read in write order.
- `search_*`: values extracted at write time from the current version (tokens,
  strings, dates, references, quantities), so search never parses JSON.
- `clients`: API clients; only a hash of each bearer token is kept.

The schema is created and evolved only by the Alembic migrations next door;
this module describes it for queries (and the migrations must match it).
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

BigId = BigInteger().with_variant(Integer, "sqlite")

resources = Table(
    "resources", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    UniqueConstraint("resource_type", "id"),
    Index(None, "resource_type", "last_updated"),
)

resource_versions = Table(
    "resource_versions", metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("resource_pk", BigId, ForeignKey("resources.pk", ondelete="CASCADE"),
           nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime, nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", Text, nullable=True),
    UniqueConstraint("resource_pk", "version"),
    Index(None, "resource_type", "seq"),
)


def _index_table(name: str, *columns: Column, lookup: tuple[str, ...]) -> Table:
    return Table(
        name, metadata,
        Column("resource_pk", BigId, ForeignKey("resources.pk", ondelete="CASCADE"),
               nullable=False, index=True),
        Column("resource_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        Index(None, "resource_type", "param", *lookup),
    )


search_token = _index_table(
    "search_token",
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    lookup=("code", "system"),
)
search_string = _index_table(
    "search_string",
    Column("value", String(255), nullable=False),
    lookup=("value",),
)
search_date = _index_table(
    "search_date",
    Column("low", DateTime, nullable=True),
    Column("high", DateTime, nullable=True),
    lookup=("low", "high"),
)
search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(255), nullable=False),
    lookup=("target_id", "target_type"),
)
search_quantity = _index_table(
    "search_quantity",
    Column("value", Float, nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    lookup=("value",),
)

INDEX_TABLES = {
    "token": search_token,
    "string": search_string,
    "date": search_date,
    "reference": search_reference,
    "quantity": search_quantity,
}

clients = Table(
    "clients", metadata,
    Column("pk", BigId, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("organization", String(128), nullable=True),
    Column("region", String(8), nullable=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
)
