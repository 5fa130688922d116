"""Alembic environment: the same history for SQLite (batch mode rebuilds tables) and PostgreSQL (plain ALTER).

On SQLite the engine has the server's pragmas, foreign keys off (batch mode drops and recreates tables) and
the write lock taken up front; on PostgreSQL the migration runs in one transaction with a lock that keeps two
instances starting together from migrating at once.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from agent_server.config import get_settings
from agent_server.db import backend_of
from agent_server.db.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata
# Any constant: the advisory lock that serialises migrations of one PostgreSQL database.
_MIGRATION_LOCK = 7_244_021


def database_url() -> str:
    # Set by agent-server migrate; from alembic.ini's directory, DATABASE_URL (or .env) decides.
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, render_as_batch=True,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    url = database_url()
    if backend_of(url) == "sqlite":
        from agent_server.db.sqlite import create_migration_engine

        engine = create_migration_engine(url)
    else:
        engine = create_async_engine(url, poolclass=NullPool, connect_args={"prepare_threshold": None})
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
