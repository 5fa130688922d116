"""The SQLite side's writes: on the event loop, one at a time, in the order they were asked for; a write lock held
by another connection is waited for (the loop keeps running) and, past the busy timeout, is a storage error; a
heavy write runs on a thread; and the WAL stays bounded however much is written."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from agent_server.db import StorageError
from agent_server.db import sqlite as sqlite_side
from agent_server.db.sqlite import SqliteDatabase

pytestmark = pytest.mark.sqlite_only("the SQLite side's write path")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[SqliteDatabase]:
    path = Path(make_url(database_url).database or "")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE scratch (n INTEGER, payload TEXT)")
    database = SqliteDatabase(database_url)
    try:
        yield database
    finally:
        await database.dispose()


def stored(db: SqliteDatabase) -> list[int]:
    with sqlite3.connect(db.path) as conn:
        return [n for (n,) in conn.execute("SELECT n FROM scratch ORDER BY rowid")]


async def insert(conn, *, n: int, payload: str = "") -> int:  # type: ignore[no-untyped-def]
    await conn.execute(text("INSERT INTO scratch (n, payload) VALUES (:n, :p)"), {"n": n, "p": payload})
    return n


async def test_a_write_with_the_lock_free_runs_without_yielding_to_other_tasks(db) -> None:
    ran_between: list[str] = []

    async def other() -> None:
        ran_between.append("other")

    task = asyncio.ensure_future(other())
    assert await db.write(insert, n=1) == 1
    # The other task had its chance only once the write was done (it never suspended mid-transaction).
    assert stored(db) == [1] and db.waited_for_lock == 0
    await task
    assert ran_between == ["other"]


async def test_a_held_lock_is_waited_for_in_order_while_the_loop_runs(db) -> None:
    holder = sqlite3.connect(db.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer, say
    holder.execute("INSERT INTO scratch (n) VALUES (0)")
    first = asyncio.ensure_future(db.write(insert, n=1))
    second = asyncio.ensure_future(db.write(insert, n=2))
    ticks = 0
    while db.waited_for_lock < 3:  # the loop is free: this coroutine runs while the writes wait
        ticks += 1
        await asyncio.sleep(0.005)
    assert not first.done() and not second.done() and ticks > 0
    holder.execute("COMMIT")
    holder.close()
    assert await first == 1 and await second == 2
    assert stored(db) == [0, 1, 2]


async def test_a_lock_held_past_the_busy_timeout_is_a_storage_error(db, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_side, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(db.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageError) as caught:
            await db.write(insert, n=1)
        assert caught.value.type == "storage_error" and caught.value.status == 503
        assert "locked" in caught.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await db.write(insert, n=2) == 2


async def test_a_heavy_write_runs_on_a_thread_in_order(db) -> None:
    import threading

    threads: list[str] = []

    async def heavy(conn) -> None:  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        for n in range(100, 110):
            await insert(conn, n=n)

    light = asyncio.ensure_future(db.write(insert, n=1))
    big = asyncio.ensure_future(db.write(heavy, heavy=True))
    after = asyncio.ensure_future(db.write(insert, n=2))
    await asyncio.gather(light, big, after)
    assert threads and threads[0].startswith("sqlite-writer")
    assert stored(db) == [1, *range(100, 110), 2]


async def test_a_failed_write_rolls_back_and_the_next_one_works(db) -> None:
    async def half(conn) -> None:  # type: ignore[no-untyped-def]
        await insert(conn, n=1)
        raise ValueError("changed my mind")

    with pytest.raises(ValueError):
        await db.write(half)
    assert await db.write(insert, n=2) == 2
    assert stored(db) == [2]


async def test_the_wal_stays_bounded_however_much_is_written(db) -> None:
    """Checkpoints by size and ``journal_size_limit``: while 40 MB are written, the WAL never passes a few megabytes."""
    payload = "x" * 100_000
    wal = Path(f"{db.path}-wal")
    largest = 0
    for n in range(400):
        await db.write(insert, n=n, payload=payload)
        await asyncio.sleep(0)  # let a checkpoint (on its thread) finish now and then, as a server would
        largest = max(largest, os.stat(wal).st_size)
    # Checkpoints take turns with the writes: the WAL grows at most one look at its size (CHECK_WAL_EVERY commits
    # of 100 kB) past CHECKPOINT_BYTES (4 MiB), however fast the writes come.
    assert largest < 12 * 1024 * 1024, largest
