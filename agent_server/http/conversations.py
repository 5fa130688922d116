"""GET /conversations and GET /conversations/{id}: the audit of what was said and what it cost."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import errors
from ..db.repository import Totals
from .context import caller, runtime_of
from .serialize import conversation_summary, timestamp, totals, turn, upstream_call

MAX_PAGE = 200


async def get_conversation(request: Request) -> JSONResponse:
    owner = caller(request)
    audit = await runtime_of(request).service.audit(owner=owner, conversation_id=request.path_params["id"])
    record = audit.conversation
    return JSONResponse(
        {
            "id": record.id,
            "owner": record.owner,
            "model": record.model,
            "system": record.system,
            "created_at": timestamp(record.created_at),
            "updated_at": timestamp(record.updated_at),
            "turns": [turn(row) for row in audit.turns],
            "requests": [upstream_call(row) for row in audit.calls],
            "totals": totals(audit.totals),
        }
    )


def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    # isdigit() alone accepts "²", which int() refuses: ASCII digits only.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise errors.ValidationFailed(f"Invalid request: limit must be a whole number from 1 to {MAX_PAGE}.")
    return int(raw)


async def list_conversations(request: Request) -> JSONResponse:
    owner = caller(request)
    limit = _limit(request.query_params.get("limit"))
    page = await runtime_of(request).service.list_conversations(
        owner=owner, limit=limit, cursor=request.query_params.get("before") or None
    )
    return JSONResponse(
        {
            "conversations": [conversation_summary(c, page.totals.get(c.id, Totals())) for c in page.conversations],
            "next_cursor": page.next_cursor,
        }
    )
