"""Write-side repository functions: plain statements, no rules, run inside ``Database.write``. Each takes
the transaction's ``sqlite3`` connection and keyword-only arguments.

Statements are built with SQLAlchemy once, at import (so they follow the mapped tables), and compiled to
SQL text that the ``sqlite3`` driver runs directly: SQLAlchemy's per-call connection, statement and type
processing cost more than SQLite itself on these one-row statements (a reply's opening transaction:
~150 µs through a SQLAlchemy ``Connection``, ~75 µs on the driver). Datetimes are therefore formatted and
parsed here, exactly as SQLAlchemy's SQLite ``DateTime`` stores them, so reads through SQLAlchemy agree.
"""

from __future__ import annotations

from datetime import datetime
from sqlite3 import Connection
from typing import NamedTuple

from sqlalchemy import bindparam, insert, null, select, update
from sqlalchemy.dialects import sqlite

from .models import Conversation, Turn, UpstreamCall, new_id

LOCK_COLUMNS = (
    Conversation.lock_token,
    Conversation.lock_machine,
    Conversation.lock_pid,
    Conversation.lock_pid_started,
    Conversation.lock_expires_at,
)
_DIALECT = sqlite.dialect(paramstyle="named")


def _sql(statement) -> str:
    return str(statement.compile(dialect=_DIALECT))


def stored_time(value: datetime | None) -> str | None:
    """A naive UTC datetime as SQLAlchemy's SQLite DateTime stores it (always with microseconds)."""
    return None if value is None else value.isoformat(" ", "microseconds")


def parse_stored_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class StoredConversation(NamedTuple):
    """What opening a reply needs of a conversation: its model, system and reply-lock columns."""

    model: str
    system: str | None
    lock_token: str | None
    lock_machine: str | None
    lock_pid: int | None
    lock_pid_started: str | None
    lock_expires_at: datetime | None


# A turn as history reads it: (seq, role, status, content). Plain tuples, not a NamedTuple: building one per
# row was a third of opening a reply on a 1,000-turn conversation (`python -m bench.cold_commit --turns 1000`:
# 1.15 ms back to back with them, 0.77 ms without).
HistoryRow = tuple[int, str, str, str]


_INSERT_CONVERSATION = _sql(insert(Conversation))
_INSERT_CALL = _sql(insert(UpstreamCall))
_UPSERT_TURN = _sql(
    sqlite.insert(Turn).on_conflict_do_update(
        index_elements=[Turn.id],
        set_={"content": sqlite.insert(Turn).excluded.content, "status": sqlite.insert(Turn).excluded.status,
              "updated_at": sqlite.insert(Turn).excluded.updated_at},
    )
)
_CONVERSATION_DEFAULTS = {column.key: None for column in Conversation.__table__.columns}
_CALL_DEFAULTS = {column.key: None for column in UpstreamCall.__table__.columns}
_CONVERSATION_FOR_REPLY = _sql(select(Conversation.model, Conversation.system, *LOCK_COLUMNS).where(
    Conversation.id == bindparam("conversation_id"), Conversation.owner == bindparam("owner")
))
_TURNS_FOR_HISTORY = _sql(
    select(Turn.seq, Turn.role, Turn.status, Turn.content)
    .where(Turn.conversation_id == bindparam("conversation_id"))
    .order_by(Turn.seq)
)


def create_conversation(
    conn: Connection, *, owner: str, model: str, system: str | None, now: datetime, **extra: object
) -> str:
    """Insert a conversation; ``extra`` sets further columns (the reply lock, taken at birth)."""
    conversation_id = new_id("conv")
    values = {**_CONVERSATION_DEFAULTS, "id": conversation_id, "owner": owner, "model": model, "system": system,
              "created_at": stored_time(now), "updated_at": stored_time(now), **extra}
    values["lock_expires_at"] = stored_time(values["lock_expires_at"])
    conn.execute(_INSERT_CONVERSATION, values)
    return conversation_id


def conversation_for_reply(conn: Connection, *, conversation_id: str, owner: str) -> StoredConversation | None:
    """The conversation's model, system and reply-lock columns, if it belongs to ``owner``."""
    row = conn.execute(_CONVERSATION_FOR_REPLY, {"conversation_id": conversation_id, "owner": owner}).fetchone()
    if row is None:
        return None
    return StoredConversation(*row[:-1], lock_expires_at=parse_stored_time(row[-1]))


def turns_for_history(conn: Connection, *, conversation_id: str) -> list[HistoryRow]:
    """Every turn, oldest first, as ``(seq, role, status, content)``: the raw material of upstream history."""
    return conn.execute(_TURNS_FOR_HISTORY, {"conversation_id": conversation_id}).fetchall()


def save_turn(
    conn: Connection,
    *,
    conversation_id: str,
    seq: int,
    role: str,
    content: str,
    status: str,
    now: datetime,
    turn_id: str | None = None,
) -> str:
    """Insert a turn (a new id when none is given), or update the content and status of one a checkpoint
    stored already."""
    turn_id = turn_id or new_id("turn")
    stamp = stored_time(now)
    conn.execute(
        _UPSERT_TURN,
        {"id": turn_id, "conversation_id": conversation_id, "seq": seq, "role": role, "content": content,
         "content_blocks": None, "status": status, "created_at": stamp, "updated_at": stamp},
    )
    return turn_id


def add_upstream_call(conn: Connection, **values: object) -> str:
    """Insert one ``requests`` row; ``values`` are its columns (``id`` is generated when absent)."""
    values.setdefault("id", new_id("call"))
    row = {**_CALL_DEFAULTS, **values, "created_at": stored_time(values["created_at"])}  # type: ignore[arg-type]
    conn.execute(_INSERT_CALL, row)
    return str(values["id"])


_SET_LOCK = _sql(
    update(Conversation)
    .where(Conversation.id == bindparam("b_id"))
    .values({column: bindparam(f"b_{column.key}") for column in LOCK_COLUMNS})
)
_CLEAR_LOCK = _sql(
    update(Conversation)
    .where(Conversation.id == bindparam("b_id"), Conversation.lock_token == bindparam("b_token"))
    .values({**{column: null() for column in LOCK_COLUMNS}, Conversation.updated_at: bindparam("b_now")})
)
_EXTEND_LOCK = _sql(
    update(Conversation)
    .where(Conversation.id == bindparam("b_id"), Conversation.lock_token == bindparam("b_token"))
    .values(lock_expires_at=bindparam("b_expires"))
)


def set_reply_lock(conn: Connection, *, conversation_id: str, values: dict) -> None:
    """``values``: every ``lock_*`` column."""
    params = {"b_id": conversation_id, **{f"b_{key}": value for key, value in values.items()}}
    params["b_lock_expires_at"] = stored_time(params["b_lock_expires_at"])
    conn.execute(_SET_LOCK, params)


def clear_reply_lock(conn: Connection, *, conversation_id: str, token: str, now: datetime) -> None:
    """Unset the lock if ``token`` still holds it, and set ``updated_at``."""
    conn.execute(_CLEAR_LOCK, {"b_id": conversation_id, "b_token": token, "b_now": stored_time(now)})


def extend_reply_locks(conn: Connection, *, held: list[tuple[str, str]], expires_at: datetime) -> None:
    """Push back the expiry of each ``(conversation_id, token)`` lock that ``token`` still holds.

    By primary key: ``lock_token`` has no index, and a scan per lock (~11 ms each at 100,000 conversations)
    would block the event loop every renewal."""
    expires = stored_time(expires_at)
    conn.executemany(
        _EXTEND_LOCK,
        [{"b_id": conversation_id, "b_token": token, "b_expires": expires} for conversation_id, token in held],
    )
