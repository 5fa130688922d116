"""Tables, as SQLAlchemy 2 typed mappings. Alembic migrations own the real schema; these must match them.

Ids are random and prefixed (``conv_``, ``turn_``, ``call_``) so they are safe to show and say what they
name. Times are naive UTC. Costs are integer nano-dollars (exact, 1e-9 USD resolution).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # The reply lock: who is generating a reply now. See db/reply_lock.py.
    lock_token: Mapped[str | None] = mapped_column(String(40))
    lock_machine: Mapped[str | None] = mapped_column(String(200))
    lock_pid: Mapped[int | None] = mapped_column(Integer)
    lock_pid_started: Mapped[str | None] = mapped_column(String(40))
    lock_expires_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (Index("ix_conversations_owner_created", "owner", "created_at", "id"),)


class Turn(Base):
    __tablename__ = "turns"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    # Room for structured content (tool use, images): a JSON list of content blocks, when the text alone
    # does not say everything. NULL means "one text block holding ``content``".
    content_blocks: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (UniqueConstraint("conversation_id", "seq", name="uq_turns_conversation_seq"),)


class UpstreamCall(Base):
    """One reply asked of the upstream (the SDK's retries inside it are counted in ``attempts``)."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    prompt_turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"))
    turn_id: Mapped[str | None] = mapped_column(ForeignKey("turns.id", ondelete="SET NULL"))
    route: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(100))
    upstream_request_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(64))
    stop_reason: Mapped[str | None] = mapped_column(String(64))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_creation_input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_5m_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_1h_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_read_input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_nano_usd: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_requests_conversation_created", "conversation_id", "created_at"),)
