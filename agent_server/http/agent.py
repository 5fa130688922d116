"""POST /agent (whole reply) and POST /agent/stream (Server-Sent Events)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import errors
from ..service import ReplyParams
from .body import read_model
from .context import caller, count_model_call, runtime_of
from .opening import StartOnce
from .schemas import AgentRequest
from .serialize import agent_response, done_payload
from .sse import Emit, EventStream

log = logging.getLogger(__name__)


async def _open(request: Request, route: str):
    owner = caller(request)
    runtime = runtime_of(request)
    body = await read_model(
        request, AgentRequest, max_bytes=runtime.settings.max_body_bytes, limits=runtime.limits
    )
    quota = await count_model_call(request, owner)
    params = ReplyParams(
        message=body.message, conversation_id=body.conversation_id, system=body.system,
        model=body.model, max_tokens=body.max_tokens,
    )
    reply = await runtime.service.open_reply(owner=owner, params=params, route=route)
    request.scope.setdefault("agent", {})["conversation_id"] = reply.conversation_id
    return runtime, reply, quota


async def post_agent(request: Request) -> JSONResponse:
    _, reply, quota = await _open(request, "agent")
    outcome = await reply.complete()
    return JSONResponse(agent_response(outcome), headers=quota.headers())


async def post_agent_stream(request: Request) -> EventStream:
    # Auth, validation, 404 and 409 fail here, before the stream starts: they are plain HTTP errors.
    runtime, reply, quota = await _open(request, "stream")

    async def produce(emit: Emit) -> None:
        start = StartOnce(lambda: emit("start", {"conversation_id": reply.conversation_id, "model": reply.model}))

        async def token(text: str) -> None:
            if not start.sent:
                await start()
            await emit("token", {"text": text})

        try:
            outcome = await reply.run(token, on_open=start)
        except errors.AgentError as exc:
            await start()
            await emit("error", exc.envelope())
            return
        except Exception:
            # The stream has started, so no 500 can be sent: end it with the error event instead.
            request_id = request.scope.get("agent", {}).get("request_id", "unknown")
            log.exception("unhandled error in a stream (request id %s)", request_id)
            await start()
            await emit("error", errors.InternalError(request_id).envelope())
            return
        finally:
            # A client gone before run() began would otherwise leave the reply (and its lock) open.
            await reply.abandon()
        await start()
        await emit("done", done_payload(outcome))

    headers = [(k.lower().encode(), v.encode()) for k, v in quota.headers().items()]
    return EventStream(produce, ping_seconds=runtime.settings.sse_ping_seconds, headers=headers)
