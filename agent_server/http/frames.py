"""One encoder per surface, from the engine's numbered events: SSE bytes, WebSocket frames, the JSON reply."""

from __future__ import annotations

from ..engine.events import Numbered
from ..engine.reply import ReplyResult
from ..jsonenc import dumps


def sse(event: Numbered) -> bytes:
    """``id:``, ``event:`` and one ``data:`` line (JSON keeps newlines inside strings escaped)."""
    return f"id: {event.seq}\nevent: {event.name}\ndata: {event.json}\n\n".encode()


def ws(event: Numbered) -> str:
    """``{"type": <name>, "seq": N, ...data}``; an ``error`` keeps its envelope under ``error``."""
    head = f'{{"type":"{event.name}","seq":{event.seq}'
    return head + ("}" if event.json == "{}" else "," + event.json[1:])


def ws_frame(kind: str, data: dict) -> str:
    """A frame that belongs to no reply (session, history, errors about a frame): no ``seq``."""
    return dumps({"type": kind, **data})


def agent_response(result: ReplyResult) -> dict:
    """``POST /agent``: the ``done`` object, the text of every step, and the tool calls."""
    payload = dict(result.payload)
    head = {"conversation_id": payload.pop("conversation_id"), "turn_id": payload.pop("turn_id")}
    return {**head, "content": result.content, **payload, "tool_calls": result.tool_calls}
