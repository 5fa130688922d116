"""Liveness, readiness (without auth) and metrics (with an operator credential)."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from .. import errors
from ..db.migrations import schema_problem
from ..metrics import CONTENT_TYPE
from .auth import bearer_token
from .context import caller, runtime_of
from .responses import PlainJSONResponse as JSONResponse


async def healthz(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    return JSONResponse({"status": "ok", "offline_stub": runtime.claude.offline_stub, "version": runtime.version})


async def readyz(request: Request) -> JSONResponse:
    """Ready when the schema is at head, the database file is the one this process opened, and a write goes
    through (a full disk or a read-only file turns it 503 until writes succeed again)."""
    runtime = runtime_of(request)
    problem = await schema_problem(runtime.db.reader) or runtime.db.identity_problem()
    if problem is None:
        problem = await runtime.probe_write()
    if problem is None and runtime.replies.draining:
        problem = "shutting down"
    if problem is not None:
        return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    """Server-wide figures (every owner's spend among them): for operators only — the ``AGENT_METRICS_TOKEN``, or
    a client key named in ``AGENT_ADMIN_KEYS``. With neither configured and no client keys, loopback only."""
    runtime = runtime_of(request)
    settings = runtime.settings
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    given = bearer_token(request.headers)
    if token is not None and given is not None and hmac.compare_digest(given.encode(), token.encode()):
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
    if settings.client_keys or token is not None:
        owner = caller(request)
        if owner not in settings.admin_keys:
            raise errors.Forbidden("Metrics need the operator credential: AGENT_METRICS_TOKEN, or a key named in "
                                   "AGENT_ADMIN_KEYS.")
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
