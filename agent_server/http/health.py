"""Liveness and readiness, without auth."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..db.migrations import schema_problem
from .context import runtime_of


async def healthz(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    return JSONResponse(
        {"status": "ok", "offline_stub": runtime.claude.offline_stub, "version": runtime.version}
    )


async def readyz(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    problem = await schema_problem(runtime.db)
    if problem is not None:
        return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
    if runtime.service.draining:
        return JSONResponse({"status": "unavailable", "reason": "shutting down"}, status_code=503)
    return JSONResponse({"status": "ready"})
