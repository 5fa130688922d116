"""The SQLite connections of one process: writes on the event loop when they cannot wait, async readers.

SQLite allows one writing transaction per file at a time. Every write of this process is one plain
function run as one transaction on a ``sqlite3`` connection, ``BEGIN IMMEDIATE`` first (the write lock is
taken up front: a deferred transaction that later upgrades can fail with "database is locked").

Where it runs: our transactions are a few one-row statements (~75 µs back to back, ~0.35-0.5 ms in a
process that was idle; opening a reply on a 1,000-turn conversation also reads its history, ~2-3.5 ms), so
when the write lock is free they run right on the event loop. A thread hand-off cost more than the
transaction (two wake-ups and the GIL: ~0.3 ms on the way to every first token), and cannot overlap it with
the upstream request's building either: the loop holds the GIL while it builds, so the thread only starts
once the loop waits (measured: 1.44 ms for both in parallel vs 1.30 ms one after the other).
They must never *wait* there, though: the loop's connection has no busy timeout, and when the lock is held
(another worker process, a backup tool) the transaction goes to the writer thread, whose connection waits
up to ``BUSY_TIMEOUT_MS``. While anything is queued on that thread, new transactions queue behind it, so
transactions always run in the order they were submitted.
Nor may the loop fsync: its connection never checkpoints the WAL; the writer thread runs a passive
checkpoint every ``CHECKPOINT_EVERY`` commits instead (what SQLite's auto-checkpoint would have done).

Reads use async aiosqlite connections and, in WAL mode, never wait for the writer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

BUSY_TIMEOUT_MS = 5000
# Commits on the loop between two passive checkpoints. A reply's transactions dirty a few pages each, so this
# keeps the WAL near SQLite's default auto-checkpoint size (1,000 pages).
CHECKPOINT_EVERY = 256
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA synchronous=NORMAL",
)
log = logging.getLogger(__name__)
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


def open_writer(database_url: str, *, on_loop: bool = False) -> sqlite3.Connection:
    """A writing ``sqlite3`` connection in autocommit mode (the transactions are ours), with our pragmas.

    ``on_loop``: the event loop's connection, which must never block: no busy timeout (a held lock raises at
    once) and no checkpoints (they fsync).
    """
    ensure_parent_folder(database_url)
    conn = sqlite3.connect(make_url(database_url).database, isolation_level=None, check_same_thread=False)
    for pragma in (*PRAGMAS, "PRAGMA foreign_keys=ON"):
        conn.execute(pragma)
    if on_loop:
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


class _WriteLockBusy(Exception):
    """``BEGIN IMMEDIATE`` found the write lock held (only raised on the loop's connection)."""


class Database:
    """The connections of one process. ``on_write`` (if given) receives the seconds each write transaction took."""

    def __init__(self, database_url: str, *, readers: int = 4, on_write: Callable[[float], None] | None = None):
        self.url = database_url
        self.reader = create_engine(database_url, begin="BEGIN", pool_size=readers)
        self._loop_conn = open_writer(database_url, on_loop=True)
        self._thread_conn = open_writer(database_url)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._on_write = on_write
        self._queued = 0  # transactions handed to the writer thread and not finished yet
        self._commits_since_checkpoint = 0
        self._checkpoint: asyncio.Future | None = None
        self.handed_off = 0  # transactions that found the lock held and went to the thread (for tests, logs)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction: one consistent snapshot."""
        async with self.reader.connect() as conn:
            async with conn.begin():
                yield conn

    def submit_write(self, transaction: Callable[..., T], /, **kwargs: object) -> asyncio.Future[T]:
        """Run or queue a write transaction now (submission order is execution order); return its future.

        The future is already done when the transaction ran on the loop.
        """
        loop = asyncio.get_running_loop()
        if self._queued == 0:
            future = loop.create_future()
            try:
                future.set_result(self._run(self._loop_conn, transaction, kwargs))
            except _WriteLockBusy:
                self.handed_off += 1
            except Exception as exc:
                future.set_exception(exc)
                return future
            else:
                self._count_commit(loop)
                return future
        self._queued += 1
        future = loop.run_in_executor(self._writer, self._run, self._thread_conn, transaction, kwargs)
        future.add_done_callback(self._thread_write_done)
        return future

    async def write(self, transaction: Callable[..., T], /, **kwargs: object) -> T:
        """Run ``transaction(conn, **kwargs)`` in one write transaction; commit on return, roll back if it
        raises (its exception is re-raised here).

        Once started, a transaction runs to its end even if the awaiting task is cancelled: callers that
        must react to a cancelled write (e.g. release a lock it took) shield it and check the outcome.
        """
        return await self.submit_write(transaction, **kwargs)

    def _thread_write_done(self, _future: asyncio.Future) -> None:
        self._queued -= 1

    def _count_commit(self, loop: asyncio.AbstractEventLoop) -> None:
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._commits_since_checkpoint = 0
            self._checkpoint = loop.run_in_executor(self._writer, self._passive_checkpoint)
            self._checkpoint.add_done_callback(self._checkpoint_done)

    def _passive_checkpoint(self) -> None:
        # PASSIVE: copies what it can without waiting for (or blocking) readers and writers.
        self._thread_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _checkpoint_done(self, future: asyncio.Future) -> None:
        self._checkpoint = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("WAL checkpoint failed: %s", future.exception())

    def _run(self, conn: sqlite3.Connection, transaction: Callable[..., T], kwargs: dict) -> T:
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if conn is self._loop_conn and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise _WriteLockBusy from exc
            raise
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
        self._loop_conn.close()
        loop = asyncio.get_running_loop()
        # Queued behind every handed-off write; the last connection to close checkpoints the WAL, here off the loop.
        await loop.run_in_executor(self._writer, self._thread_conn.close)
        self._writer.shutdown(wait=True)
        await self.reader.dispose()


__all__ = ["Database", "create_engine", "ensure_parent_folder", "open_writer"]
