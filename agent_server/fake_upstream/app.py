"""The fake Anthropic Messages API as a Starlette app: `POST /v1/messages` plus a control API.

`POST /v1/messages` enforces the real API's request rules (tool pairing, thinking signatures, cache
breakpoints, the context window...: see `validate` and `history_rules`), models prompt caching, and
answers as the script says (see `Behaviour`).

Control API (JSON, for tests and benchmarks):
  POST /_fake/script   {"behaviours": [Behaviour, ...]}  appends to the script
  POST /_fake/reset    clears the script, every record, the violations and the prompt cache; restores the
                       model table's defaults and puts the fake clock back to real time
  GET  /_fake/requests {"requests": [{"id", "path", "body", "content_type", "retry_count", "stream", "status"}]}
  GET  /_fake/streams  {"streams": [{"request_id", "outcome", "tokens_sent", "head_ms", "first_delta_ms"}]}
                       (milliseconds from when the reply was accepted; see StreamedReply)
  GET  /_fake/wait?outcome=disconnected&count=1&timeout=10   or   ?requests=N&timeout=10
       long-polls: 200 {"ok": true, ...} once satisfied, 408 {"ok": false, ...} on timeout.
  GET  /_fake/violations  {"violations": [{"request_id", "status", "type", "message"}]}: every request the
                       fake refused with a 400 (a rule of the real API, or a script the request cannot allow)
  POST /_fake/models   {"<model>": {"context_window": N, "cache_minimum": N}}  merges into the model table
                       (defaults: 200,000 tokens; cache minimum 1,024, or 4,096 for claude-opus-4-5/4-6 and
                       claude-haiku-4-5, 2,048 for claude-haiku-3*) -> {"ok": true, "models": {overrides}}
  POST /_fake/clock    {"advance": seconds}  moves the prompt cache's clock forward (TTL expiry without
                       sleeping) -> {"ok": true, "offset": total seconds advanced}
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import wire
from .endpoint import JSON, create_message, error_response
from .records import OUTCOMES, Recorder
from .replies import QuietDrops
from .script import Behaviour
from .state import FakeConfig, FakeState

__all__ = ["FakeConfig", "create_fake_app"]


def _fake(request: Request) -> FakeState:
    return request.app.state.fake


async def add_script(request: Request) -> Response:
    fake = _fake(request)
    payload = await request.json()
    behaviours = [Behaviour.model_validate(item) for item in payload.get("behaviours", [])]
    fake.script.extend(behaviours)
    return JSON({"ok": True, "pending": fake.script.pending()})


async def reset(request: Request) -> Response:
    fake = _fake(request)
    fake.script.clear()
    fake.recorder.clear()
    fake.engine.reset()
    return JSON({"ok": True})


async def list_requests(request: Request) -> Response:
    return JSON({"requests": _fake(request).recorder.requests_json()})


async def list_streams(request: Request) -> Response:
    return JSON({"streams": _fake(request).recorder.streams_json()})


async def list_violations(request: Request) -> Response:
    return JSON({"violations": _fake(request).engine.violations()})


async def set_models(request: Request) -> Response:
    models = _fake(request).engine.models.update(await request.json())
    return JSON({"ok": True, "models": models})


async def move_clock(request: Request) -> Response:
    payload: Any = await request.json()
    seconds = payload.get("advance") if isinstance(payload, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError('the clock wants {"advance": seconds}')
    clock = _fake(request).engine.clock
    clock.advance(float(seconds))
    return JSON({"ok": True, "offset": clock.offset})


async def wait(request: Request) -> Response:
    recorder: Recorder = _fake(request).recorder
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
    return JSON(result, status_code=200 if ok else 408)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, wire.new_request_id(), message=exc.detail)


async def _invalid(request: Request, exc: Exception) -> Response:
    return error_response(422, wire.new_request_id(), message=str(exc))


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
        Route("/_fake/violations", list_violations, methods=["GET"]),
        Route("/_fake/models", set_models, methods=["POST"]),
        Route("/_fake/clock", move_clock, methods=["POST"]),
    ]
    handlers = {HTTPException: _http_error, ValidationError: _invalid, ValueError: _invalid}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=_lifespan)
    app.state.fake = FakeState(defaults or FakeConfig())
    return app
