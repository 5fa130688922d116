"""JSON shapes of the API, built from service results."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

from ..db.reads import ConversationRecord, Totals
from ..money.prices import from_nano, to_nano


def timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def usd(value: Decimal | None) -> float | None:
    # Quantised to the stored 1e-9 resolution; a float prints these digits exactly (<= 15 significant).
    return None if value is None else float(from_nano(to_nano(value)))


def _json(text: str | None, default=None):  # type: ignore[no-untyped-def]
    return default if text is None else json.loads(text)


def turn(row) -> dict:  # type: ignore[no-untyped-def]
    return {
        "id": row.id,
        "seq": row.seq,
        "role": row.role,
        "content": row.content,
        "blocks": _json(row.content_blocks, []),
        "status": row.status,
        "reply_id": row.reply_id,
        "step": row.step,
        "created_at": timestamp(row.created_at),
    }


def upstream_call(row) -> dict:  # type: ignore[no-untyped-def]
    return {
        "id": row.id,
        "reply_id": row.reply_id,
        "step": row.step,
        "turn_id": row.turn_id,
        "prompt_turn_id": row.prompt_turn_id,
        "route": row.route,
        "model": row.model,
        "upstream_request_id": row.upstream_request_id,
        "status": row.status,
        "error_type": row.error_type,
        "stop_reason": row.stop_reason,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_creation_input_tokens": row.cache_creation_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": row.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": row.cache_write_1h_tokens,
        },
        "cache_read_input_tokens": row.cache_read_input_tokens,
        "server_tool_uses": row.server_tool_uses,
        "cost_usd": usd(from_nano(row.cost_nano_usd)),
        "cache_savings_usd": usd(from_nano(row.cache_savings_nano_usd)),
        "latency_ms": row.latency_ms,
        "ttft_ms": row.ttft_ms,
        "attempts": row.attempts,
        "created_at": timestamp(row.created_at),
    }


def tool_run(row) -> dict:  # type: ignore[no-untyped-def]
    return {
        "id": row.id,
        "reply_id": row.reply_id,
        "step": row.step,
        "tool_use_id": row.tool_use_id,
        "name": row.name,
        "kind": row.kind,
        "input": _json(row.input, {}),
        "output": _json(row.output),
        "is_error": bool(row.is_error),
        "duration_ms": row.duration_ms,
        "status": row.status,
        "action": row.action,
        "decision": row.decision,
        "decided_by": row.decided_by,
        "decided_at": timestamp(row.decided_at),
        "reason": row.reason,
        "created_at": timestamp(row.created_at),
    }


def reply_row(row) -> dict:  # type: ignore[no-untyped-def]
    waited = None
    return {
        "id": row.id,
        "status": row.status,
        "route": row.route,
        "model": row.model,
        "prompt_turn_id": row.prompt_turn_id,
        "turn_id": row.turn_id,
        "steps": row.steps,
        "stop_reason": row.stop_reason,
        "error_type": row.error_type,
        "context": _json(row.context),
        "created_at": timestamp(row.created_at),
        "finished_at": timestamp(row.finished_at),
        "waited_ms": waited,
    }


def totals(value: Totals) -> dict:
    return {
        "requests": value.requests,
        "input_tokens": value.input_tokens,
        "output_tokens": value.output_tokens,
        "cache_creation_input_tokens": value.cache_creation_input_tokens,
        "cache_read_input_tokens": value.cache_read_input_tokens,
        "server_tool_uses": value.server_tool_uses,
        "cost_usd": usd(from_nano(value.cost_nano_usd)),
        "cache_savings_usd": usd(from_nano(value.cache_savings_nano_usd)),
    }


def conversation_summary(record: ConversationRecord, value: Totals) -> dict:
    return {
        "id": record.id,
        "title": record.title,
        "model": record.model,
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
        "totals": totals(value),
    }


def audit(value) -> dict:  # type: ignore[no-untyped-def]
    record = value.conversation
    return {
        "id": record.id,
        "owner": record.owner,
        "title": record.title,
        "model": record.model,
        "system": record.system,
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
        "turns": [turn(row) for row in value.turns],
        "requests": [upstream_call(row) for row in value.calls],
        "tool_runs": [tool_run(row) for row in value.tool_runs],
        "replies": [reply_row(row) for row in value.replies],
        "totals": totals(value.totals),
    }


def reply_status(status) -> dict:  # type: ignore[no-untyped-def]
    t = status.totals
    return {
        "reply_id": status.reply_id,
        "conversation_id": status.conversation_id,
        "status": status.status,
        "turn_id": status.turn_id,
        "steps": status.steps,
        "last_seq": status.last_seq,
        "usage": {"input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
                  "cache_creation_input_tokens": t.cache_creation_input_tokens,
                  "cache_read_input_tokens": t.cache_read_input_tokens, "server_tool_uses": t.server_tool_uses},
        "estimated_cost_usd": usd(from_nano(t.cost_nano_usd)),
        "created_at": timestamp(status.created_at),
        "finished_at": timestamp(status.finished_at),
    }
