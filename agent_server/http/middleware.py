"""Cross-cutting ASGI middleware: request ids and the access log line, security headers, trailing slashes."""

from __future__ import annotations

import logging
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("agent_server.access")

# Responses of these routes carry conversation content: no cache may keep them.
_PRIVATE_PREFIXES = ("/agent", "/conversations", "/replies", "/export", "/usage")


def new_request_id() -> str:
    return "rq_" + secrets.token_hex(8)


class RequestContext:
    """Gives every HTTP request and WebSocket an id (``X-Request-ID``) and writes one log line for it.

    The line carries method, path (never the query string: it may hold a ``?token=``), status, latency,
    owner and conversation id when known; no bodies, no headers.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        context = scope.setdefault("agent", {})
        context["request_id"] = request_id
        started = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "websocket.accept":
                status = 101
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "websocket.close" and status is None:
                status = 403
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            context["route"] = getattr(route, "path", None)
            runtime = scope.get("state", {}).get("runtime")
            if runtime is not None:
                runtime.metrics.requests.labels(context["route"] or "unmatched", str(status or 500)).inc()
            log.info(
                "request",
                extra={
                    "event": "request",
                    "request_id": request_id,
                    "method": scope.get("method", "WS"),
                    "path": scope.get("path"),
                    "route": context.get("route"),
                    "status": status if status is not None else 500,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "owner": context.get("owner"),
                    "conversation_id": context.get("conversation_id"),
                },
            )


class SecurityHeaders:
    """``X-Content-Type-Options: nosniff`` on every response; ``Cache-Control: no-store`` on every response
    that carries conversation content (added to what a route sets, e.g. the event stream's ``no-cache``)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = scope["path"].startswith(_PRIVATE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                cache = [v for k, v in message.get("headers", []) if k.lower() == b"cache-control"]
                headers.append((b"x-content-type-options", b"nosniff"))
                if private:
                    directives = [d.strip() for v in cache for d in v.split(b",") if d.strip()]
                    if b"no-store" not in directives:
                        directives.insert(0, b"no-store")
                    cache = [b", ".join(directives)]
                headers.extend((b"cache-control", v) for v in cache)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TrailingSlash:
    """``/agent/`` is served as ``/agent`` (instead of Starlette's empty 307 redirect)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
            if "raw_path" in scope and scope["raw_path"]:
                scope["raw_path"] = scope["raw_path"].rstrip(b"/") or b"/"
        await self.app(scope, receive, send)
