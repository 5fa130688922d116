"""The SQLite side's direct path for the plain writes of ``db.writes`` stores exactly what SQLAlchemy would store,
fails the way SQLAlchemy's path fails, and leaves to SQLAlchemy any statement that needs more of an execution."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from agent_server.db import StorageError, writes
from agent_server.db.base import PLAIN
from agent_server.db.sqlite import SqliteDatabase

pytestmark = pytest.mark.sqlite_only("the SQLite side's direct write path")
NOW = datetime(2026, 12, 2, 10, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(database_url)
    try:
        yield database
    finally:
        await database.dispose()


def rows(db: SqliteDatabase, table: str, key: str, *values: str) -> list[dict]:
    with sqlite3.connect(db.path) as conn:
        conn.row_factory = sqlite3.Row
        marks = ",".join("?" * len(values))
        return [dict(row) for row in conn.execute(f"SELECT * FROM {table} WHERE {key} IN ({marks}) ORDER BY {key}, id",
                                                  values)]


def a_reply(suffix: str) -> list[writes.Op]:
    conversation, reply, turn, call = (f"{kind}_{suffix}" for kind in ("conv", "reply", "turn", "call"))
    return [
        writes.insert_conversation(id=conversation, owner="alice", model="m", system="be brief", title="t",
                                   created_at=NOW, updated_at=NOW, lock_token="tok", lock_expires_at=NOW
                                   + timedelta(seconds=30), lock_reply_id=reply),
        writes.insert_reply(id=reply, conversation_id=conversation, owner="alice", route="stream", model="m",
                            status="running", steps=0, last_seq=0, created_at=NOW, prompt_turn_id=turn),
        writes.insert_turn(id=turn, conversation_id=conversation, reply_id=reply, seq=1, step=0, role="user",
                           content="héllo", content_blocks='[{"type":"text","text":"héllo"}]', tokens=3,
                           status="complete", created_at=NOW, updated_at=NOW),
        writes.insert_call(id=call, conversation_id=conversation, owner="alice", reply_id=reply, step=1,
                           prompt_turn_id=turn, route="stream", model="m", status="running", created_at=NOW),
        writes.insert_tool_runs([{"id": f"run_{suffix}_{n}", "conversation_id": conversation, "reply_id": reply,
                                  "call_id": call, "step": 1, "tool_use_id": f"toolu_{suffix}_{n}", "name": "clock",
                                  "kind": "python", "input": "{}", "status": "done", "is_error": n == 1,
                                  "created_at": NOW} for n in range(2)]),
        writes.update_call(call, status="ok", input_tokens=12, output_tokens=34, cost_nano_usd=5678, latency_ms=9),
    ]


async def test_plain_writes_store_exactly_what_sqlalchemy_stores(db, monkeypatch) -> None:
    async def store(conn, *, ops):  # type: ignore[no-untyped-def]
        await writes.apply(conn, ops=ops)

    used: list[str] = []
    run_direct = db._direct.execute
    monkeypatch.setattr(db._direct, "execute", lambda *args: used.append("direct") or run_direct(*args))
    await db.write(store, ops=a_reply("direct"))
    assert used == ["direct"] * 6, "every plain write of a reply took the direct path"

    used.clear()
    monkeypatch.setattr(db._direct, "accepts", lambda *_: False)  # SQLAlchemy's own path, for comparison
    await db.write(store, ops=a_reply("sqlalchemy"))
    assert used == []

    for table, key in (("conversations", "id"), ("replies", "id"), ("turns", "id"), ("requests", "id"),
                       ("tool_runs", "call_id")):
        direct = rows(db, table, key, *(f"{p}_direct" for p in ("conv", "reply", "turn", "call")))
        through_sqlalchemy = rows(db, table, key, *(f"{p}_sqlalchemy" for p in ("conv", "reply", "turn", "call")))
        assert direct and len(direct) == len(through_sqlalchemy)
        for mine, theirs in zip(direct, through_sqlalchemy, strict=True):
            same = {k: str(v).replace("sqlalchemy", "direct") if isinstance(v, str) else v for k, v in theirs.items()}
            assert mine == same, table
    assert rows(db, "requests", "id", "call_direct")[0]["created_at"] == "2026-12-02 10:30:15.123456"


async def test_a_failure_on_the_direct_path_is_a_storage_error_and_nothing_is_kept(db) -> None:
    async def store(conn, *, ops):  # type: ignore[no-untyped-def]
        await writes.apply(conn, ops=ops)

    db._loop_conn.connection.driver_connection.execute("PRAGMA query_only=ON")  # as a read-only file behaves
    try:
        with pytest.raises(StorageError, match="readonly"):
            await db.write(store, ops=a_reply("refused"))
    finally:
        db._loop_conn.connection.driver_connection.execute("PRAGMA query_only=OFF")
    assert rows(db, "conversations", "id", "conv_refused") == []
    await db.write(store, ops=a_reply("after"))  # the connection was left usable
    assert len(rows(db, "conversations", "id", "conv_after")) == 1


async def test_a_statement_with_python_side_defaults_is_left_to_sqlalchemy(db) -> None:
    marked = insert(writes.CALLS).execution_options(**{PLAIN: True})

    async def store(conn):  # type: ignore[no-untyped-def]
        await writes.apply(conn, ops=a_reply("defaults")[:3])
        # No step, no token counts, no attempts: SQLAlchemy fills in the columns' defaults.
        await conn.execute(marked, {"id": "call_defaults", "conversation_id": "conv_defaults", "route": "agent",
                                    "model": "m", "status": "running", "created_at": NOW})

    await db.write(store)
    stored = rows(db, "requests", "id", "call_defaults")[0]
    assert (stored["step"], stored["input_tokens"], stored["attempts"]) == (1, 0, 1)
