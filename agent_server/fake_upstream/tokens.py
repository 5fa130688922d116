"""Deterministic token counts for everything a request sends, and the prompt positions caching works on.

The fake must report input tokens, enforce a context window and model prompt caching the same way on every
call, and the server under test must be able to estimate the same numbers without a round trip. So the rule is
deliberately simple: about four characters a token, over every part of the prompt, in the order the API
processes it (tools → system → messages). Each tool, system block and message content block is one
*position*; a string `system` or message `content` is one text block. Characters per position:

- text: `len(text)`; thinking: `len(thinking)`; redacted_thinking: `len(data)`
- tool_use / server_tool_use: `len(name) + len(canonical(input))`
- tool_result: the characters of its content (a string, or its blocks counted by these same rules)
- a tool definition and any other block: `len(canonical(block))`

`canonical` is compact, key-sorted JSON with every `cache_control` key removed, so marking a breakpoint never
changes a count. A prefix of `c` characters is `ceil(c / 4)` tokens; the whole prompt is at least 1 token.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _strip(item) for key, item in value.items() if key != "cache_control"}
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def canonical(value: Any) -> str:
    """Compact, key-sorted JSON without `cache_control` keys: what counts and cache hashes are taken of."""
    return json.dumps(_strip(value), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def tokens_for(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _chars_of(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(canonical(value))


def content_chars(content: Any) -> int:
    """Characters of a `content` value: a string, a list of blocks, or nothing."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(block_chars(block) for block in content)
    return len(canonical(content))


def block_chars(block: Any) -> int:
    if not isinstance(block, dict):
        return _chars_of(block)
    kind = block.get("type")
    if kind == "text":
        return _chars_of(block.get("text", ""))
    if kind == "thinking":
        return _chars_of(block.get("thinking", ""))
    if kind == "redacted_thinking":
        return _chars_of(block.get("data", ""))
    if kind in ("tool_use", "server_tool_use"):
        return _chars_of(block.get("name", "")) + len(canonical(block.get("input", {})))
    if kind == "tool_result":
        return content_chars(block.get("content"))
    return len(canonical(block))


@dataclass(slots=True)
class Position:
    """One cacheable unit of the prompt, in processing order."""

    section: str  # "tools", "system" or "messages"
    number: int  # index in its section (the message's index for message blocks)
    index: int | None  # block index within a message or a system list; None for a tool or a string system
    chars: int
    block: Any  # as sent; a string system/content stays a string (`normalised` turns it into a text block)
    role: str | None = None
    cache_control: Any = None

    @property
    def path(self) -> str:
        """Where it is in the request, as the API names it in errors: tools.0, system.1, messages.2.content.0."""
        if self.section == "messages":
            return f"messages.{self.number}.content.{self.index or 0}"
        if self.section == "system":
            return "system" if self.index is None else f"system.{self.index}"
        return f"tools.{self.number}"

    def hash_input(self) -> str:
        """What the prompt cache hashes: the block (a string as a text block) with where it sits."""
        block = {"type": "text", "text": self.block} if isinstance(self.block, str) else self.block
        return canonical([self.section, self.number if self.section == "messages" else 0, self.role, block])


def _control(block: Any) -> Any:
    return block.get("cache_control") if isinstance(block, dict) else None


def positions(tools: Any, system: Any, messages: Any) -> list[Position]:
    out: list[Position] = []
    for number, tool in enumerate(tools if isinstance(tools, list) else []):
        out.append(Position("tools", number, None, len(canonical(tool)), tool, None, _control(tool)))
    if isinstance(system, str):
        out.append(Position("system", 0, None, len(system), system))
    elif isinstance(system, list):
        for index, block in enumerate(system):
            out.append(Position("system", 0, index, block_chars(block), block, None, _control(block)))
    for number, message in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict):
            continue
        role, content = message.get("role"), message.get("content")
        if isinstance(content, str):
            out.append(Position("messages", number, 0, len(content), content, role))
        elif isinstance(content, list):
            for index, block in enumerate(content):
                out.append(Position("messages", number, index, block_chars(block), block, role, _control(block)))
    return out


def total_tokens(prompt: list[Position]) -> int:
    """The whole prompt's input tokens: never zero."""
    return max(1, tokens_for(sum(position.chars for position in prompt)))


def count_input_tokens(system: Any, messages: Any, tools: Any = None) -> int:
    """Input tokens of a request's tools, system and messages, by the rule in this module's docstring."""
    return total_tokens(positions(tools, system, messages))
