"""The fake Anthropic Messages API as a Starlette app: `POST /v1/messages` plus a control API.

Control API (JSON, for tests and benchmarks):
  POST /_fake/script   {"behaviours": [Behaviour, ...]}  appends to the script
  POST /_fake/reset    clears the script and every record
  GET  /_fake/requests {"requests": [{"id", "path", "body", "content_type", "retry_count", "stream", "status"}]}
  GET  /_fake/streams  {"streams": [{"request_id", "outcome", "tokens_sent", "head_ms", "first_delta_ms"}]}
                       (milliseconds from when the reply was accepted; see StreamedReply)
  GET  /_fake/wait?outcome=disconnected&count=1&timeout=10   or   ?requests=N&timeout=10
       long-polls: 200 {"ok": true, ...} once satisfied, 408 {"ok": false, ...} on timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import wire
from .records import OUTCOMES, Recorder, parse_body
from .replies import HangingReply, QuietDrops, Reply, StreamedReply
from .script import Behaviour, Script


@dataclass(frozen=True)
class FakeConfig:
    """Defaults for every reply; a scripted Behaviour overrides them per attempt."""

    ttft: float = 0.0
    token_delay: float = 0.0
    n_tokens: int | None = None  # None: echo the last user message
    require_key: str | None = None  # None: any non-empty key is accepted
    ttft_from: str = "accepted"  # when the time to first token starts: see StreamedReply


@dataclass
class _Fake:
    config: FakeConfig
    script: Script = field(default_factory=Script)
    recorder: Recorder = field(default_factory=Recorder)


class _JSON(JSONResponse):
    """Compact UTF-8 JSON, the same encoding as the SSE events."""

    def render(self, content: Any) -> bytes:
        return wire.dumps(content).encode()


def _error(status: int, request_id: str, behaviour: Behaviour | None = None, message: str | None = None) -> Response:
    error_type = (behaviour and behaviour.error_type) or wire.error_type_for_status(status)
    message = message or (behaviour and behaviour.error_message)
    headers = {"request-id": request_id}
    if behaviour is not None and behaviour.retry_after is not None:
        headers["retry-after"] = behaviour.retry_after
    if behaviour is not None and behaviour.should_retry is not None:
        headers["x-should-retry"] = "true" if behaviour.should_retry else "false"
    return _JSON(wire.error_body(error_type, message, request_id), status_code=status, headers=headers)


def _api_key(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip()


def _problem(request: Request, body: Any, config: FakeConfig) -> tuple[int, str] | None:
    """Why the real API would refuse this request before generating anything, if it would."""
    key = _api_key(request)
    if not key:
        return 401, "x-api-key header is required"
    if config.require_key is not None and key != config.require_key:
        return 401, "invalid x-api-key"
    if not isinstance(body, dict):
        return 400, "The request body is not valid JSON."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return 400, "model: Field required"
    if not isinstance(body.get("messages"), list):
        return 400, "messages: Field required"
    return None


def _plan(body: dict[str, Any], behaviour: Behaviour, config: FakeConfig, request_id: str) -> Reply:
    if behaviour.tokens is not None:
        tokens = list(behaviour.tokens)
    elif behaviour.text is not None:
        tokens = [behaviour.text]
    else:
        n_tokens = behaviour.n_tokens if behaviour.n_tokens is not None else config.n_tokens
        tokens = wire.default_reply_tokens(body["messages"], n_tokens)
    input_tokens = wire.count_input_tokens(body.get("system"), body["messages"])
    return Reply(
        request_id=request_id,
        message_id=wire.new_message_id(),
        model=behaviour.model or body["model"],
        tokens=tokens,
        usage=wire.build_usage(input_tokens=input_tokens, output_tokens=len(tokens), overrides=behaviour.usage),
        stop_reason=behaviour.stop_reason,
        ttft=behaviour.ttft if behaviour.ttft is not None else config.ttft,
        token_delay=behaviour.token_delay if behaviour.token_delay is not None else config.token_delay,
        behaviour=behaviour,
    )


async def create_message(request: Request) -> Any:
    fake: _Fake = request.app.state.fake
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
    if problem := _problem(request, body, fake.config):
        record["status"] = problem[0]
        return _error(problem[0], request_id, message=problem[1])
    behaviour = fake.script.next()
    if behaviour.status is not None:
        record["status"] = behaviour.status
        return _error(behaviour.status, request_id, behaviour)
    reply = _plan(body, behaviour, fake.config, request_id)
    if behaviour.hang:
        return HangingReply(reply, fake.recorder, stream=stream)
    headers = {"request-id": request_id}
    if stream:
        return StreamedReply(reply, fake.recorder, headers, ttft_from=fake.config.ttft_from)
    # A non-streamed reply arrives once "generation" is done.
    await asyncio.sleep(reply.ttft + reply.token_delay * max(len(reply.tokens) - 1, 0))
    return _JSON(reply.message(), headers=headers)


async def add_script(request: Request) -> Response:
    fake: _Fake = request.app.state.fake
    payload = await request.json()
    behaviours = [Behaviour.model_validate(item) for item in payload.get("behaviours", [])]
    fake.script.extend(behaviours)
    return _JSON({"ok": True, "pending": fake.script.pending()})


async def reset(request: Request) -> Response:
    fake: _Fake = request.app.state.fake
    fake.script.clear()
    fake.recorder.clear()
    return _JSON({"ok": True})


async def list_requests(request: Request) -> Response:
    return _JSON({"requests": request.app.state.fake.recorder.requests_json()})


async def list_streams(request: Request) -> Response:
    return _JSON({"streams": request.app.state.fake.recorder.streams_json()})


async def wait(request: Request) -> Response:
    recorder: Recorder = request.app.state.fake.recorder
    params = request.query_params
    timeout = float(params.get("timeout", "10"))
    if "requests" in params:
        wanted = int(params["requests"])
        ok = await recorder.wait_until(lambda: recorder.request_count() >= wanted, timeout)
        result = {"ok": ok, "requests": recorder.request_count()}
    else:
        outcome, count = params.get("outcome", "completed"), int(params.get("count", "1"))
        if outcome not in OUTCOMES:
            raise HTTPException(400, f"outcome must be one of {', '.join(OUTCOMES)}")
        ok = await recorder.wait_until(lambda: recorder.count_outcome(outcome) >= count, timeout)
        result = {"ok": ok, "outcome": outcome, "count": recorder.count_outcome(outcome)}
    return _JSON(result, status_code=200 if ok else 408)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, wire.new_request_id(), message=exc.detail)


async def _invalid(request: Request, exc: Exception) -> Response:
    return _error(422, wire.new_request_id(), message=str(exc))


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    quiet, server_log = QuietDrops(), logging.getLogger("uvicorn.error")
    server_log.addFilter(quiet)
    try:
        yield
    finally:
        server_log.removeFilter(quiet)


def create_fake_app(defaults: FakeConfig | None = None) -> Starlette:
    routes = [
        Route("/v1/messages", create_message, methods=["POST"]),
        Route("/_fake/script", add_script, methods=["POST"]),
        Route("/_fake/reset", reset, methods=["POST"]),
        Route("/_fake/requests", list_requests, methods=["GET"]),
        Route("/_fake/streams", list_streams, methods=["GET"]),
        Route("/_fake/wait", wait, methods=["GET"]),
    ]
    handlers = {HTTPException: _http_error, ValidationError: _invalid, ValueError: _invalid}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=_lifespan)
    app.state.fake = _Fake(defaults or FakeConfig())
    return app
