"""Where write transactions run: on the event loop while the write lock is free, on the writer thread
(which may wait) when another connection holds it, always in the order they were submitted."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from agent_server.db import engine
from agent_server.db.engine import Database


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def scratch(database_url: str) -> Iterator[Path]:
    """A table of our own in the migrated file, so these tests do not depend on the schema."""
    path = Path(make_url(database_url).database or "")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE scratch (n INTEGER, payload TEXT)")
    yield path


def insert(conn: sqlite3.Connection, *, n: int, payload: str = "") -> int:
    conn.execute("INSERT INTO scratch (n, payload) VALUES (?, ?)", (n, payload))
    return n


def stored(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [n for (n,) in conn.execute("SELECT n FROM scratch ORDER BY rowid")]


async def test_a_free_lock_means_the_write_is_done_before_submit_returns(db: Database, scratch: Path) -> None:
    future = db.submit_write(insert, n=1)
    assert future.done() and future.result() == 1
    assert stored(scratch) == [1] and db.handed_off == 0


async def test_a_held_lock_sends_writes_to_the_thread_in_order_and_the_loop_keeps_running(
    db: Database, scratch: Path
) -> None:
    holder = sqlite3.connect(scratch, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer, say
    holder.execute("INSERT INTO scratch (n) VALUES (0)")
    first = db.submit_write(insert, n=1)
    second = db.submit_write(insert, n=2)  # queued behind the first, although it would not have to wait
    assert not first.done() and not second.done()
    assert db.handed_off == 1

    # The loop is free while they wait: this coroutine runs, and the writes are still pending.
    async def loop_turns() -> int:
        for _ in range(3):
            await asyncio.sleep(0)
        return 3

    assert await loop_turns() == 3 and not first.done()
    holder.execute("COMMIT")
    holder.close()
    assert await asyncio.gather(first, second) == [1, 2]
    third = db.submit_write(insert, n=3)
    assert stored(scratch) == [0, 1, 2, 3]
    assert third.done()  # the thread's queue is empty again: back on the loop


async def test_a_failing_transaction_rolls_back_and_raises_to_the_caller(db: Database, scratch: Path) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        insert(conn, n=1)
        raise LookupError("no such thing")

    with pytest.raises(LookupError):
        await db.write(half_then_fail)
    await db.write(insert, n=2)
    assert stored(scratch) == [2]


async def test_the_wal_is_checkpointed_off_the_loop(db: Database, scratch: Path, monkeypatch) -> None:
    """The loop's connection never checkpoints; without the writer thread's checkpoints the WAL would grow
    by every commit, here ~8 KiB each."""
    monkeypatch.setattr(engine, "CHECKPOINT_EVERY", 20)
    wal = scratch.with_name(scratch.name + "-wal")
    payload = "x" * 8000
    for round_ in range(10):
        for i in range(20):
            await db.write(insert, n=round_ * 20 + i, payload=payload)
        if db._checkpoint is not None:  # wait for the checkpoint this round started
            await db._checkpoint
    assert len(stored(scratch)) == 200
    # 200 commits of ~8 KiB un-checkpointed would be > 1.6 MB; with checkpoints the WAL is reused.
    assert wal.stat().st_size < 600_000, wal.stat().st_size
