"""`POST /v1/messages` of the fake: auth, the real API's rules, the script, then the reply or fault.

Order, as upstream: authentication (401), every request rule (400, which consumes no behaviour), then the
next scripted behaviour: an error status, a hang, a raw or broken body, or a reply (whose plan can still
be refused when the script asks for something the request does not allow). Every 400 is kept in the
engine's violations as well as in the request record.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import wire
from .errors import Refusal
from .records import parse_body
from .replies import HangingReply, Reply, StreamedReply
from .script import Behaviour
from .state import FakeConfig, FakeState


class JSON(JSONResponse):
    """Compact UTF-8 JSON, the same encoding as the SSE events."""

    def render(self, content: Any) -> bytes:
        return wire.dumps(content).encode()


def error_response(
    status: int, request_id: str, behaviour: Behaviour | None = None, message: str | None = None
) -> Response:
    error_type = (behaviour and behaviour.error_type) or wire.error_type_for_status(status)
    message = message or (behaviour and behaviour.error_message)
    headers = {"request-id": request_id}
    if behaviour is not None and behaviour.retry_after is not None:
        headers["retry-after"] = behaviour.retry_after
    if behaviour is not None and behaviour.should_retry is not None:
        headers["x-should-retry"] = "true" if behaviour.should_retry else "false"
    return JSON(wire.error_body(error_type, message, request_id), status_code=status, headers=headers)


def _api_key(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip()


def _auth_problem(request: Request, config: FakeConfig) -> str | None:
    key = _api_key(request)
    if not key:
        return "x-api-key header is required"
    if config.require_key is not None and key != config.require_key:
        return "invalid x-api-key"
    return None


def _fault_response(behaviour: Behaviour, request_id: str, stream: bool) -> Response | None:
    """A 200 that is not a Messages reply at all, when the behaviour scripts one."""
    if behaviour.raw_body is not None or behaviour.content_type is not None:
        headers = {"request-id": request_id, "content-type": behaviour.content_type or "application/json"}
        return Response((behaviour.raw_body or "").encode(), status_code=200, headers=headers)
    if behaviour.gzip_garbage:
        content_type = "text/event-stream; charset=utf-8" if stream else "application/json"
        headers = {"request-id": request_id, "content-type": content_type, "content-encoding": "gzip"}
        return Response(b"this is not gzip \x00\xff" + secrets.token_bytes(16), status_code=200, headers=headers)
    return None


async def create_message(request: Request) -> Any:
    fake: FakeState = request.app.state.fake
    request_id = wire.new_request_id()
    raw_body = await request.body()
    body = parse_body(raw_body)
    stream = isinstance(body, dict) and body.get("stream") is True
    retry_count = request.headers.get("x-stainless-retry-count", "")
    record = {
        "id": request_id,
        "path": request.url.path,
        "content_type": request.headers.get("content-type"),
        "retry_count": int(retry_count) if retry_count.isdigit() else None,
        "stream": stream,
        "status": 200,
    }
    fake.recorder.add_request(record, raw_body)

    def refuse(refusal: Refusal) -> Response:
        record["status"] = refusal.status
        fake.engine.refused(request_id, refusal.message, refusal.status)
        return error_response(refusal.status, request_id, message=refusal.message)

    if problem := _auth_problem(request, fake.config):
        record["status"] = 401
        return error_response(401, request_id, message=problem)
    try:
        facts = fake.engine.check(body)
    except Refusal as refusal:
        return refuse(refusal)
    behaviour = fake.script.next()
    if behaviour.status is not None:
        record["status"] = behaviour.status
        return error_response(behaviour.status, request_id, behaviour)
    if not behaviour.hang and (fault := _fault_response(behaviour, request_id, stream)) is not None:
        return fault
    try:
        answer = fake.engine.answer(body, facts, behaviour, fake.config.n_tokens)
    except Refusal as refusal:
        return refuse(refusal)
    config = fake.config
    reply = Reply(
        request_id=request_id,
        message_id=wire.new_message_id(),
        model=behaviour.model or body["model"],
        tokens=[piece for planned in answer.plan.blocks if planned.block["type"] == "text" for piece in
                planned.fragments],
        usage=answer.usage,
        stop_reason=answer.plan.stop_reason,
        ttft=behaviour.ttft if behaviour.ttft is not None else config.ttft,
        token_delay=behaviour.token_delay if behaviour.token_delay is not None else config.token_delay,
        behaviour=behaviour,
        blocks=answer.plan.blocks,
    )
    if behaviour.hang:
        return HangingReply(reply, fake.recorder, stream=stream)
    headers = {"request-id": request_id}
    if stream:
        return StreamedReply(reply, fake.recorder, headers, ttft_from=config.ttft_from)
    # A non-streamed reply arrives once "generation" is done.
    await asyncio.sleep(reply.generation_time())
    return JSON(reply.message(), headers=headers)
