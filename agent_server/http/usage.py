"""GET /usage: the caller's spend by day, model or conversation (admin keys: any owner's, or everyone's)."""

from __future__ import annotations

from starlette.requests import Request

from ..money.prices import from_nano
from .context import caller, runtime_of
from .responses import PlainJSONResponse as JSONResponse
from .serialize import usd


def _row(row, *, group: bool) -> dict:  # type: ignore[no-untyped-def]
    data = {"requests": row.requests, "input_tokens": row.input_tokens, "output_tokens": row.output_tokens,
            "cache_creation_input_tokens": row.cache_creation_input_tokens,
            "cache_read_input_tokens": row.cache_read_input_tokens, "server_tool_uses": row.server_tool_uses,
            "cost_usd": usd(from_nano(row.cost_nano_usd))}
    return {"group": row.group, **data} if group else data


async def get_usage(request: Request) -> JSONResponse:
    owner = caller(request)
    query = request.query_params
    report = await runtime_of(request).usage.report(caller=owner, since=query.get("since"), until=query.get("until"),
                                                    group_by=query.get("group_by"), owner=query.get("owner"))
    return JSONResponse({"owner": report.owner, "since": report.since.isoformat(), "until": report.until.isoformat(),
                         "groups": [_row(row, group=True) for row in report.groups],
                         "totals": _row(report.totals, group=False)})
