"""The offline stub: an in-process httpx2 transport that answers like the Messages API.

The product uses it when no ANTHROPIC_API_KEY is set, so the whole stack (SDK, streaming,
persistence, usage, a tool loop) runs for real with canned replies and no sockets:

    anthropic.AsyncAnthropic(
        api_key="offline-stub",
        http_client=anthropic.DefaultAsyncHttpxClient(transport=OfflineStubTransport()),
    )

Replies say plainly that they are canned (see `stub_brain`), and stream token by token with a
small delay so a UI shows real streaming. Requests go through the same `Engine` as the loopback
fake: a request the real API would refuse gets the same 400 here, and usage (prompt caching
included) is counted the same way. Its signing secret is fixed, so thinking blocks stay valid
across restarts of the product.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx2

from . import wire
from .blocks import DELTA, TEXT, Chunk, message_events
from .engine import Engine
from .errors import Refusal
from .stub_brain import STUB_PREFIX, decide, stub_reply_text

__all__ = ["STUB_PREFIX", "OfflineStubTransport", "stub_reply_text"]

_STUB_SECRET = b"agent-server offline stub: thinking signatures"


class _LazySSE(httpx2.AsyncByteStream):
    """Yields one SSE event at a time, pausing before each content delta after the first."""

    def __init__(self, chunks: list[Chunk], token_delay: float) -> None:
        self._chunks = chunks
        self._token_delay = token_delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        paced = 0
        for chunk, kind in self._chunks:
            if kind in (TEXT, DELTA):
                if paced and self._token_delay:
                    await asyncio.sleep(self._token_delay)
                paced += 1
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
        self.engine = Engine(secret=_STUB_SECRET)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request_id = wire.new_request_id("req_stub_")
        if request.method != "POST" or not request.url.path.rstrip("/").endswith("/v1/messages"):
            return _error(404, f"The offline stub does not serve {request.method} {request.url.path}", request_id)
        try:
            body = json.loads(await request.aread())
        except ValueError:
            body = None
        try:
            facts = self.engine.check(body)
            answer = self.engine.answer(body, facts, decide(body, facts))
        except Refusal as refusal:
            self.engine.refused(request_id, refusal.message, refusal.status)
            return _error(refusal.status, refusal.message, request_id)

        message_id, model, plan = wire.new_message_id(), body["model"], answer.plan
        if body.get("stream") is True:
            chunks = message_events(
                message_id=message_id,
                model=model,
                start_usage={**answer.usage, "output_tokens": 1},
                usage=answer.usage,
                blocks=plan.blocks,
                stop_reason=plan.stop_reason,
            )
            headers = {"request-id": request_id, "content-type": "text/event-stream; charset=utf-8"}
            return httpx2.Response(200, headers=headers, stream=_LazySSE(chunks, self.token_delay), request=request)
        message = wire.build_message(
            message_id=message_id,
            model=model,
            tokens=[],
            usage=answer.usage,
            stop_reason=plan.stop_reason,
            content=[planned.block for planned in plan.blocks],
        )
        headers = {"request-id": request_id, "content-type": "application/json"}
        return httpx2.Response(200, headers=headers, content=wire.dumps(message).encode(), request=request)
