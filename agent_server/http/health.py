"""Liveness and readiness, without auth."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..db.migrations import schema_problem
from ..metrics import CONTENT_TYPE
from .context import caller, runtime_of


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


async def metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    if runtime.settings.client_keys:
        caller(request)
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
