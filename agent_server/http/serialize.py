"""JSON shapes of API.md, built from service results."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ..db.repository import ConversationRecord, Totals
from ..pricing import from_nano, to_nano
from ..reply import ReplyOutcome


def timestamp(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds") + "Z"


def usd(value: Decimal | None) -> float | None:
    # Quantised to the stored 1e-9 resolution; a float prints these digits exactly (<= 15 significant).
    return None if value is None else float(from_nano(to_nano(value)))


def done_payload(outcome: ReplyOutcome) -> dict:
    usage = outcome.usage
    return {
        "conversation_id": outcome.conversation_id,
        "turn_id": outcome.turn_id,
        "model": outcome.model,
        "stop_reason": outcome.stop_reason,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
        },
        "estimated_cost_usd": usd(outcome.cost_usd),
    }


def agent_response(outcome: ReplyOutcome) -> dict:
    payload = done_payload(outcome)
    return {"conversation_id": payload.pop("conversation_id"), "turn_id": payload.pop("turn_id"),
            "content": outcome.content, **payload}


def turn(row) -> dict:
    return {
        "id": row.id,
        "seq": row.seq,
        "role": row.role,
        "content": row.content,
        "status": row.status,
        "created_at": timestamp(row.created_at),
    }


def upstream_call(row) -> dict:
    return {
        "id": row.id,
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
        "cost_usd": usd(from_nano(row.cost_nano_usd)),
        "latency_ms": row.latency_ms,
        "ttft_ms": row.ttft_ms,
        "attempts": row.attempts,
        "created_at": timestamp(row.created_at),
    }


def totals(value: Totals) -> dict:
    return {
        "requests": value.requests,
        "input_tokens": value.input_tokens,
        "output_tokens": value.output_tokens,
        "cache_creation_input_tokens": value.cache_creation_input_tokens,
        "cache_read_input_tokens": value.cache_read_input_tokens,
        "cost_usd": usd(from_nano(value.cost_nano_usd)),
    }


def conversation_summary(record: ConversationRecord, value: Totals) -> dict:
    return {
        "id": record.id,
        "model": record.model,
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
        "totals": totals(value),
    }
