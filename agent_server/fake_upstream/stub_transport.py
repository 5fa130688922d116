"""The offline stub: an in-process httpx2 transport that answers like the Messages API.

The product uses it when no ANTHROPIC_API_KEY is set, so the whole stack (SDK, streaming,
persistence, usage) runs for real with canned replies and no sockets:

    anthropic.AsyncAnthropic(
        api_key="offline-stub",
        http_client=anthropic.DefaultAsyncHttpxClient(transport=OfflineStubTransport()),
    )

Replies say plainly that they are canned, and stream token by token with a small delay so a
UI shows real streaming.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from . import wire

STUB_PREFIX = "[offline stub] "
_ECHO_LIMIT = 200


def stub_reply_text(messages: Any) -> str:
    """The canned reply: labelled, plus a short deterministic echo of the last user message."""
    said = " ".join(wire.last_user_text(messages).split())
    if len(said) > _ECHO_LIMIT:
        said = said[: _ECHO_LIMIT - 1] + "…"
    return f"{STUB_PREFIX}No ANTHROPIC_API_KEY is set, so this reply is canned. You said: {said}"


class _LazySSE(httpx2.AsyncByteStream):
    """Yields one SSE event at a time, pausing before each text delta after the first."""

    def __init__(self, head: list[bytes], deltas: list[bytes], tail: list[bytes], token_delay: float) -> None:
        self._head, self._deltas, self._tail = head, deltas, tail
        self._token_delay = token_delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._head:
            yield chunk
        for index, chunk in enumerate(self._deltas):
            if index and self._token_delay:
                await asyncio.sleep(self._token_delay)
            yield chunk
        for chunk in self._tail:
            yield chunk


def _error(status: int, message: str, request_id: str) -> httpx2.Response:
    body = wire.error_body(wire.error_type_for_status(status), message, request_id)
    return httpx2.Response(
        status,
        headers={"request-id": request_id, "content-type": "application/json"},
        content=wire.dumps(body).encode(),
    )


class OfflineStubTransport(httpx2.AsyncBaseTransport):
    """Serves `POST .../v1/messages` in-process, streamed or not; anything else is a 404."""

    def __init__(self, *, token_delay: float = 0.02) -> None:
        self.token_delay = token_delay

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request_id = wire.new_request_id("req_stub_")
        if request.method != "POST" or not request.url.path.rstrip("/").endswith("/v1/messages"):
            return _error(404, f"The offline stub does not serve {request.method} {request.url.path}", request_id)
        try:
            body = json.loads(await request.aread())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not body.get("model") or not isinstance(body.get("messages"), list):
            return _error(400, "model and messages are required", request_id)

        # The label is the first token, so even the first streamed chunk says what this is.
        tokens = [STUB_PREFIX, *wire.split_tokens(stub_reply_text(body["messages"])[len(STUB_PREFIX) :])]
        usage = wire.build_usage(
            input_tokens=wire.count_input_tokens(body.get("system"), body["messages"]), output_tokens=len(tokens)
        )
        message_id, model = wire.new_message_id(), body["model"]
        if body.get("stream") is True:
            stream = _LazySSE(
                wire.stream_head(message_id=message_id, model=model, usage=usage),
                [wire.text_delta(token) for token in tokens],
                wire.stream_tail(usage=usage, stop_reason="end_turn"),
                self.token_delay,
            )
            headers = {"request-id": request_id, "content-type": "text/event-stream; charset=utf-8"}
            return httpx2.Response(200, headers=headers, stream=stream, request=request)
        message = wire.build_message(
            message_id=message_id, model=model, tokens=tokens, usage=usage, stop_reason="end_turn"
        )
        headers = {"request-id": request_id, "content-type": "application/json"}
        return httpx2.Response(200, headers=headers, content=wire.dumps(message).encode(), request=request)
