"""GET /replies/{id}, GET /replies/{id}/events (replay after ``Last-Event-ID`` or ``?after=``, then live) and
POST /replies/{id}/cancel: a reply outlives its connection, on any worker or instance."""

from __future__ import annotations

from starlette.requests import Request

from .. import errors
from . import frames
from .context import caller, runtime_of
from .responses import PlainJSONResponse as JSONResponse
from .serialize import reply_status
from .sse import EventStream


def _after(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise errors.ValidationFailed("Invalid request: after (or Last-Event-ID) must be a whole number of 0 or more.")
    return int(raw)


async def get_reply(request: Request) -> JSONResponse:
    owner = caller(request)
    status = await runtime_of(request).replies.status(owner=owner, reply_id=request.path_params["id"])
    return JSONResponse(reply_status(status))


async def cancel_reply(request: Request) -> JSONResponse:
    owner = caller(request)
    status = await runtime_of(request).replies.cancel(owner=owner, reply_id=request.path_params["id"])
    return JSONResponse(reply_status(status))


async def reply_events(request: Request) -> EventStream:
    owner = caller(request)
    runtime = runtime_of(request)
    after = _after(request)
    events = await runtime.replies.follow(owner=owner, reply_id=request.path_params["id"], after=after)

    async def produce(emit) -> None:  # type: ignore[no-untyped-def]
        async for event in events:
            await emit(frames.sse(event))

    return EventStream(produce, ping_seconds=runtime.settings.sse_ping_seconds)
