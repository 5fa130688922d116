"""Tables, as SQLAlchemy 2 typed mappings. Alembic migrations own the real schema; these must match them
(a test compares them on both databases).

Ids are random and prefixed (``conv_``, ``turn_``, ``call_``, ``reply_``, ``tool_``) so they are safe to show
and say what they name. Times are naive UTC. Costs are integer nano-dollars (exact, 1e-9 USD resolution).
Content blocks are stored as JSON text, exactly as the API returned or the server sent them.

The ledger (``requests``) outlives content: a call keeps its owner and conversation id as plain values (no
foreign key), so deleting a conversation removes every piece of content and leaves the money on the books.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(15).replace('-', 'A').replace('_', 'z')}"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(100))
    system: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # The reply lease: which reply is being generated now, by whom, until when. See db/lease.py.
    lock_token: Mapped[str | None] = mapped_column(String(40))
    lock_machine: Mapped[str | None] = mapped_column(String(200))
    lock_pid: Mapped[int | None] = mapped_column(Integer)
    lock_pid_started: Mapped[str | None] = mapped_column(String(40))
    lock_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    lock_reply_id: Mapped[str | None] = mapped_column(String(40))
    # The reply that paused for approvals or client tool results, while its answers are awaited.
    pending_reply_id: Mapped[str | None] = mapped_column(String(40))
    # History before this turn is left out of the context window (moved in steps; see engine/context.py).
    context_from_seq: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_conversations_owner_created", "owner", "created_at", "id"),
        Index("ix_conversations_updated", "updated_at"),
    )


class Reply(Base):
    """One reply: a prompt (or answers to pending actions) and the steps that followed, run as one process."""

    __tablename__ = "replies"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(64))
    route: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    prompt_turn_id: Mapped[str | None] = mapped_column(String(40))
    turn_id: Mapped[str | None] = mapped_column(String(40))
    steps: Mapped[int] = mapped_column(Integer, default=0)
    stop_reason: Mapped[str | None] = mapped_column(String(64))
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    context: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_replies_conversation_created", "conversation_id", "created_at"),
        Index("ix_replies_status", "status"),
        Index("ix_replies_finished", "finished_at"),
    )


class Turn(Base):
    """One message of the conversation as the API sees it: a role and its content blocks."""

    __tablename__ = "turns"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    reply_id: Mapped[str | None] = mapped_column(String(40))
    seq: Mapped[int] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    # The text of the blocks, for display; ``content_blocks`` is what goes upstream.
    content: Mapped[str] = mapped_column(Text)
    content_blocks: Mapped[str | None] = mapped_column(Text)
    tokens: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (UniqueConstraint("conversation_id", "seq", name="uq_turns_conversation_seq"),)


class UpstreamCall(Base):
    """One upstream call (one step of a reply); the SDK's retries inside it are counted in ``attempts``."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(40))
    owner: Mapped[str | None] = mapped_column(String(64))
    reply_id: Mapped[str | None] = mapped_column(String(40))
    step: Mapped[int] = mapped_column(Integer, default=1)
    prompt_turn_id: Mapped[str | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"))
    turn_id: Mapped[str | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"))
    route: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(100))
    upstream_request_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(64))
    stop_reason: Mapped[str | None] = mapped_column(String(64))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_5m_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cache_write_1h_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    server_tool_uses: Mapped[int] = mapped_column(Integer, default=0)
    cost_nano_usd: Mapped[int | None] = mapped_column(BigInteger)
    cache_savings_nano_usd: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_requests_conversation_created", "conversation_id", "created_at"),
        Index("ix_requests_owner_created", "owner", "created_at"),
        Index("ix_requests_reply", "reply_id"),
    )


class ToolRun(Base):
    """One tool call the model asked for: its input, its decision (approvals), its result."""

    __tablename__ = "tool_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    reply_id: Mapped[str] = mapped_column(String(40))
    call_id: Mapped[str | None] = mapped_column(String(40))
    step: Mapped[int] = mapped_column(Integer)
    tool_use_id: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    input: Mapped[str] = mapped_column(Text)
    output: Mapped[str | None] = mapped_column(Text)
    is_error: Mapped[bool] = mapped_column(Boolean, default=False)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    # pending (awaiting a person or the client), done; decision: approved, denied, answered, superseded
    status: Mapped[str] = mapped_column(String(16))
    action: Mapped[str | None] = mapped_column(String(16))
    decision: Mapped[str | None] = mapped_column(String(16))
    decided_by: Mapped[str | None] = mapped_column(String(64))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_tool_runs_conversation", "conversation_id", "created_at"),
        Index("ix_tool_runs_reply", "reply_id"),
    )


class ReplyEvent(Base):
    """The numbered events of a reply, stored in batches, replayable by any worker or instance."""

    __tablename__ = "reply_events"

    reply_id: Mapped[str] = mapped_column(ForeignKey("replies.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class DailySpend(Base):
    """Each owner's cost per UTC day, kept in the transaction that records a call: budgets read one row a day."""

    __tablename__ = "daily_spend"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    cost_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)


class Notification(Base):
    """The notification channel between worker processes on one SQLite file (PostgreSQL uses NOTIFY)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(String(8000))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Lease(Base):
    """A named job that one process at a time may run (the retention sweeper), held until ``expires_at``."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime)
