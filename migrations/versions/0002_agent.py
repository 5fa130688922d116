"""version 2: replies, content blocks, steps, tool runs, reply events, daily spend; the ledger outlives content

Data: every v1 turn becomes one text block; every v1 exchange (a user turn and the assistant turn after it)
becomes a reply; every v1 call gains its reply, step 1 and its owner; daily spend is summed from the calls.

The ``requests`` table is rebuilt (create, copy, drop, rename: the same statements on SQLite and PostgreSQL)
because its foreign key to ``conversations`` goes: a deleted conversation's calls stay in the ledger.

Downgrade drops what v2 added. It is lossy where v1 had no place for a thing: tool blocks keep only their
text in ``content``, and calls of deleted conversations (which v1 cannot hold) are dropped.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence
import json
import math

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000
_CALL_STATUSES = "status IN ('ok', 'error', 'cancelled', 'running')"
_REPLY_STATUSES = ("status IN ('running', 'complete', 'requires_action', 'failed', 'cancelled', 'interrupted')")


def _requests_columns(v2: bool) -> list[sa.Column]:
    token = sa.BigInteger() if v2 else sa.Integer()
    columns = [
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("conversation_id", sa.String(40), nullable=False)
        if v2 else sa.Column("conversation_id", sa.String(40),
                             sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
    ]
    if v2:
        columns += [
            sa.Column("owner", sa.String(64), nullable=True),
            sa.Column("reply_id", sa.String(40), nullable=True),
            sa.Column("step", sa.Integer(), nullable=False, server_default="1"),
        ]
    columns += [
        sa.Column("prompt_turn_id", sa.String(40), sa.ForeignKey("turns.id", ondelete="SET NULL" if v2 else "CASCADE"),
                  nullable=v2),
        sa.Column("turn_id", sa.String(40), sa.ForeignKey("turns.id", ondelete="SET NULL"), nullable=True),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("upstream_request_id", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("stop_reason", sa.String(64), nullable=True),
        sa.Column("input_tokens", token, nullable=False, server_default="0"),
        sa.Column("output_tokens", token, nullable=False, server_default="0"),
        sa.Column("cache_creation_input_tokens", token, nullable=False, server_default="0"),
        sa.Column("cache_write_5m_tokens", token, nullable=True),
        sa.Column("cache_write_1h_tokens", token, nullable=True),
        sa.Column("cache_read_input_tokens", token, nullable=False, server_default="0"),
    ]
    if v2:
        columns.append(sa.Column("server_tool_uses", sa.Integer(), nullable=False, server_default="0"))
    columns += [sa.Column("cost_nano_usd", sa.BigInteger(), nullable=True)]
    if v2:
        columns.append(sa.Column("cache_savings_nano_usd", sa.BigInteger(), nullable=True))
    columns += [
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    ]
    return columns


_V1_CALL_COLUMNS = (
    "id, conversation_id, prompt_turn_id, turn_id, route, model, upstream_request_id, status, error_type, "
    "stop_reason, input_tokens, output_tokens, cache_creation_input_tokens, cache_write_5m_tokens, "
    "cache_write_1h_tokens, cache_read_input_tokens, cost_nano_usd, latency_ms, ttft_ms, attempts, created_at"
)


def _rebuild_requests(v2: bool) -> None:
    # A temporary name per direction: PostgreSQL keeps a renamed table's index names (its primary key's
    # "<name>_pkey"), so the two directions must not build under the same name.
    rebuilt = "requests_v2" if v2 else "requests_v1"
    op.create_table(
        rebuilt, *_requests_columns(v2),
        sa.CheckConstraint(_CALL_STATUSES if v2 else "status IN ('ok', 'error', 'cancelled')",
                           name="ck_requests_status"),
    )
    if v2:
        op.execute(f"INSERT INTO {rebuilt} ({_V1_CALL_COLUMNS}) SELECT {_V1_CALL_COLUMNS} FROM requests")
    else:
        op.execute(
            f"INSERT INTO {rebuilt} ({_V1_CALL_COLUMNS}) SELECT {_V1_CALL_COLUMNS} FROM requests "
            "WHERE prompt_turn_id IS NOT NULL AND status <> 'running' "
            "AND conversation_id IN (SELECT id FROM conversations)"
        )
    op.drop_index("ix_requests_conversation_created", table_name="requests")
    if v2:
        op.execute("DROP TABLE requests")
    else:
        op.drop_index("ix_requests_owner_created", table_name="requests")
        op.drop_index("ix_requests_reply", table_name="requests")
        op.execute("DROP TABLE requests")
    op.rename_table(rebuilt, "requests")
    op.create_index("ix_requests_conversation_created", "requests", ["conversation_id", "created_at"])
    if v2:
        op.create_index("ix_requests_owner_created", "requests", ["owner", "created_at"])
        op.create_index("ix_requests_reply", "requests", ["reply_id"])


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("title", sa.String(200), nullable=True))
        batch.add_column(sa.Column("lock_reply_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("pending_reply_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("context_from_seq", sa.Integer(), nullable=True))
    op.create_index("ix_conversations_updated", "conversations", ["updated_at"])
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("reply_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("step", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tokens", sa.Integer(), nullable=True))
    op.create_table(
        "replies",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("prompt_turn_id", sa.String(40), nullable=True),
        sa.Column("turn_id", sa.String(40), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("stop_reason", sa.String(64), nullable=True),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("context", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(_REPLY_STATUSES, name="ck_replies_status"),
    )
    op.create_index("ix_replies_conversation_created", "replies", ["conversation_id", "created_at"])
    op.create_index("ix_replies_status", "replies", ["status"])
    op.create_index("ix_replies_finished", "replies", ["finished_at"])
    _rebuild_requests(v2=True)
    op.create_table(
        "tool_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("reply_id", sa.String(40), nullable=False),
        sa.Column("call_id", sa.String(40), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("tool_use_id", sa.String(100), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("is_error", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=True),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("decided_by", sa.String(64), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_tool_runs_conversation", "tool_runs", ["conversation_id", "created_at"])
    op.create_index("ix_tool_runs_reply", "tool_runs", ["reply_id"])
    op.create_table(
        "reply_events",
        sa.Column("reply_id", sa.String(40), sa.ForeignKey("replies.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "daily_spend",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("cost_nano_usd", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(32), nullable=False),
        sa.Column("payload", sa.String(8000), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    _migrate_v1_data(op.get_bind())


def _migrate_v1_data(bind) -> None:
    turns = sa.table("turns", *(sa.column(c) for c in (
        "id", "conversation_id", "seq", "role", "content", "content_blocks", "status", "created_at", "updated_at",
        "reply_id", "step", "tokens")))
    conversations = sa.table("conversations", sa.column("id"), sa.column("owner"), sa.column("model"),
                             sa.column("title"))
    requests = sa.table("requests", *(sa.column(c) for c in (
        "id", "prompt_turn_id", "route", "model", "status", "error_type", "stop_reason", "owner", "reply_id", "step",
        "created_at", "cost_nano_usd", "conversation_id")))
    replies = sa.table("replies", *(sa.column(c) for c in (
        "id", "conversation_id", "owner", "route", "model", "status", "prompt_turn_id", "turn_id", "steps",
        "stop_reason", "error_type", "last_seq", "created_at", "finished_at")))
    owners = dict(bind.execute(sa.select(conversations.c.id, conversations.c.owner)).fetchall())
    models = dict(bind.execute(sa.select(conversations.c.id, conversations.c.model)).fetchall())
    calls = {row.prompt_turn_id: row for row in bind.execute(sa.select(requests))}
    last: tuple | None = None  # the previous turn of the same conversation, in (conversation, seq) order
    titles: dict[str, str] = {}
    pending_reply: dict | None = None
    block_updates: list[dict] = []
    new_replies: list[dict] = []

    def close_reply(assistant) -> None:
        nonlocal pending_reply
        if pending_reply is None:
            return
        call = calls.get(pending_reply["prompt_turn_id"])
        if assistant is not None:
            status = {"complete": "complete", "incomplete": "cancelled", "failed": "failed"}[assistant.status]
            pending_reply.update(turn_id=assistant.id, finished_at=assistant.updated_at)
        elif call is not None:
            status = {"ok": "complete", "error": "failed", "cancelled": "cancelled"}.get(call.status, "failed")
        else:
            status = "interrupted"
        if call is not None:
            pending_reply.update(route=call.route, model=call.model, steps=1, stop_reason=call.stop_reason,
                                 error_type=call.error_type)
        pending_reply["status"] = status
        new_replies.append(pending_reply)
        pending_reply = None

    rows = bind.execute(sa.select(turns).order_by(turns.c.conversation_id, turns.c.seq))
    for row in rows:
        blocks = row.content_blocks or json.dumps([{"type": "text", "text": row.content}], ensure_ascii=False,
                                                  separators=(",", ":"))
        update = {"b_id": row.id, "b_blocks": blocks, "b_tokens": math.ceil(len(blocks) / 4), "b_reply": None,
                  "b_step": None}
        same_conversation = last is not None and last[0] == row.conversation_id
        if row.role == "user":
            titles.setdefault(row.conversation_id, " ".join(row.content.split())[:80])
            close_reply(None)
            reply_id = "reply_" + row.id.removeprefix("turn_")
            pending_reply = {
                "id": reply_id, "conversation_id": row.conversation_id, "owner": owners[row.conversation_id],
                "route": "agent", "model": models[row.conversation_id], "status": "interrupted",
                "prompt_turn_id": row.id, "turn_id": None, "steps": 0, "stop_reason": None, "error_type": None,
                "last_seq": 0, "created_at": row.created_at, "finished_at": row.created_at,
            }
            update.update(b_reply=reply_id, b_step=0)
        elif pending_reply is not None and same_conversation and last[1] == row.seq - 1:
            update.update(b_reply=pending_reply["id"], b_step=1)
            close_reply(row)
        block_updates.append(update)
        last = (row.conversation_id, row.seq)
        if len(block_updates) >= BATCH:
            _flush_turns(bind, turns, block_updates)
    close_reply(None)
    _flush_turns(bind, turns, block_updates)
    for start in range(0, len(new_replies), BATCH):
        bind.execute(sa.insert(replies), new_replies[start:start + BATCH])
    reply_of = {r["prompt_turn_id"]: r["id"] for r in new_replies}
    updates = [{"b_id": call.id, "b_owner": owners.get(call.conversation_id), "b_reply": reply_of.get(call.prompt_turn_id)}
               for call in calls.values()]
    if updates:
        bind.execute(
            sa.update(requests).where(requests.c.id == sa.bindparam("b_id"))
            .values(owner=sa.bindparam("b_owner"), reply_id=sa.bindparam("b_reply"), step=1),
            updates,
        )
    _sum_daily_spend(bind, calls.values(), owners)
    if titles:
        bind.execute(
            sa.update(conversations).where(conversations.c.id == sa.bindparam("b_id"))
            .values(title=sa.bindparam("b_title")),
            [{"b_id": key, "b_title": value} for key, value in titles.items()],
        )


def _flush_turns(bind, turns, updates: list[dict]) -> None:
    if updates:
        bind.execute(
            sa.update(turns).where(turns.c.id == sa.bindparam("b_id")).values(
                content_blocks=sa.bindparam("b_blocks"), tokens=sa.bindparam("b_tokens"),
                reply_id=sa.bindparam("b_reply"), step=sa.bindparam("b_step"),
            ),
            updates,
        )
        updates.clear()


def _sum_daily_spend(bind, calls, owners: dict) -> None:
    totals: dict[tuple[str, str], int] = {}
    for call in calls:
        owner = owners.get(call.conversation_id)
        if owner is None or not call.cost_nano_usd:
            continue
        day = call.created_at.date().isoformat() if hasattr(call.created_at, "date") else str(call.created_at)[:10]
        totals[(owner, day)] = totals.get((owner, day), 0) + call.cost_nano_usd
    spend = sa.table("daily_spend", sa.column("owner"), sa.column("day"), sa.column("cost_nano_usd"))
    rows = [{"owner": owner, "day": day, "cost_nano_usd": cost} for (owner, day), cost in totals.items()]
    if rows:
        bind.execute(sa.insert(spend), rows)


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("notifications")
    op.drop_table("daily_spend")
    op.drop_table("reply_events")
    op.drop_index("ix_tool_runs_reply", table_name="tool_runs")
    op.drop_index("ix_tool_runs_conversation", table_name="tool_runs")
    op.drop_table("tool_runs")
    _rebuild_requests(v2=False)
    op.drop_index("ix_replies_finished", table_name="replies")
    op.drop_index("ix_replies_status", table_name="replies")
    op.drop_index("ix_replies_conversation_created", table_name="replies")
    op.drop_table("replies")
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("tokens")
        batch.drop_column("step")
        batch.drop_column("reply_id")
    op.execute("UPDATE turns SET content_blocks = NULL")
    op.drop_index("ix_conversations_updated", table_name="conversations")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("context_from_seq")
        batch.drop_column("pending_reply_id")
        batch.drop_column("lock_reply_id")
        batch.drop_column("title")
