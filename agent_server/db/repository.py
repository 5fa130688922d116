"""Read-side repository functions: plain async queries, no rules. Each takes the connection of the
caller's read transaction (``conn``) and keyword-only arguments. Writes are in ``writes.py``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from .models import Conversation, Turn, UpstreamCall

TOTAL_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    owner: str
    model: str
    system: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_nano_usd: int = 0


_CONVERSATION_COLUMNS = (
    Conversation.id,
    Conversation.owner,
    Conversation.model,
    Conversation.system,
    Conversation.created_at,
    Conversation.updated_at,
)


async def get_conversation(
    conn: AsyncConnection, *, conversation_id: str, owner: str
) -> ConversationRecord | None:
    """The conversation if it exists and belongs to ``owner``; None either way otherwise."""
    row = (
        await conn.execute(
            select(*_CONVERSATION_COLUMNS).where(Conversation.id == conversation_id, Conversation.owner == owner)
        )
    ).one_or_none()
    return None if row is None else ConversationRecord(*row)


async def list_turns(conn: AsyncConnection, *, conversation_id: str) -> list:
    result = await conn.execute(
        select(Turn.id, Turn.seq, Turn.role, Turn.content, Turn.status, Turn.created_at)
        .where(Turn.conversation_id == conversation_id)
        .order_by(Turn.seq)
    )
    return list(result)


async def list_upstream_calls(conn: AsyncConnection, *, conversation_id: str) -> list:
    result = await conn.execute(
        select(UpstreamCall).where(UpstreamCall.conversation_id == conversation_id).order_by(UpstreamCall.created_at)
    )
    return list(result)


async def list_conversations(
    conn: AsyncConnection, *, owner: str, limit: int, before: tuple[datetime, str] | None
) -> list[ConversationRecord]:
    """Newest first; ties on ``created_at`` broken by id so the order (and the cursor) is stable."""
    query = select(*_CONVERSATION_COLUMNS).where(Conversation.owner == owner)
    if before is not None:
        query = query.where(tuple_(Conversation.created_at, Conversation.id) < tuple_(*before))
    query = query.order_by(Conversation.created_at.desc(), Conversation.id.desc()).limit(limit)
    return [ConversationRecord(*row) for row in await conn.execute(query)]


async def totals_by_conversation(conn: AsyncConnection, *, conversation_ids: list[str]) -> dict[str, Totals]:
    if not conversation_ids:
        return {}
    columns = [func.coalesce(func.sum(getattr(UpstreamCall, name)), 0) for name in TOTAL_COLUMNS]
    result = await conn.execute(
        select(
            UpstreamCall.conversation_id,
            func.count(UpstreamCall.id),
            *columns,
            func.coalesce(func.sum(UpstreamCall.cost_nano_usd), 0),
        )
        .where(UpstreamCall.conversation_id.in_(conversation_ids))
        .group_by(UpstreamCall.conversation_id)
    )
    return {row[0]: Totals(*row[1:]) for row in result}
