"""One step's upstream request: the messages so far, the tools, and the prompt-cache breakpoints.

Prompt caching (``AGENT_PROMPT_CACHE``): the prefix is tools → system → messages. Breakpoints go on the last tool,
on the system prompt, on the last message of the previous request (what the previous call wrote to the cache:
this one reads it) and on the last message (what this call writes for the next): at most four, always at the same
places for the same prefix, so each reply reads what the last one wrote. Thinking blocks cannot carry one: the
breakpoint goes on the message's last other block. ``off`` sends none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..upstream.client import UpstreamRequest
from . import blocks as b

MAX_BREAKPOINTS = 4


@dataclass(frozen=True)
class CachePolicy:
    ttl: str | None  # None: off; "5m" or "1h"

    @property
    def marker(self) -> dict | None:
        if self.ttl is None:
            return None
        return {"type": "ephemeral"} if self.ttl == "5m" else {"type": "ephemeral", "ttl": self.ttl}


def _mark_message(message_json: str, marker: dict) -> str:
    message = json.loads(message_json)
    content = message["content"]
    for block in reversed(content):
        if block.get("type") not in b.UNCACHEABLE:
            block["cache_control"] = marker
            return b.encode(message)
    return message_json


def build(*, model: str, max_tokens: int, system: str | None, tools: list[dict], tool_choice: dict | None,
          thinking: dict | None, messages: list[str], previous_end: int | None, cache: CachePolicy,
          ) -> UpstreamRequest:
    """``previous_end``: the index in ``messages`` of the previous request's last message, if known."""
    marker = cache.marker
    sent_system: list[dict] | str | None = system or None
    sent_tools = tools or None
    if marker is not None:
        if sent_tools:
            sent_tools = [*sent_tools[:-1], {**sent_tools[-1], "cache_control": marker}]
        if system:
            sent_system = [{"type": "text", "text": system, "cache_control": marker}]
        marks = {len(messages) - 1}
        if previous_end is not None and 0 <= previous_end < len(messages) - 1:
            marks.add(previous_end)
        messages = [(_mark_message(m, marker) if i in marks else m) for i, m in enumerate(messages)]
    return UpstreamRequest(model=model, max_tokens=max_tokens, messages=messages, system=sent_system,
                           tools=sent_tools, tool_choice=tool_choice, thinking=thinking)
