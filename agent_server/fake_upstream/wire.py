"""The Anthropic Messages API wire format, as pure functions.

Both the loopback fake server and the in-process offline stub build their bytes here, so the
two can never drift apart. Everything follows what the anthropic SDK actually parses: every
SSE event is named (the SDK drops unnamed ones), `message_start` carries the full usage, and
`message_delta.usage` is cumulative (it repeats input and cache totals rather than adding).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from . import tokens

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "The requested resource could not be found.",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out",
    "overloaded_error": "Overloaded",
}

_WORD = re.compile(r"\S+\s*|\s+")


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def new_request_id(prefix: str = "req_") -> str:
    return prefix + secrets.token_hex(12)


def error_type_for_status(status: int) -> str:
    """The error `type` the real API pairs with an HTTP status; unknown 5xx are `api_error`."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def dumps(data: Any) -> str:
    # Compact and raw UTF-8, like the real API; the SDK splits SSE lines on bytes, so
    # non-ASCII characters (even U+2028) are safe unescaped.
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def build_usage(
    *,
    input_tokens: int,
    output_tokens: int,
    overrides: Mapping[str, Any] | None = None,
    cache_read: int = 0,
    cache_5m: int = 0,
    cache_1h: int = 0,
    web_search_requests: int | None = None,
) -> dict[str, Any]:
    """A full usage dict: the counted values (zero cache fields by default), then `overrides` merged in.

    When `overrides` gives only the 5m/1h `cache_creation` breakdown, the total `cache_creation_input_tokens`
    is derived from it so the two agree. Override values may be any JSON (a string, a negative or a huge
    number): they reach the client unchanged."""
    overrides = dict(overrides or {})
    breakdown: Any = {"ephemeral_5m_input_tokens": cache_5m, "ephemeral_1h_input_tokens": cache_1h}
    if "cache_creation" in overrides:
        given = overrides.pop("cache_creation")
        breakdown = {**breakdown, **given} if isinstance(given, Mapping) else given
    numbers = list(breakdown.values()) if isinstance(breakdown, Mapping) else [None]
    total = sum(numbers) if all(isinstance(n, int) for n in numbers) else cache_5m + cache_1h
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": total,
        "cache_read_input_tokens": cache_read,
        "cache_creation": breakdown,
        "output_tokens": output_tokens,
    }
    if web_search_requests is not None:
        usage["server_tool_use"] = {"web_search_requests": web_search_requests, "web_fetch_requests": 0}
    usage.update(overrides)
    return usage


def build_message(
    *,
    message_id: str,
    model: str,
    tokens: Sequence[str],
    usage: Mapping[str, Any],
    stop_reason: str,
    content: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON body of a non-streamed `POST /v1/messages` reply: `content` blocks, else one text block."""
    blocks = [dict(block) for block in content] if content is not None else [{"type": "text", "text": "".join(tokens)}]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": dict(usage),
    }


def sse_event(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


def stream_head(*, message_id: str, model: str, usage: Mapping[str, Any]) -> list[bytes]:
    """`message_start` (with usage, output_tokens 1 as the real API reports) and the text block start."""
    start_usage = {**usage, "output_tokens": 1}
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    return [
        sse_event("message_start", {"type": "message_start", "message": message}),
        sse_event("content_block_start", block),
    ]


def text_delta(token: str, index: int = 0) -> bytes:
    delta = {"type": "text_delta", "text": token}
    return sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def mystery_event() -> bytes:
    """An event type no client knows, with data that is not JSON (a fault for hardening tests)."""
    return b"event: mystery_event\ndata: not json\n\n"


def stream_tail(*, usage: Mapping[str, Any], stop_reason: str) -> list[bytes]:
    """Block stop, `message_delta` with cumulative usage (no breakdown, as the API sends), `message_stop`."""
    delta_usage = {key: value for key, value in usage.items() if key != "cache_creation"}
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": delta_usage,
    }
    return [
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse_event("message_delta", message_delta),
        sse_event("message_stop", {"type": "message_stop"}),
    ]


def stream_chunks(
    *, message_id: str, model: str, tokens: Sequence[str], usage: Mapping[str, Any], stop_reason: str
) -> list[bytes]:
    """Every SSE chunk of a complete streamed reply, one chunk per event."""
    return [
        *stream_head(message_id=message_id, model=model, usage=usage),
        *(text_delta(token) for token in tokens),
        *stream_tail(usage=usage, stop_reason=stop_reason),
    ]


def error_event(error_type: str, message: str | None = None) -> bytes:
    """An `event: error` sent inside a 200 stream (the API's mid-stream failure)."""
    error = {"type": error_type, "message": message or ERROR_MESSAGES.get(error_type, error_type)}
    return sse_event("error", {"type": "error", "error": error})


def error_body(error_type: str, message: str | None, request_id: str) -> dict[str, Any]:
    """The JSON body of an error status response."""
    error = {"type": error_type, "message": message or ERROR_MESSAGES.get(error_type, error_type)}
    return {"type": "error", "error": error, "request_id": request_id}


def content_text(content: Any) -> str:
    """The text of a message's `content`: a plain string or a list of blocks (non-text ignored)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


def last_user_text(messages: Any) -> str:
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def split_tokens(text: str) -> list[str]:
    """Words with their trailing whitespace kept, so `"".join(split_tokens(t)) == t`."""
    return _WORD.findall(text)


def tool_results(messages: Any) -> list[dict[str, Any]]:
    """The `tool_result` blocks of the last user message (none when it is plain text)."""
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if not isinstance(content, list):
                return []
            return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return []


def result_text(result: Mapping[str, Any], limit: int = 80) -> str:
    """A tool_result's text on one line, shortened to `limit` characters."""
    text = " ".join(content_text(result.get("content")).split()) or "(empty)"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"error: {text}" if result.get("is_error") else text


def default_reply_tokens(messages: Any, n_tokens: int | None = None) -> list[str]:
    """The deterministic reply, in word tokens: exactly `n_tokens` tokens; else, after tool results,
    `Done. Results: <each result's text>`; else `Echo: <last user text>`."""
    if n_tokens is not None:
        return [f"tok{i} " for i in range(n_tokens)]
    if results := tool_results(messages):
        return split_tokens("Done. Results: " + "; ".join(result_text(result) for result in results))
    return split_tokens(f"Echo: {last_user_text(messages)}")


def count_input_tokens(system: Any, messages: Any, tools: Any = None) -> int:
    """A deterministic estimate, about four characters a token and never zero (rule: `tokens` module)."""
    return tokens.count_input_tokens(system, messages, tools)
