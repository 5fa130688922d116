"""The SQLite engine pair: many readers, one writer.

SQLite allows one writing transaction per file at a time. Inside a process every write goes through a
single connection guarded by an asyncio lock, and starts with ``BEGIN IMMEDIATE`` so the write lock is
taken up front (a deferred transaction that later upgrades can fail with "database is locked" without
waiting). Across processes the busy timeout makes writers queue. Readers use their own connections and,
in WAL mode, never wait for the writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

BUSY_TIMEOUT_MS = 5000
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA synchronous=NORMAL",
)


def ensure_parent_folder(database_url: str) -> None:
    database = make_url(database_url).database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _install_pragmas(engine: AsyncEngine, begin: str, foreign_keys: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Take transaction control from the driver so that BEGIN is ours (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in PRAGMAS:
            cursor.execute(pragma)
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql(begin)


def create_engine(
    database_url: str, *, begin: str = "BEGIN", pool_size: int = 4, foreign_keys: bool = True, **kwargs
) -> AsyncEngine:
    """An async engine whose every connection has WAL, foreign keys, a busy timeout and explicit BEGIN.

    Migrations turn foreign keys off: batch mode rebuilds tables, and dropping a referenced table with
    foreign keys on would cascade deletes into the tables that point at it.
    """
    ensure_parent_folder(database_url)
    if pool_size == 0:
        engine = create_async_engine(database_url, poolclass=NullPool, **kwargs)
    else:
        engine = create_async_engine(database_url, pool_size=pool_size, max_overflow=0, **kwargs)
    _install_pragmas(engine, begin, foreign_keys)
    return engine


class Database:
    """The engine pair of one process, with the single-writer discipline.

    ``on_write`` (if given) receives the seconds each write transaction took, for metrics.
    """

    def __init__(self, database_url: str, *, readers: int = 4, on_write: Callable[[float], None] | None = None):
        self.url = database_url
        self.reader = create_engine(database_url, begin="BEGIN", pool_size=readers)
        self.writer = create_engine(database_url, begin="BEGIN IMMEDIATE", pool_size=1)
        self._write_lock = asyncio.Lock()
        self._on_write = on_write

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction: one consistent snapshot."""
        async with self.reader.connect() as conn:
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A short write transaction, committed on exit. Keep network calls out of it."""
        async with self._write_lock:
            started = time.perf_counter()
            async with self.writer.begin() as conn:
                yield conn
            if self._on_write is not None:
                self._on_write(time.perf_counter() - started)

    async def dispose(self) -> None:
        await self.writer.dispose()
        await self.reader.dispose()
