"""Write-side repository functions: plain statements, no rules, run inside ``Database.write`` on the
writer thread. Each takes the transaction's synchronous ``conn`` and keyword-only arguments.

Statements are built with SQLAlchemy once, at import, and compiled to SQL text; the hot inserts and updates
then run as plain driver statements (``exec_driver_sql``), which skips SQLAlchemy's per-call statement and
type processing: a reply's two transactions went from ~360 to ~150 µs. Datetimes are therefore formatted
here, exactly as SQLAlchemy's SQLite ``DateTime`` stores them, so reads through SQLAlchemy parse them back.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, bindparam, insert, null, select, update
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
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")


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
_CONVERSATION_FOR_REPLY = select(Conversation.model, Conversation.system, *LOCK_COLUMNS).where(
    Conversation.id == bindparam("conversation_id"), Conversation.owner == bindparam("owner")
)
_TURNS_FOR_HISTORY = (
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
    conn.exec_driver_sql(_INSERT_CONVERSATION, values)
    return conversation_id


def conversation_for_reply(conn: Connection, *, conversation_id: str, owner: str):
    """The conversation's model, system and reply-lock columns, if it belongs to ``owner``."""
    return conn.execute(_CONVERSATION_FOR_REPLY, {"conversation_id": conversation_id, "owner": owner}).one_or_none()


def turns_for_history(conn: Connection, *, conversation_id: str) -> list:
    """(seq, role, status, content) of every turn, oldest first: the raw material of upstream history."""
    return list(conn.execute(_TURNS_FOR_HISTORY, {"conversation_id": conversation_id}))


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
    conn.exec_driver_sql(
        _UPSERT_TURN,
        {"id": turn_id, "conversation_id": conversation_id, "seq": seq, "role": role, "content": content,
         "content_blocks": None, "status": status, "created_at": stamp, "updated_at": stamp},
    )
    return turn_id


def add_upstream_call(conn: Connection, **values: object) -> str:
    """Insert one ``requests`` row; ``values`` are its columns (``id`` is generated when absent)."""
    values.setdefault("id", new_id("call"))
    row = {**_CALL_DEFAULTS, **values, "created_at": stored_time(values["created_at"])}  # type: ignore[arg-type]
    conn.exec_driver_sql(_INSERT_CALL, row)
    return str(values["id"])


_SET_LOCK = (
    update(Conversation)
    .where(Conversation.id == bindparam("b_id"))
    .values({column: bindparam(f"b_{column.key}") for column in LOCK_COLUMNS})
)
_CLEAR_LOCK = _sql(
    update(Conversation)
    .where(Conversation.id == bindparam("b_id"), Conversation.lock_token == bindparam("b_token"))
    .values({**{column: null() for column in LOCK_COLUMNS}, Conversation.updated_at: bindparam("b_now")})
)
_EXTEND_LOCKS = (
    update(Conversation)
    .where(Conversation.lock_token.in_(bindparam("b_tokens", expanding=True)))
    .values(lock_expires_at=bindparam("b_expires"))
)


def set_reply_lock(conn: Connection, *, conversation_id: str, values: dict) -> None:
    """``values``: every ``lock_*`` column."""
    conn.execute(_SET_LOCK, {"b_id": conversation_id, **{f"b_{key}": value for key, value in values.items()}})


def clear_reply_lock(conn: Connection, *, conversation_id: str, token: str, now: datetime) -> None:
    """Unset the lock if ``token`` still holds it, and set ``updated_at``."""
    conn.exec_driver_sql(_CLEAR_LOCK, {"b_id": conversation_id, "b_token": token, "b_now": stored_time(now)})


def extend_reply_locks(conn: Connection, *, tokens: list[str], expires_at: datetime) -> None:
    conn.execute(_EXTEND_LOCKS, {"b_tokens": tokens, "b_expires": expires_at})
