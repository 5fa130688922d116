"""Read-side statements: plain async queries, no rules. Each takes the connection of the caller's read (or write)
transaction and keyword-only arguments, and returns rows or small frozen records."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import and_, func, select, tuple_

from .models import Conversation, DailySpend, Reply, ReplyEvent, ToolRun, Turn, UpstreamCall

TOTAL_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_uses",
)


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    owner: str
    model: str
    system: str | None
    title: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    server_tool_uses: int = 0
    cost_nano_usd: int = 0
    cache_savings_nano_usd: int = 0


class HistoryRow(NamedTuple):
    """A turn as history needs it: ``blocks`` is the stored JSON text of its content blocks. A tuple, built by
    ``_make`` straight from the row: a 1,000-turn history spent more time in a frozen dataclass's ``__init__`` than
    SQLite spent reading it."""

    seq: int
    role: str
    status: str
    blocks: str
    tokens: int
    reply_id: str | None
    reply_status: str | None
    step: int | None


_CONVERSATION_COLUMNS = (
    Conversation.id, Conversation.owner, Conversation.model, Conversation.system, Conversation.title,
    Conversation.created_at, Conversation.updated_at,
)


async def get_conversation(conn, *, conversation_id: str, owner: str) -> ConversationRecord | None:
    """The conversation if it exists and belongs to ``owner``; None either way otherwise."""
    row = (await conn.execute(
        select(*_CONVERSATION_COLUMNS).where(Conversation.id == conversation_id, Conversation.owner == owner)
    )).one_or_none()
    return None if row is None else ConversationRecord(*row)


async def history(conn, *, conversation_id: str, from_seq: int | None, before_seq: int) -> list[HistoryRow]:
    """Turns ``from_seq <= seq < before_seq``, oldest first, with the status of the reply each belongs to."""
    query = (
        select(Turn.seq, Turn.role, Turn.status, func.coalesce(Turn.content_blocks, "[]"),
               func.coalesce(Turn.tokens, 0), Turn.reply_id, Reply.status, Turn.step)
        .outerjoin(Reply, Reply.id == Turn.reply_id)
        .where(Turn.conversation_id == conversation_id, Turn.seq < before_seq)
        .order_by(Turn.seq)
    )
    if from_seq is not None:
        query = query.where(Turn.seq >= from_seq)
    # ``all()`` fetches every row at once (iterating the result fetches them one by one).
    return list(map(HistoryRow._make, (await conn.execute(query)).all()))


async def list_turns(conn, *, conversation_id: str, before_seq: int | None = None, limit: int | None = None) -> list:
    """Turns for the audit, oldest first; with ``limit``, the newest ``limit`` before ``before_seq``."""
    query = select(Turn.id, Turn.seq, Turn.role, Turn.content, Turn.content_blocks, Turn.status, Turn.reply_id,
                   Turn.step, Turn.created_at).where(Turn.conversation_id == conversation_id)
    if before_seq is not None:
        query = query.where(Turn.seq < before_seq)
    if limit is None:
        return list(await conn.execute(query.order_by(Turn.seq)))
    rows = list(await conn.execute(query.order_by(Turn.seq.desc()).limit(limit)))
    rows.reverse()
    return rows


@dataclass
class AuditRows:
    """The rows of some conversations' audits, by conversation id, each list in the audit's order."""

    turns: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    calls: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    tool_runs: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    replies: dict[str, list] = field(default_factory=lambda: defaultdict(list))


async def audit_rows(conn, *, conversation_ids: list[str]) -> AuditRows:  # type: ignore[no-untyped-def]
    """Every table of these conversations' audits, each read once for all of them."""
    rows = AuditRows()
    for target, query in (
        (rows.turns, select(Turn.id, Turn.seq, Turn.role, Turn.content, Turn.content_blocks, Turn.status,
                            Turn.reply_id, Turn.step, Turn.created_at, Turn.conversation_id)
         .where(Turn.conversation_id.in_(conversation_ids)).order_by(Turn.conversation_id, Turn.seq)),
        (rows.calls, select(UpstreamCall).where(UpstreamCall.conversation_id.in_(conversation_ids))
         .order_by(UpstreamCall.created_at, UpstreamCall.step)),
        (rows.tool_runs, select(ToolRun).where(ToolRun.conversation_id.in_(conversation_ids))
         .order_by(ToolRun.created_at, ToolRun.step, ToolRun.id)),
        (rows.replies, select(Reply).where(Reply.conversation_id.in_(conversation_ids)).order_by(Reply.created_at)),
    ):
        for row in await conn.execute(query):
            target[row.conversation_id].append(row)
    return rows


async def content_sizes(conn, *, conversation_ids: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Characters of turn content (text and blocks) per conversation."""
    return {conversation_id: int(size or 0) for conversation_id, size in await conn.execute(
        select(Turn.conversation_id, func.sum(func.length(Turn.content) + func.coalesce(
            func.length(Turn.content_blocks), 0)))
        .where(Turn.conversation_id.in_(conversation_ids)).group_by(Turn.conversation_id))}


async def list_conversations(conn, *, owner: str, limit: int, before: tuple[datetime, str] | None,
                             ) -> list[ConversationRecord]:
    """Newest first; ties on ``created_at`` broken by id so the order (and the cursor) is stable."""
    query = select(*_CONVERSATION_COLUMNS).where(Conversation.owner == owner)
    if before is not None:
        query = query.where(tuple_(Conversation.created_at, Conversation.id) < tuple_(*before))
    query = query.order_by(Conversation.created_at.desc(), Conversation.id.desc()).limit(limit)
    return [ConversationRecord(*row) for row in await conn.execute(query)]


def _total_columns():  # type: ignore[no-untyped-def]
    return [
        func.count(UpstreamCall.id),
        *(func.coalesce(func.sum(getattr(UpstreamCall, name)), 0) for name in TOTAL_COLUMNS),
        func.coalesce(func.sum(UpstreamCall.cost_nano_usd), 0),
        func.coalesce(func.sum(UpstreamCall.cache_savings_nano_usd), 0),
    ]


async def totals_by_conversation(conn, *, conversation_ids: list[str]) -> dict[str, Totals]:
    if not conversation_ids:
        return {}
    result = await conn.execute(
        select(UpstreamCall.conversation_id, *_total_columns())
        .where(UpstreamCall.conversation_id.in_(conversation_ids))
        .group_by(UpstreamCall.conversation_id)
    )
    return {row[0]: Totals(*(int(v) for v in row[1:])) for row in result}


async def totals_by_reply(conn, *, reply_id: str) -> Totals:
    row = (await conn.execute(select(*_total_columns()).where(UpstreamCall.reply_id == reply_id))).one()
    return Totals(*(int(v) for v in row))


async def get_reply(conn, *, reply_id: str, owner: str | None = None):  # type: ignore[no-untyped-def]
    query = select(Reply).where(Reply.id == reply_id)
    if owner is not None:
        query = query.where(Reply.owner == owner)
    return (await conn.execute(query)).one_or_none()


async def events_after(conn, *, reply_id: str, after: int, limit: int = 500) -> list:
    """``(seq, type, data)`` of the reply's stored events after ``after``, in order."""
    return list(await conn.execute(
        select(ReplyEvent.seq, ReplyEvent.type, ReplyEvent.data)
        .where(ReplyEvent.reply_id == reply_id, ReplyEvent.seq > after)
        .order_by(ReplyEvent.seq).limit(limit)))


async def last_event(conn, *, reply_id: str):  # type: ignore[no-untyped-def]
    return (await conn.execute(
        select(ReplyEvent.seq, ReplyEvent.type, ReplyEvent.data).where(ReplyEvent.reply_id == reply_id)
        .order_by(ReplyEvent.seq.desc()).limit(1))).one_or_none()


async def spend_between(conn, *, owner: str, first_day: str, last_day: str) -> int:
    """Nano-dollars ``owner`` spent on the UTC days ``first_day..last_day`` (ISO dates, inclusive)."""
    value = (await conn.execute(
        select(func.coalesce(func.sum(DailySpend.cost_nano_usd), 0))
        .where(DailySpend.owner == owner, and_(DailySpend.day >= first_day, DailySpend.day <= last_day)))).scalar()
    return int(value or 0)


async def running_replies(conn) -> list:  # type: ignore[no-untyped-def]
    """Every reply stored as running, with its conversation's lease columns (for the interrupted sweep)."""
    return list(await conn.execute(
        select(Reply.id, Reply.conversation_id, Conversation.lock_reply_id, Conversation.lock_token,
               Conversation.lock_machine, Conversation.lock_pid, Conversation.lock_pid_started,
               Conversation.lock_expires_at)
        .join(Conversation, Conversation.id == Reply.conversation_id)
        .where(Reply.status == "running")))


async def last_call_usage(conn, *, conversation_id: str):  # type: ignore[no-untyped-def]
    """(input, cache read, cache creation, output) tokens of the conversation's latest successful call, or None."""
    return (await conn.execute(
        select(UpstreamCall.input_tokens, UpstreamCall.cache_read_input_tokens,
               UpstreamCall.cache_creation_input_tokens, UpstreamCall.output_tokens)
        .where(UpstreamCall.conversation_id == conversation_id, UpstreamCall.status == "ok")
        .order_by(UpstreamCall.created_at.desc(), UpstreamCall.step.desc()).limit(1))).one_or_none()


async def count_turns(conn, *, conversation_id: str, before_seq: int) -> int:
    return int((await conn.execute(select(func.count(Turn.id)).where(
        Turn.conversation_id == conversation_id, Turn.seq < before_seq))).scalar() or 0)


async def running_reply_of(conn, *, conversation_id: str) -> str | None:
    return (await conn.execute(select(Reply.id).where(Reply.conversation_id == conversation_id,
                                                      Reply.status == "running")
                               .order_by(Reply.created_at.desc()).limit(1))).scalar()


async def list_conversations_ascending(conn, *, owner: str, limit: int, after: tuple[datetime, str] | None,
                                       ) -> list[ConversationRecord]:
    """Oldest first, after the ``(created_at, id)`` cursor: how an export walks every conversation."""
    query = select(*_CONVERSATION_COLUMNS).where(Conversation.owner == owner)
    if after is not None:
        query = query.where(tuple_(Conversation.created_at, Conversation.id) > tuple_(*after))
    query = query.order_by(Conversation.created_at, Conversation.id).limit(limit)
    return [ConversationRecord(*row) for row in await conn.execute(query)]


async def pending_runs(conn, *, conversation_id: str) -> list:
    """The pending tool runs of the conversation's paused reply, in the order they were stored."""
    return list(await conn.execute(
        select(ToolRun).join(Conversation, Conversation.pending_reply_id == ToolRun.reply_id)
        .where(Conversation.id == conversation_id, ToolRun.status == "pending")
        .order_by(ToolRun.created_at, ToolRun.id)))
