"""The SQLite engines of one process: one writer thread, many async readers.

SQLite allows one writing transaction per file at a time. Every write of this process runs as one plain
function on a single dedicated thread with its own synchronous connection: the whole transaction is one
hand-off from the event loop, instead of one per statement (with aiosqlite each statement waits for the
loop to come round, which under load made a five-statement transaction cost tens of milliseconds). The
thread is the single-writer discipline: transactions queue in order and never overlap. Each starts with
``BEGIN IMMEDIATE``, so the write lock is taken up front (a deferred transaction that later upgrades can
fail with "database is locked" without waiting); across processes the busy timeout makes writers queue.

Reads use async aiosqlite connections and, in WAL mode, never wait for the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

BUSY_TIMEOUT_MS = 5000
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA synchronous=NORMAL",
)
P = ParamSpec("P")
T = TypeVar("T")


def ensure_parent_folder(database_url: str) -> None:
    database = make_url(database_url).database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _install_pragmas(engine: Engine, begin: str, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Take transaction control from the driver so that BEGIN is ours (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in PRAGMAS:
            cursor.execute(pragma)
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine, "begin")
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
    _install_pragmas(engine.sync_engine, begin, foreign_keys)
    return engine


def open_writer(database_url: str) -> sqlite3.Connection:
    """The writer's ``sqlite3`` connection: autocommit mode (transactions are ours), the same pragmas."""
    ensure_parent_folder(database_url)
    conn = sqlite3.connect(make_url(database_url).database, isolation_level=None, check_same_thread=False)
    for pragma in (*PRAGMAS, "PRAGMA foreign_keys=ON"):
        conn.execute(pragma)
    return conn


class Database:
    """The engines of one process. ``on_write`` (if given) receives the seconds each write transaction took."""

    def __init__(self, database_url: str, *, readers: int = 4, on_write: Callable[[float], None] | None = None):
        self.url = database_url
        self.reader = create_engine(database_url, begin="BEGIN", pool_size=readers)
        self._writer_conn = open_writer(database_url)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._on_write = on_write

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction: one consistent snapshot."""
        async with self.reader.connect() as conn:
            async with conn.begin():
                yield conn

    def submit_write(self, transaction: Callable[..., T], /, **kwargs: object) -> asyncio.Future[T]:
        """Queue a write transaction now (order of submission is order of execution) and return its future."""
        return asyncio.get_running_loop().run_in_executor(self._writer, self._run, transaction, kwargs)

    async def write(self, transaction: Callable[..., T], /, **kwargs: object) -> T:
        """Run ``transaction(conn, **kwargs)`` in one write transaction on the writer thread; commit on
        return, roll back if it raises (its exception is re-raised here).

        Once started, a transaction runs to its end even if the awaiting task is cancelled: callers that
        must react to a cancelled write (e.g. release a lock it took) shield it and check the outcome.
        """
        return await self.submit_write(transaction, **kwargs)

    def _run(self, transaction: Callable[..., T], kwargs: dict) -> T:
        started = time.perf_counter()
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = transaction(conn, **kwargs)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if self._on_write is not None:
            self._on_write(time.perf_counter() - started)
        return result

    async def dispose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._writer_conn.close)
        self._writer.shutdown(wait=True)
        await self.reader.dispose()


__all__ = ["Database", "create_engine", "ensure_parent_folder", "open_writer"]
