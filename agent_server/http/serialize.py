"""JSON shapes of the API, built from service results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

from ..db.reads import ConversationRecord, Totals
from ..jsonenc import dumps
from ..money.prices import from_nano, to_nano


def timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds") + "Z"


def usd(value: Decimal | None) -> float | None:
    # Quantised to the stored 1e-9 resolution; a float prints these digits exactly (<= 15 significant).
    return None if value is None else float(from_nano(to_nano(value)))


def _json(text: str | None, default=None):  # type: ignore[no-untyped-def]
    return default if text is None else json.loads(text)


def turn(row, *, with_blocks: bool = True) -> dict:  # type: ignore[no-untyped-def]
    shaped = {
        "id": row.id,
        "seq": row.seq,
        "role": row.role,
        "content": row.content,
        "status": row.status,
        "reply_id": row.reply_id,
        "step": row.step,
        "created_at": timestamp(row.created_at),
    }
    if with_blocks:
        shaped["blocks"] = _json(row.content_blocks, [])
    return shaped


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


def reply_row(row, decided_at: datetime | None = None) -> dict:  # type: ignore[no-untyped-def]
    """``waited_ms``: how long a reply that paused for actions waited for their answers (``decided_at``: the
    last of its decisions; None while they are still awaited, and for a reply that did not pause)."""
    waited = None
    if decided_at is not None and row.finished_at is not None and row.status == "requires_action":
        waited = max(round((decided_at - row.finished_at).total_seconds() * 1000), 0)
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


def waited_of(value) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Per paused reply, how long it waited for its actions: from the pause to the last decision (or now)."""
    from ..db.models import utcnow

    spans: dict[str, tuple] = {}
    for run in value.tool_runs:
        if run.action is None:
            continue
        start, end = spans.get(run.reply_id, (run.created_at, None))
        decided = run.decided_at or utcnow()
        spans[run.reply_id] = (min(start, run.created_at), decided if end is None else max(end, decided))
    return {reply_id: round((end - start).total_seconds() * 1000) for reply_id, (start, end) in spans.items()}


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


def _decided(tool_runs) -> dict[str, datetime]:  # type: ignore[no-untyped-def]
    """The time of each paused reply's last decision, by reply id (for ``waited_ms``)."""
    decided: dict[str, datetime] = {}
    for run in tool_runs:
        if run.decided_at is not None:
            decided[run.reply_id] = max(decided.get(run.reply_id, run.decided_at), run.decided_at)
    return decided


def audit(value) -> dict:  # type: ignore[no-untyped-def]
    record = value.conversation
    decided = _decided(value.tool_runs)
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
        "replies": [reply_row(row, decided.get(row.id)) for row in value.replies],
        "totals": totals(value.totals),
    }


def audit_chunks(value) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The audit's JSON in pieces, each turn's stored blocks spliced in as they are (never decoded and encoded
    again): a long history is sent without one long, loop-holding encoding, in constant memory per turn."""
    payload = audit_head(value)
    yield dumps(payload)[:-1] + ',"turns":['
    for index, row in enumerate(value.turns):
        shaped = turn(row, with_blocks=False)
        yield ("," if index else "") + dumps(shaped)[:-1] + ',"blocks":' + (row.content_blocks or "[]") + "}"
    yield '],"requests":' + dumps([upstream_call(row) for row in value.calls])
    yield ',"tool_runs":' + dumps([tool_run(row) for row in value.tool_runs])
    decided = _decided(value.tool_runs)
    yield ',"replies":' + dumps([reply_row(row, decided.get(row.id)) for row in value.replies])
    yield ',"totals":' + dumps(totals(value.totals)) + "}"


def audit_head(value) -> dict:  # type: ignore[no-untyped-def]
    record = value.conversation
    return {"id": record.id, "owner": record.owner, "title": record.title, "model": record.model,
            "system": record.system, "created_at": timestamp(record.created_at),
            "updated_at": timestamp(record.updated_at)}


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
