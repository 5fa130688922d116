"""The SQLite side of the database interface: one writer per file, readers that never wait for it.

SQLite allows one writing transaction per file at a time. This process's writes run one after another, in the
order they were asked for (an ``asyncio.Lock``), each as ``BEGIN IMMEDIATE`` (the write lock taken up front: a
deferred transaction that later upgrades can fail with "database is locked").

Where they run: on the event loop, on a connection that never waits (``busy_timeout=0``). Our transactions are a
few one-row statements, far cheaper than the two thread hand-offs a writer thread costs on the way to every
first token; awaiting ``execute`` on that connection never suspends, so a transaction is never interleaved
with anything. When another process holds the write lock (another worker, a backup tool), the transaction is
retried after a short, growing pause, still in order. A ``heavy`` transaction (it may touch many rows) runs on
a thread instead, whose connection waits for the lock on its own.

The loop's connection never checkpoints (a checkpoint fsyncs): the thread does, in turn with the writes (they wait
for it, the loop does not), once the WAL has grown past ``CHECKPOINT_BYTES`` — a passive checkpoint, or one that
truncates the WAL past ``TRUNCATE_BYTES`` — and ``journal_size_limit`` truncates the WAL when SQLite resets it. So
the WAL stays bounded whatever the write pattern.

Deleted content is overwritten (``secure_delete``); SQLite reuses the pages it frees for new rows.

Reads use aiosqlite connections (a thread each) and, in WAL mode, never wait for the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from .base import Database, StorageError, Transaction
from .sqlite_direct import DirectWrites

BUSY_TIMEOUT_MS = 5000
CHECKPOINT_BYTES = 4 * 1024 * 1024
# Past this (another process's writes kept a passive checkpoint from finishing), one that also truncates the WAL.
TRUNCATE_BYTES = 16 * 1024 * 1024
CHECK_WAL_EVERY = 32  # commits between two looks at the WAL's size
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA secure_delete=ON",
    f"PRAGMA journal_size_limit={16 * 1024 * 1024}",
)
IDENTITY_CHECK_SECONDS = 1.0
log = logging.getLogger(__name__)
T = TypeVar("T")


def database_path(database_url: str) -> Path | None:
    database = make_url(database_url).database
    return None if not database or database == ":memory:" else Path(database).expanduser()


def ensure_parent_folder(database_url: str) -> None:
    path = database_path(database_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def install_pragmas(engine: Engine, *, begin: str, foreign_keys: bool, loop_writer: bool = False) -> None:
    """Every connection of ``engine`` gets WAL, our pragmas and our own ``BEGIN``.

    Migrations turn foreign keys off: batch mode rebuilds tables, and dropping a referenced table with foreign
    keys on would cascade deletes into the tables that point at it.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Take transaction control from the driver so that BEGIN is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in PRAGMAS:
            cursor.execute(pragma)
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        if loop_writer:
            cursor.execute("PRAGMA busy_timeout=0")
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql(begin)


def create_reader(database_url: str, *, pool_size: int = 4, foreign_keys: bool = True) -> AsyncEngine:
    ensure_parent_folder(database_url)
    if pool_size == 0:
        engine = create_async_engine(database_url, poolclass=NullPool)
    else:
        engine = create_async_engine(database_url, pool_size=pool_size, max_overflow=0)
    install_pragmas(engine.sync_engine, begin="BEGIN", foreign_keys=foreign_keys)
    return engine


def create_migration_engine(database_url: str) -> AsyncEngine:
    """The engine Alembic runs on: foreign keys off (batch mode), the write lock taken up front."""
    ensure_parent_folder(database_url)
    engine = create_async_engine(database_url, poolclass=NullPool)
    install_pragmas(engine.sync_engine, begin="BEGIN IMMEDIATE", foreign_keys=False)
    return engine


def _sync_url(database_url: str) -> str:
    return make_url(database_url).set(drivername="sqlite+pysqlite").render_as_string(hide_password=False)


def _writer_engine(database_url: str, *, on_loop: bool) -> Engine:
    engine = create_engine(_sync_url(database_url), poolclass=StaticPool,
                           connect_args={"check_same_thread": False})
    install_pragmas(engine, begin="BEGIN IMMEDIATE", foreign_keys=True, loop_writer=on_loop)
    return engine


class _LoopConnection:
    """``AsyncConnection.execute`` over a synchronous connection: awaiting it never suspends. The plain writes of
    ``db.writes`` go straight to the driver (``sqlite_direct``)."""

    __slots__ = ("_conn", "_direct", "dialect")

    def __init__(self, conn, direct: DirectWrites) -> None:  # type: ignore[no-untyped-def]
        self._conn = conn
        self._direct = direct
        self.dialect = conn.dialect

    async def execute(self, statement, parameters=None):  # type: ignore[no-untyped-def]
        if self._direct.accepts(statement, parameters):
            result = self._direct.execute(self._conn.connection.driver_connection, statement, parameters)
            if result is not None:
                return result
        return self._conn.execute(statement, parameters)

    async def exec_driver_sql(self, statement, parameters=None):  # type: ignore[no-untyped-def]
        return self._conn.exec_driver_sql(statement, parameters)


class _Busy(Exception):
    """``BEGIN IMMEDIATE`` found the write lock held by another connection."""


def _is_busy(exc: OperationalError) -> bool:
    original = exc.orig
    return isinstance(original, sqlite3.OperationalError) and original.sqlite_errorcode & 0xFF in (
        sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
    )


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, database_url: str, *, readers: int = 4, on_write=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.url = database_url
        self.path = database_path(database_url)
        ensure_parent_folder(database_url)
        self.reader = create_reader(database_url, pool_size=readers)
        self._loop_engine = _writer_engine(database_url, on_loop=True)
        self._thread_engine = _writer_engine(database_url, on_loop=False)
        try:
            self._loop_conn = self._loop_engine.connect()
            self._thread_conn = self._thread_engine.connect()
        except OperationalError as exc:
            raise StorageError(f"cannot open the database ({exc.orig})") from None
        self._direct = DirectWrites(self._loop_engine.dialect)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._thread_loop = asyncio.new_event_loop()
        self._order = asyncio.Lock()
        self._on_write = on_write
        self._commits = 0
        self._checkpoint: asyncio.Future | None = None
        self._identity = self._stat()
        self._identity_checked = time.monotonic()
        self.waited_for_lock = 0  # transactions that found the lock held by another connection (tests, logs)

    # -- reads ---------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.reader.connect() as conn:
            async with conn.begin():
                yield conn

    # -- writes --------------------------------------------------------------------------------------------

    async def _write(self, transaction: Transaction[T], heavy: bool, kwargs: dict[str, Any]) -> T:
        self._check_identity()
        async with self._order:
            delay = 0.002
            give_up = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            while True:
                try:
                    if heavy:
                        result = await asyncio.get_running_loop().run_in_executor(
                            self._thread, self._run_on_thread, transaction, kwargs)
                    else:
                        result = await self._run(self._loop_conn, transaction, kwargs)
                    break
                except _Busy:
                    self.waited_for_lock += 1
                    if time.monotonic() > give_up:
                        raise StorageError("The database is locked by another process; try again shortly.") from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.1)
        self._after_commit()
        return result

    async def _run(self, conn, transaction: Transaction[T], kwargs: dict[str, Any]) -> T:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            outer = conn.begin()
        except OperationalError as exc:
            if conn is self._loop_conn and _is_busy(exc):
                raise _Busy from exc
            raise
        try:
            result = await transaction(_LoopConnection(conn, self._direct), **kwargs)
            outer.commit()
        except BaseException:
            # Also after a COMMIT that failed (a full disk): until rolled back, the connection keeps the dead
            # transaction, and every later write would fail on it.
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        if self._on_write is not None:
            self._on_write(time.perf_counter() - started)
        return result

    def _run_on_thread(self, transaction: Transaction[T], kwargs: dict[str, Any]) -> T:
        return self._thread_loop.run_until_complete(self._run(self._thread_conn, transaction, kwargs))

    def _after_commit(self) -> None:
        # Commits since the last look at the WAL. A look skipped because a checkpoint is still running is taken
        # at the first commit after it ends, not CHECK_WAL_EVERY commits later: under big writes that gap alone
        # would let the WAL grow megabytes past TRUNCATE_BYTES.
        self._commits += 1
        if self._commits < CHECK_WAL_EVERY or self._checkpoint is not None or self.path is None:
            return
        self._commits = 0
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if size >= CHECKPOINT_BYTES:
            mode = "TRUNCATE" if size >= TRUNCATE_BYTES else "PASSIVE"
            self._checkpoint = asyncio.ensure_future(self._checkpoint_in_turn(mode))
            self._checkpoint.add_done_callback(self._checkpoint_done)

    async def _checkpoint_in_turn(self, mode: str) -> None:
        # In turn with this process's writes, which wait for it (the loop does not: it awaits the order lock). Run
        # beside them, a passive checkpoint took 30-75 ms on a loaded machine while big writes grew the WAL by 8-19 MB,
        # and a truncating one waits for a moment with no writer that a steady stream of writes never leaves it.
        async with self._order:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._run_checkpoint, mode)

    def _run_checkpoint(self, mode: str) -> None:
        # PASSIVE copies what it can without waiting for (or blocking) readers and writers. On the driver's
        # connection: through SQLAlchemy it would begin (BEGIN IMMEDIATE) a transaction nobody commits.
        self._thread_conn.connection.driver_connection.execute(f"PRAGMA wal_checkpoint({mode})")

    def _checkpoint_done(self, future: asyncio.Future) -> None:
        self._checkpoint = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("WAL checkpoint failed: %s", future.exception())

    # -- the file itself -----------------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def identity_problem(self) -> str | None:
        if self.path is None:
            return None
        now = self._stat()
        if now is None:
            return f"the database file {self.path} is gone (was the volume unmounted?); restart the server"
        if now != self._identity:
            return f"the database file {self.path} was replaced by another file; restart the server"
        return None

    def _check_identity(self) -> None:
        if time.monotonic() - self._identity_checked < IDENTITY_CHECK_SECONDS:
            return
        self._identity_checked = time.monotonic()
        problem = self.identity_problem()
        if problem is not None:
            raise StorageError(problem[0].upper() + problem[1:] + ".")

    async def dispose(self) -> None:
        async with self._order:
            self._loop_conn.close()
            loop = asyncio.get_running_loop()
            # The last connection to close checkpoints the WAL: off the loop.
            await loop.run_in_executor(self._thread, self._thread_conn.close)
            self._thread.shutdown(wait=True)
            self._thread_loop.close()
            self._loop_engine.dispose()
            self._thread_engine.dispose()
            await self.reader.dispose()
