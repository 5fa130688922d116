"""POST /agent (the whole reply as JSON, or 202 with ``background``) and POST /agent/stream (Server-Sent Events).

Both start a reply through the service and only encode what it emits: the reply runs on its own; the route
follows it. A client that goes away leaves it running (``on_disconnect: continue``, the default of
``AGENT_ON_DISCONNECT``: it can resume) or cancels it (``cancel``).
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request

from ..engine.reply import ReplyProcess
from ..service.replies import ReplyRequest
from . import frames
from .body import read_model
from .context import caller, count_model_call, runtime_of
from .responses import PlainJSONResponse as JSONResponse
from .schemas import AgentRequest
from .sse import EventStream


def reply_request(body: AgentRequest, *, message: str | None = None) -> ReplyRequest:
    answers = [{"kind": "approval", "tool_use_id": a.tool_use_id, "approved": a.approved, "reason": a.reason}
               for a in body.approvals]
    answers += [{"kind": "client_tool", "tool_use_id": r.tool_use_id, "content": r.content, "is_error": r.is_error}
                for r in body.tool_results]
    return ReplyRequest(
        message=body.message if message is None else message, conversation_id=body.conversation_id,
        system=body.system, model=body.model, max_tokens=body.max_tokens, tools=body.tools,
        tool_choice=body.tool_choice.model_dump(exclude_none=True) if body.tool_choice else None,
        thinking=body.thinking.model_dump() if body.thinking else None, answers=answers,
    )


async def _start(request: Request, route: str) -> tuple[ReplyProcess, AgentRequest, dict, str]:
    owner = caller(request)
    runtime = runtime_of(request)
    body = await read_model(request, AgentRequest, max_bytes=runtime.settings.max_body_bytes, limits=runtime.limits)
    quota = await count_model_call(request, owner)
    process = await runtime.replies.start(owner=owner, request=reply_request(body), route=route)
    request.scope.setdefault("agent", {})["conversation_id"] = process.conversation_id
    on_disconnect = body.on_disconnect or runtime.settings.on_disconnect
    return process, body, quota.headers(), on_disconnect


async def post_agent(request: Request) -> JSONResponse:
    process, body, headers, on_disconnect = await _start(request, "agent")
    if body.background:
        return JSONResponse({"reply_id": process.reply_id, "conversation_id": process.conversation_id,
                             "status": "running"}, status_code=202, headers=headers)
    result = await _outcome_or_disconnect(request, process, on_disconnect)
    if result is None:
        return JSONResponse({}, status_code=499)  # nobody is listening any more
    if result.error is not None:
        raise result.error
    return JSONResponse(frames.agent_response(result), headers=headers)


async def _outcome_or_disconnect(request: Request, process: ReplyProcess, on_disconnect: str):
    """The reply's result, or None once the client has gone (then the reply is cancelled if asked to be)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({watcher, process.outcome}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # whoever ran this request went away without a word
        if on_disconnect == "cancel":
            process.cancel("cancelled")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)  # its slot and lease are free once this returns
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
    if process.outcome in done:
        return process.outcome.result()
    if on_disconnect == "cancel":
        process.cancel("cancelled")
        await process.wait()
    return None


async def post_agent_stream(request: Request) -> EventStream:
    # Auth, validation, 404 and 409 fail here, before the stream starts: they are plain HTTP errors.
    process, _, headers, on_disconnect = await _start(request, "stream")
    runtime = runtime_of(request)

    async def produce(emit) -> None:  # type: ignore[no-untyped-def]
        async for event in process.journal.follow(0):
            await emit(frames.sse(event))

    def left() -> None:
        if on_disconnect == "cancel":
            process.cancel("cancelled")

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return EventStream(produce, ping_seconds=runtime.settings.sse_ping_seconds, headers=raw_headers,
                       on_disconnect=left)
