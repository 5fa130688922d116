"""Content blocks on the wire: each block of a reply, whole (non-streamed) and as its SSE events.

A `PlannedBlock` is one block exactly as a non-streamed reply carries it, plus the fragments its stream
sends as deltas. The event shapes follow what the anthropic SDK accumulates: a `tool_use` or
`server_tool_use` block starts with `input: {}` and its JSON arrives in `input_json_delta` fragments; a
`thinking` block starts empty (`thinking: ""`, `signature: ""`), gets `thinking_delta`s, then one
`signature_delta` right before its stop; other blocks (redacted thinking, web search results) arrive whole
in their `content_block_start`.

Every streamed chunk is tagged with its kind: `TEXT` (a text delta: paced, counted by the faults that fire
"after k text deltas"), `DELTA` (another content delta: paced) or `META` (sent at once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import wire

TEXT, DELTA, META = "text", "delta", "meta"
Chunk = tuple[bytes, str]


@dataclass(frozen=True)
class PlannedBlock:
    block: dict[str, Any]
    fragments: tuple[str, ...] = field(default=())


def text_block(tokens: Sequence[str]) -> PlannedBlock:
    return PlannedBlock({"type": "text", "text": "".join(tokens)}, tuple(tokens))


def json_fragments(text: str) -> tuple[str, ...]:
    """A tool input's JSON cut into at least two pieces, as the API streams it."""
    count = max(2, min(8, math.ceil(len(text) / 16)))
    size = max(1, math.ceil(len(text) / count))
    return tuple(text[start : start + size] for start in range(0, len(text), size))


def _delta(index: int, delta: Mapping[str, Any]) -> bytes:
    return wire.sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def block_events(index: int, planned: PlannedBlock) -> list[Chunk]:
    block, kind = planned.block, planned.block["type"]
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [(_delta(index, {"type": "text_delta", "text": piece}), TEXT) for piece in planned.fragments]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [(_delta(index, {"type": "thinking_delta", "thinking": piece}), DELTA) for piece in planned.fragments]
        deltas.append((_delta(index, {"type": "signature_delta", "signature": block["signature"]}), META))
    elif kind in ("tool_use", "server_tool_use"):
        start = {**block, "input": {}}
        deltas = [(_delta(index, {"type": "input_json_delta", "partial_json": piece}), DELTA)
                  for piece in planned.fragments]
    else:
        start, deltas = block, []
    begin = {"type": "content_block_start", "index": index, "content_block": start}
    stop = {"type": "content_block_stop", "index": index}
    return [
        (wire.sse_event("content_block_start", begin), META),
        *deltas,
        (wire.sse_event("content_block_stop", stop), META),
    ]


def message_events(
    *,
    message_id: str,
    model: str,
    start_usage: Mapping[str, Any],
    usage: Mapping[str, Any],
    blocks: Sequence[PlannedBlock],
    stop_reason: str,
) -> list[Chunk]:
    """Every chunk of a streamed reply: message_start, each block's events, message_delta, message_stop."""
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": dict(start_usage),
    }
    chunks: list[Chunk] = [(wire.sse_event("message_start", {"type": "message_start", "message": message}), META)]
    for index, planned in enumerate(blocks):
        chunks.extend(block_events(index, planned))
    tail = wire.stream_tail(usage=usage, stop_reason=stop_reason)[1:]  # its block stop is already in there
    chunks.extend((chunk, META) for chunk in tail)
    return chunks
