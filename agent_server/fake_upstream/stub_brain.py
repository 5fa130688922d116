"""What the offline stub "decides" to say: a canned reply, or one small step of a tool loop.

The product runs on the stub when no API key is configured, so a tool loop has to work offline too: when
the request declares tools the stub may call `current_time` (a question about the time or date),
`calculator` (an arithmetic expression) or `save_note` (anything mentioning a note), and after tool results
it reports what the tools said. The decision is a `Behaviour`, so the stub's reply goes through exactly the
same planning and wire code as the fake's. Every text starts with the `[offline stub] ` label.
"""

from __future__ import annotations

import re
from typing import Any

from . import wire
from .script import Behaviour, ToolCall
from .validate import RequestFacts

STUB_PREFIX = "[offline stub] "
_ECHO_LIMIT = 200
_TIME = re.compile(r"\b(?:time|clock|clocks|date|dates)\b", re.IGNORECASE)  # not "12 times 7"
_NOTE = re.compile(r"\bnotes?\b", re.IGNORECASE)
_NUMBER = r"\(*\s*-?\d+(?:\.\d+)?\s*\)*"
_EXPRESSION = re.compile(rf"{_NUMBER}(?:\s*(?:\*\*|[-+*/%^x×÷])\s*{_NUMBER})+")


def stub_reply_text(messages: Any) -> str:
    """The canned reply: labelled, plus a short deterministic echo of the last user message."""
    said = " ".join(wire.last_user_text(messages).split())
    if len(said) > _ECHO_LIMIT:
        said = said[: _ECHO_LIMIT - 1] + "…"
    return f"{STUB_PREFIX}No ANTHROPIC_API_KEY is set, so this reply is canned. You said: {said}"


def labelled_tokens(text: str) -> list[str]:
    """`text` (which starts with the label) as tokens, the label alone first so even a first chunk says it."""
    return [STUB_PREFIX, *wire.split_tokens(text[len(STUB_PREFIX) :])]


def find_expression(text: str) -> str | None:
    """The first arithmetic expression in `text` ("12*7", "(2 + 3) / 4"), if any."""
    match = _EXPRESSION.search(text)
    return " ".join(match.group(0).split()) if match else None


def _tool_call(text: str, tools: frozenset[str]) -> tuple[str, ToolCall] | None:
    if "current_time" in tools and _TIME.search(text):
        return "Let me check the clock.", ToolCall(name="current_time", input={})
    if "calculator" in tools and (expression := find_expression(text)):
        return "Let me calculate that.", ToolCall(name="calculator", input={"expression": expression})
    if "save_note" in tools and _NOTE.search(text):
        return "Saving that as a note.", ToolCall(name="save_note", input={"text": text})
    return None


def decide(body: dict[str, Any], facts: RequestFacts) -> Behaviour:
    """The stub's behaviour for a request that passed every rule."""
    messages = body["messages"]
    if results := wire.tool_results(messages):
        said = "; ".join(wire.result_text(result, limit=_ECHO_LIMIT) for result in results)
        return Behaviour(tokens=labelled_tokens(f"{STUB_PREFIX}The tool said: {said}"))
    if facts.tool_names and (step := _tool_call(wire.last_user_text(messages), facts.tool_names)):
        text, call = step
        return Behaviour(tokens=labelled_tokens(STUB_PREFIX + text), tool_calls=[call])
    return Behaviour(tokens=labelled_tokens(stub_reply_text(messages)))
