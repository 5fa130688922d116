"""Content blocks, the domain type: what a turn stores and what goes upstream, exactly as the API returned them or
the server built them. Stored and sent as compact JSON text; the text of a turn is derived from its blocks."""

from __future__ import annotations

import json
import math
from typing import Any

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
TOOL_CALLS = ("tool_use",)
SERVER_CALLS = ("server_tool_use", "mcp_tool_use")
UNCACHEABLE = ("thinking", "redacted_thinking")


def encode(value: Any) -> str:
    return _ENCODER.encode(value)


def text_blocks(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


def text_of(blocks: list[dict]) -> str:
    """What a person reads of a turn: its text blocks, in order."""
    return "".join(block.get("text", "") for block in blocks if block.get("type") == "text")


def tool_calls(blocks: list[dict]) -> list[dict]:
    """The client-side tool calls (``tool_use``) of an assistant message, in order."""
    return [block for block in blocks if block.get("type") in TOOL_CALLS]


def is_empty(blocks: list[dict]) -> bool:
    """True when the API would refuse the message: no blocks, or only text blocks of whitespace."""
    return all(block.get("type") == "text" and not block.get("text", "").strip() for block in blocks)


def without_blank_text(blocks: list[dict]) -> list[dict]:
    """A model's message as it can go back: the API refuses text blocks of whitespace only (a model may write
    "\n\n" before a tool call), so those are left out; every other block stays exactly as it came."""
    if all(block.get("type") != "text" or block.get("text", "").strip() for block in blocks):
        return blocks
    return [block for block in blocks if block.get("type") != "text" or block.get("text", "").strip()]


def as_final(blocks: list[dict]) -> list[dict]:
    """A message sent back as the request's last one (after ``pause_turn``): the API refuses final assistant
    content that ends in whitespace, so a last text block loses its trailing whitespace."""
    if blocks and blocks[-1].get("type") == "text" and blocks[-1]["text"] != blocks[-1]["text"].rstrip():
        return [*blocks[:-1], {**blocks[-1], "text": blocks[-1]["text"].rstrip()}]
    return blocks


def estimate_tokens(blocks_json: str) -> int:
    """A deterministic estimate of a message's input tokens: about four characters a token.

    Counted on the JSON text, which over-counts a little (keys and quotes): the safe side for a context window.
    The previous call's real ``input_tokens`` calibrate it (engine/context.py).
    """
    return max(1, math.ceil(len(blocks_json) / 4))


def message_json(role: str, blocks_json: str) -> str:
    """One Messages API message, from stored block JSON, without decoding it."""
    return f'{{"role":"{role}","content":{blocks_json}}}'


def join_blocks(first: str, second: str) -> str:
    """Two JSON arrays of blocks as one (consecutive messages of one role are one message to the API)."""
    if first == "[]":
        return second
    if second == "[]":
        return first
    return first[:-1] + "," + second[1:]


def tool_result_block(tool_use_id: str, content: str | list, is_error: bool) -> dict:
    block: dict = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}
    if is_error:
        block["is_error"] = True
    return block


def result_text(content: str | list) -> str:
    """A tool result's content as text (JSON text for anything structured)."""
    if isinstance(content, str):
        return content
    texts = [item.get("text", "") for item in content if isinstance(item, dict) and item.get("type") == "text"]
    if len(texts) == len(content):
        return "".join(texts)
    return encode(content)
