"""conversations, turns and requests (one row per upstream call)

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("lock_token", sa.String(40), nullable=True),
        sa.Column("lock_machine", sa.String(200), nullable=True),
        sa.Column("lock_pid", sa.Integer(), nullable=True),
        sa.Column("lock_pid_started", sa.String(40), nullable=True),
        sa.Column("lock_expires_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_conversations_owner_created", "conversations", ["owner", "created_at", "id"])
    op.create_table(
        "turns",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_blocks", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("conversation_id", "seq", name="uq_turns_conversation_seq"),
        sa.CheckConstraint("role IN ('user', 'assistant')", name="ck_turns_role"),
        sa.CheckConstraint("status IN ('complete', 'incomplete', 'failed')", name="ck_turns_status"),
    )
    op.create_table(
        "requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("prompt_turn_id", sa.String(40), sa.ForeignKey("turns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("turn_id", sa.String(40), sa.ForeignKey("turns.id", ondelete="SET NULL"), nullable=True),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("upstream_request_id", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("stop_reason", sa.String(64), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cache_creation_input_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cache_write_5m_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_write_1h_tokens", sa.Integer(), nullable=True),
        sa.Column("cache_read_input_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost_nano_usd", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("status IN ('ok', 'error', 'cancelled')", name="ck_requests_status"),
    )
    op.create_index("ix_requests_conversation_created", "requests", ["conversation_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_conversation_created", table_name="requests")
    op.drop_table("requests")
    op.drop_table("turns")
    op.drop_index("ix_conversations_owner_created", table_name="conversations")
    op.drop_table("conversations")
