"""The PostgreSQL side of the database interface: an async pool (psycopg 3) shared by reads and writes.

Why psycopg rather than asyncpg: behind PgBouncer in transaction mode asyncpg's prepared statements fail
("prepared statement does not exist"); psycopg with ``prepare_threshold=None`` prepares nothing and works
there, and it is the driver SQLAlchemy's maintainers recommend for that setup.

Writes run at READ COMMITTED; the statements that decide something (the reply lease, pending actions) lock the
row they decide on with ``SELECT ... FOR UPDATE`` (SQLAlchemy renders nothing for it on SQLite, whose write
transactions are serialised anyway). A transaction that meets a deadlock or a serialisation failure is run
again, a few times, from the start. Reads that span several statements (an audit) run at REPEATABLE READ, so
they see one snapshot, as SQLite's readers do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from psycopg.types import string as pg_string
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .base import Database, Transaction

log = logging.getLogger(__name__)
T = TypeVar("T")
_RETRY_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
RETRIES = 4


def _nul_free(dumper: type) -> type:
    """``dumper`` with U+0000 replaced by U+FFFD: PostgreSQL's text cannot hold NUL, SQLite's can. Client input
    with a NUL is refused before it gets here (422); this keeps text a model or a tool produced (a turn's plain
    text, an error message) storable. Content blocks are stored as JSON, where NUL is escaped: kept verbatim."""

    class NulFree(dumper):  # type: ignore[valid-type, misc]
        def dump(self, obj: str):  # type: ignore[no-untyped-def]
            return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)

    NulFree.__name__ = f"NulFree{dumper.__name__}"
    return NulFree


# In psycopg's order (the last registered is the default for its format).
_STR_DUMPERS = [_nul_free(d) for d in (
    pg_string.StrBinaryDumperName, pg_string.StrBinaryDumperVarchar, pg_string.StrBinaryDumper,
    pg_string.StrDumperName, pg_string.StrDumperVarchar, pg_string.StrDumper, pg_string.StrDumperUnknown)]


def create_pg_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"prepare_threshold": None, "connect_timeout": 10},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _adapt(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        for dumper in _STR_DUMPERS:
            dbapi_connection.driver_connection.adapters.register_dumper(str, dumper)

    return engine


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, database_url: str, *, pool_size: int = 10, on_write=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.url = database_url
        self.engine = create_pg_engine(database_url, pool_size=pool_size)
        self._reader = self.engine.execution_options(isolation_level="REPEATABLE READ")
        self._on_write = on_write

    @property
    def reader(self) -> AsyncEngine:
        return self.engine

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.connect() as conn:
            async with conn.begin():
                yield conn

    async def _write(self, transaction: Transaction[T], heavy: bool, kwargs: dict[str, Any]) -> T:
        loop = asyncio.get_running_loop()
        for attempt in range(RETRIES + 1):
            started = loop.time()
            try:
                async with self.engine.begin() as conn:
                    result = await transaction(conn, **kwargs)
            except DBAPIError as exc:
                if _sqlstate(exc) in _RETRY_STATES and attempt < RETRIES:
                    log.info("write transaction retried after %s", _sqlstate(exc))
                    await asyncio.sleep(0.01 * (attempt + 1))
                    continue
                raise
            if self._on_write is not None:
                self._on_write(loop.time() - started)
            return result
        raise AssertionError("unreachable")

    async def dispose(self) -> None:
        await self.engine.dispose()
