"""Connecting to the database and keeping its schema current.

SQLite (the embedded default) runs in WAL mode with foreign keys on, and every
write transaction starts with BEGIN IMMEDIATE: writers queue for the lock up
front instead of failing half-way when two of them try to upgrade a read lock.
PostgreSQL is reached through psycopg 3 (`postgresql+psycopg://`).

The schema is owned by the Alembic migrations in `migrations/`; `upgrade()` runs
them, from the CLI (`gateway db upgrade`) or when the app starts.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url

from gateway.store import encryption

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, keyring: encryption.Keyring | None = None,
                statement_timeout_seconds: float = 0) -> Engine:
    """The engine; `keyring` (encryption at rest) rides on each of its connections.

    `statement_timeout_seconds` > 0 sets PostgreSQL's `statement_timeout` on every
    connection, so a pathological query is cut off (SQLSTATE 57014, answered 503 by
    `gateway.api.protection`); `upgrade` lifts it for migrations.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, parsed.database)
    elif parsed.get_backend_name() == "postgresql" and statement_timeout_seconds > 0:
        options = f"-c statement_timeout={int(statement_timeout_seconds * 1000)}"
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                               connect_args={"options": options})
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if keyring is not None:
        encryption.attach(engine, keyring)
    return engine


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def cut_off(error: Exception) -> bool:
    """Whether PostgreSQL cancelled the statement (statement_timeout, SQLSTATE 57014)."""
    return getattr(getattr(error, "orig", None), "sqlstate", None) == "57014"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # a migration may rightly take longer than any request (statement_timeout)
            connection.exec_driver_sql("SET statement_timeout = 0")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        if connection.in_transaction():
            connection.commit()
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("RESET statement_timeout")   # back to the engine's
            connection.commit()


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
