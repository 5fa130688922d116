"""GET /conversations, GET /conversations/{id} (the audit), GET /conversations/{id}/turns (history in pages),
PATCH (title) and DELETE /conversations/{id}, GET /export (NDJSON)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .. import errors
from ..db import reads
from ..db.reads import Totals
from .body import read_json_object
from .context import caller, runtime_of
from .responses import PlainJSONResponse as JSONResponse
from .serialize import audit, audit_chunks, conversation_summary, turn

MAX_PAGE = 200
# An audit this large (turns, or characters of content) is sent in pieces, its stored blocks spliced in undecoded: one
# encoding of a big history holds the event loop (and the GIL, even on a thread) for every other client.
OFF_LOOP_TURNS = 200
OFF_LOOP_CHARS = 1_000_000


def _whole_number(raw: str | None, name: str, *, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    # isdigit() alone accepts "²", which int() refuses: ASCII digits only.
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise errors.ValidationFailed(f"Invalid request: {name} must be a whole number from {low} to {high}.")
    return int(raw)


async def _encoded(pieces) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def]
    """Pieces of JSON, encoded a few at a time with the event loop free in between."""
    pending, size = [], 0
    for piece in pieces:
        pending.append(piece)
        size += len(piece)
        if size > 256 * 1024:
            yield "".join(pending).encode()
            pending, size = [], 0
            await asyncio.sleep(0)
    if pending:
        yield "".join(pending).encode()


async def get_conversation(request: Request) -> JSONResponse:
    owner = caller(request)
    value = await runtime_of(request).conversations.audit(owner=owner, conversation_id=request.path_params["id"])
    if len(value.turns) >= OFF_LOOP_TURNS or sum(len(t.content_blocks or "") for t in value.turns) > OFF_LOOP_CHARS:
        return StreamingResponse(_encoded(audit_chunks(value)), media_type="application/json")
    return JSONResponse(audit(value))


async def get_turns(request: Request) -> JSONResponse:
    owner = caller(request)
    limit = _whole_number(request.query_params.get("limit"), "limit", default=50, low=1, high=MAX_PAGE)
    before_raw = request.query_params.get("before")
    before = None if before_raw is None else _whole_number(before_raw, "before", default=0, low=1, high=2**31)
    page = await runtime_of(request).conversations.turns_page(
        owner=owner, conversation_id=request.path_params["id"], before=before, limit=limit)
    return JSONResponse({"turns": [turn(row) for row in page.turns], "before": page.before})


async def list_conversations(request: Request) -> JSONResponse:
    owner = caller(request)
    limit = _whole_number(request.query_params.get("limit"), "limit", default=50, low=1, high=MAX_PAGE)
    page = await runtime_of(request).conversations.list(
        owner=owner, limit=limit, cursor=request.query_params.get("before") or None)
    return JSONResponse({
        "conversations": [conversation_summary(c, page.totals.get(c.id, Totals())) for c in page.conversations],
        "next_cursor": page.next_cursor,
    })


async def patch_conversation(request: Request) -> JSONResponse:
    owner = caller(request)
    runtime = runtime_of(request)
    body = await read_json_object(request, runtime.settings.max_body_bytes)
    if set(body) != {"title"} or not isinstance(body["title"], str):
        raise errors.ValidationFailed('Invalid request: the body must be {"title": "..."}.')
    record = await runtime.lifecycle.rename(owner=owner, conversation_id=request.path_params["id"],
                                            title=body["title"])
    async with runtime.db.read() as conn:
        totals = await reads.totals_by_conversation(conn, conversation_ids=[record.id])
    return JSONResponse(conversation_summary(record, totals.get(record.id, Totals())))


async def delete_conversation(request: Request) -> Response:
    owner = caller(request)
    await runtime_of(request).lifecycle.delete(owner=owner, conversation_id=request.path_params["id"])
    return Response(status_code=204)


async def export(request: Request) -> StreamingResponse:
    """The caller's conversations as NDJSON, one audit a line, oldest first, streamed (constant memory)."""
    owner = caller(request)
    runtime = runtime_of(request)

    async def lines():  # type: ignore[no-untyped-def]
        async for value in runtime.conversations.export(owner=owner):
            async for chunk in _encoded([*audit_chunks(value), "\n"]):
                yield chunk

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Content-Disposition": 'attachment; filename="conversations.ndjson"'})
