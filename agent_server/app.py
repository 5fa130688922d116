"""The ASGI application, assembled in one place: routes, middleware, error handlers and lifespan.

``uvicorn agent_server.app:app`` works too: the lifespan refuses to start, in one line, when the schema
is not at head or the host is unsafe.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from .http.responses import PlainJSONResponse as JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from . import errors
import sys

from pydantic import ValidationError

from .config import Settings, describe_settings_error, get_settings, is_loopback, served_host
from starlette.middleware.cors import CORSMiddleware

from .http import agent, conversations, health, openapi, replies, usage, web, ws
from .http.middleware import RequestContext, SecurityHeaders, TrailingSlash
from .logs import configure_logging
from .runtime import Runtime, StartupError

log = logging.getLogger("agent_server")


async def agent_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.AgentError)
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.headers())


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = {404: errors.NotFound, 405: errors.ValidationFailed}.get(exc.status_code, errors.AgentError)
    message = "No such route." if exc.status_code == 404 else str(exc.detail)
    error = kind(message)
    return JSONResponse(error.envelope(), status_code=exc.status_code, headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = request.scope.get("agent", {}).get("request_id", "unknown")
    log.exception("unhandled error (request id %s)", request_id)
    error = errors.InternalError(request_id)
    return JSONResponse(error.envelope(), status_code=500)


ROUTES = [
    Route("/agent", agent.post_agent, methods=["POST"]),
    Route("/agent/stream", agent.post_agent_stream, methods=["POST"]),
    WebSocketRoute("/agent/ws", ws.agent_ws),
    Route("/agent/ws", ws.upgrade_required, methods=["GET", "POST"]),
    Route("/replies/{id}", replies.get_reply, methods=["GET"]),
    Route("/replies/{id}/events", replies.reply_events, methods=["GET"]),
    Route("/replies/{id}/cancel", replies.cancel_reply, methods=["POST"]),
    Route("/conversations", conversations.list_conversations, methods=["GET"]),
    Route("/conversations/{id}", conversations.get_conversation, methods=["GET"]),
    Route("/conversations/{id}", conversations.patch_conversation, methods=["PATCH"]),
    Route("/conversations/{id}", conversations.delete_conversation, methods=["DELETE"]),
    Route("/conversations/{id}/turns", conversations.get_turns, methods=["GET"]),
    Route("/export", conversations.export, methods=["GET"]),
    Route("/usage", usage.get_usage, methods=["GET"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    Route("/metrics", health.metrics, methods=["GET"]),
    Route("/openapi.json", openapi.openapi, methods=["GET"]),
    Route("/", web.index, methods=["GET"]),
    Route("/static", web.static, methods=["GET"]),
    Route("/static/{path:path}", web.static, methods=["GET"]),
]


def middleware(settings: Settings) -> list[Middleware]:
    stack: list[Middleware] = []
    if settings.cors_origins:
        stack.append(Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                            "RateLimit-Reset"],
            max_age=600,
        ))
    return stack


def build_starlette(settings: Settings) -> Starlette:
    return Starlette(
        routes=ROUTES,
        middleware=middleware(settings),
        exception_handlers={
            errors.AgentError: agent_error,
            HTTPException: http_error,
            Exception: unexpected_error,
        },
    )


class AgentServerApp:
    """Starlette behind our own lifespan handling, so a refusal to start is one clean line, not a traceback."""

    def __init__(self, settings: Settings | None = None):
        self._settings = settings
        self._entry: RequestContext | None = None
        self.runtime: Runtime | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if self.runtime is None:
            raise RuntimeError("the application was not started (lifespan did not run)")
        scope.setdefault("state", {})["runtime"] = self.runtime
        assert self._entry is not None
        await self._entry(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        try:
            settings = self.settings
            configure_logging(settings)
            problems = settings.startup_problems(served_host(settings, sys.argv))
            if problems:
                raise StartupError(problems[0])
            self.runtime = await Runtime.start(settings)
            # Outside Starlette's error middleware, so that 500 responses carry the request id too.
            self._entry = RequestContext(SecurityHeaders(LoopbackGate(TrailingSlash(build_starlette(settings)))))
            if "state" in scope:
                scope["state"]["runtime"] = self.runtime
        except (StartupError, ValueError) as exc:
            reason = describe_settings_error(exc) if isinstance(exc, ValidationError) else str(exc)
            # uvicorn logs this message (once, through our handler); logging it here too would say it twice.
            await send({"type": "lifespan.startup.failed", "message": f"not starting: {reason}"})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        try:
            await self.runtime.drain()
            await self.runtime.close()
        finally:
            await send({"type": "lifespan.shutdown.complete"})


class LoopbackGate:
    """Defence in depth behind the start-up check: a stub or keyless server never answers a public address."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = scope["state"]["runtime"]
        server = scope.get("server")
        if not runtime.settings.loopback_only or server is None or is_loopback(str(server[0])):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse(
            errors.AgentError("This server has no upstream key or no client keys and serves loopback only.").envelope(),
            status_code=503,
        )
        await response(scope, receive, send)


app = AgentServerApp()
