"""What the scripted model says: a `Behaviour` (and the request) turned into the reply's content blocks.

Shared by the loopback fake and the offline stub, so both speak the same agent behaviour: thinking blocks
(signed so they can be checked when sent back), server tool calls with their results, text, and tool calls.
A script that asks for something the request does not allow (a tool it does not declare, a web search
without the server tool) is refused as a 400 explaining which, rather than producing a reply the real
API could never send. Output tokens are deterministic: text tokens, plus `ceil(len(json) / 4)` per tool
input, plus the thinking's word tokens.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Any

from . import wire
from .blocks import PlannedBlock, json_fragments, text_block
from .errors import Refusal
from .script import Behaviour
from .signing import Signer
from .validate import RequestFacts

DEFAULT_THINKING = "Let me think about what was asked before answering."


@dataclass(frozen=True)
class Plan:
    blocks: tuple[PlannedBlock, ...]
    stop_reason: str
    output_tokens: int
    web_search_requests: int | None  # None: no server tool was used (usage then has no server_tool_use)


def _tool_use(kind: str, tool_id: str, name: str, tool_input: dict[str, Any]) -> tuple[PlannedBlock, int]:
    encoded = wire.dumps(tool_input)
    block = {"type": kind, "id": tool_id, "name": name, "input": tool_input}
    return PlannedBlock(block, json_fragments(encoded)), math.ceil(len(encoded) / 4)


def search_results(query: str) -> list[dict[str, Any]]:
    """One or two deterministic fake results for a web search query."""
    slug = hashlib.sha256(query.encode()).hexdigest()[:12]
    count = 1 + len(query) % 2
    return [
        {
            "type": "web_search_result",
            "url": f"https://example.com/{slug}/{k}",
            "title": f"Result {k} for {query}"[:200],
            "encrypted_content": base64.b64encode(f"{slug}:{k}:{query}".encode()).decode(),
            "page_age": "April 1, 2026",
        }
        for k in range(1, count + 1)
    ]


def _server_tools(behaviour: Behaviour, facts: RequestFacts) -> tuple[list[PlannedBlock], int, int]:
    blocks: list[PlannedBlock] = []
    tokens = 0
    for use in behaviour.server_tool_uses or []:
        if use.name != "web_search" or not facts.web_search:
            raise Refusal(f"The fake's script uses the server tool `{use.name}`, but the request declares no "
                          "`web_search_*` server tool in `tools` (only web_search is scripted).")
        tool_id = "srvtoolu_" + secrets.token_hex(12)
        planned, cost = _tool_use("server_tool_use", tool_id, use.name, use.input)
        query = str(use.input.get("query", ""))
        result = {"type": "web_search_tool_result", "tool_use_id": tool_id, "content": search_results(query)}
        blocks.extend([planned, PlannedBlock(result)])
        tokens += cost
    return blocks, tokens, len(behaviour.server_tool_uses or [])


def _text_tokens(body: dict[str, Any], behaviour: Behaviour, default_n_tokens: int | None) -> list[str] | None:
    """The scripted text, or None when the behaviour gives none."""
    if behaviour.tokens is not None:
        return list(behaviour.tokens)
    if behaviour.text is not None:
        return [behaviour.text]
    if behaviour.n_tokens is not None:
        return wire.default_reply_tokens(body["messages"], behaviour.n_tokens)
    return None


def plan(
    body: dict[str, Any], behaviour: Behaviour, facts: RequestFacts, signer: Signer, default_n_tokens: int | None
) -> Plan:
    """The reply's blocks, stop reason and output tokens; `Refusal` if the script breaks the request's rules."""
    blocks: list[PlannedBlock] = []
    output = 0
    thinking = behaviour.thinking if behaviour.thinking is not None else (DEFAULT_THINKING if facts.thinking else None)
    if thinking is not None:
        pieces = wire.split_tokens(thinking) or [thinking]
        block = {"type": "thinking", "thinking": thinking, "signature": signer.sign(thinking)}
        blocks.append(PlannedBlock(block, tuple(pieces)))
        output += len(wire.split_tokens(thinking))
    if behaviour.redacted_thinking:
        blocks.append(PlannedBlock({"type": "redacted_thinking", "data": signer.redacted_data()}))
    server_blocks, server_tokens, searches = _server_tools(behaviour, facts)
    blocks.extend(server_blocks)
    output += server_tokens
    text = _text_tokens(body, behaviour, default_n_tokens)
    if text is None and not behaviour.tool_calls:
        text = wire.default_reply_tokens(body["messages"], default_n_tokens)
    if text is not None:
        blocks.append(text_block(text))
        output += len(text)
    for call in behaviour.tool_calls or []:
        if call.name not in facts.tool_names and not call.undeclared:
            declared = ", ".join(sorted(facts.tool_names)) or "none"
            raise Refusal(f"The fake's script names the tool `{call.name}`, which the request does not declare in "
                          f"`tools` (declared: {declared}). Declare it, or script the call with "
                          '"undeclared": true to test a model asking for an unknown tool.')
        planned, cost = _tool_use("tool_use", call.id or "toolu_" + secrets.token_hex(12), call.name, call.input)
        blocks.append(planned)
        output += cost
    stop_reason = behaviour.stop_reason or ("tool_use" if behaviour.tool_calls else "end_turn")
    return Plan(tuple(blocks), stop_reason, output, searches if behaviour.server_tool_uses else None)
