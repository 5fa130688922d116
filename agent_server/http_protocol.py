"""uvicorn's httptools protocol with bounds on what a client may hold before its request has even started.

httptools (what ``uvicorn[standard]`` runs) has no limit of its own on the size of a request head, and uvicorn
none on how long a head may take or how many connections may be open. Here:

- the bytes of a request *head* are counted (body bytes that arrive in the same read are not: a 300 KB body
  sent in one write is not a large header) and past ``MAX_HEADER_BYTES`` the answer is 431;
- a head must be complete within ``AGENT_HEADER_TIMEOUT_SECONDS`` of its first byte (or of the connection
  being made): a client that sends one header line every 10 s, or nothing at all, gets 408 and is closed;
- at most ``AGENT_MAX_CONNECTIONS`` connections are open per process (default: below the descriptor limit,
  so that other clients and the database always have descriptors left); a connection over the bound gets 503
  at once, with one warning line every few seconds while it lasts;
- a client that stops reading (the socket's write buffer stays full for ``AGENT_SLOW_CLIENT_SECONDS``) is cut:
  what it was following goes on without it (a reply is not the connection's), and it can resume. This holds for
  HTTP (an event stream) and WebSocket connections alike: the same guard is on both protocols.

The answers are written straight to the socket, with the error envelope and an ``X-Request-ID``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import secrets
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

MAX_HEADER_BYTES = 64 * 1024
_HEAD_END = b"\r\n\r\n"
log = logging.getLogger("agent_server")


def default_max_connections() -> int:
    """A bound below the soft descriptor limit: a quarter of it (at least 64) is kept for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(soft - max(soft // 4, 64), 16)


def raw_error(status: int, reason: str, error_type: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response with the JSON envelope; the connection closes after it."""
    body = json.dumps({"error": {"type": error_type, "message": message}}, separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"x-request-id: rq_{secrets.token_hex(8)}\r\nx-content-type-options: nosniff\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Bounds:
    """Read from the settings once per process, when the first connection arrives (workers read their own)."""

    header_timeout: float = 5.0
    max_connections: int = 1000
    slow_client: float = 30.0
    loaded = False

    @classmethod
    def load(cls) -> None:
        if cls.loaded:
            return
        from .config import get_settings

        settings = get_settings()
        cls.header_timeout = settings.header_timeout_seconds
        cls.max_connections = settings.max_connections or default_max_connections()
        cls.slow_client = settings.slow_client_seconds
        cls.loaded = True


class _Warnings:
    """At most one 'too many connections' line every ``EVERY`` seconds, with the count refused meanwhile."""

    EVERY = 5.0
    last = 0.0
    refused = 0

    @classmethod
    def refused_one(cls, open_now: int, bound: int) -> None:
        cls.refused += 1
        now = time.monotonic()
        if now - cls.last >= cls.EVERY:
            log.warning(
                "connection refused with 503: %d open, the bound is %d (AGENT_MAX_CONNECTIONS); %d refused in %.0f s",
                open_now, bound, cls.refused, now - cls.last if cls.last else 0,
            )
            cls.last, cls.refused = now, 0


class _StallGuard:
    """Aborts the connection when its write buffer has stayed full (the client stopped reading) too long."""

    _stall_timer: asyncio.TimerHandle | None = None
    transport: asyncio.Transport

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self._stall_timer is None:
            _Bounds.load()
            self._stall_timer = asyncio.get_running_loop().call_later(_Bounds.slow_client, self._stalled)

    def resume_writing(self) -> None:
        self._cancel_stall()
        super().resume_writing()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_stall()
        super().connection_lost(exc)  # type: ignore[misc]

    def _cancel_stall(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        log.info("a client stopped reading for %g s: its connection is closed", _Bounds.slow_client)
        self.transport.abort()


class LimitedWebSocketsProtocol(_StallGuard, WebSocketsSansIOProtocol):
    pass


class LimitedHttpToolsProtocol(_StallGuard, HttpToolsProtocol):
    _head_bytes = 0
    _in_head = True
    _tail = b""
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _Bounds.load()
        super().connection_made(transport)
        if len(self.connections) > _Bounds.max_connections:
            _Warnings.refused_one(len(self.connections), _Bounds.max_connections)
            self._refuse(raw_error(503, "Service Unavailable", "overloaded_error",
                                   "Too many open connections; try again shortly."))
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._head_timer is None:
                self._arm_head_timer()  # the first byte of a request on a kept-alive connection
            seen = self._tail + data
            end = seen.find(_HEAD_END)
            self._head_bytes += len(data) if end == -1 else end + len(_HEAD_END) - len(self._tail)
            self._tail = seen[-(len(_HEAD_END) - 1):]
            if self._head_bytes > MAX_HEADER_BYTES:
                self.logger.warning("request headers over %d bytes: refused with 431", MAX_HEADER_BYTES)
                self._refuse(raw_error(431, "Request Header Fields Too Large", "request_too_large",
                                       "The request headers are larger than 64 KiB."))
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(_Bounds.header_timeout, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(raw_error(408, "Request Timeout", "timeout_error",
                                   f"The request head did not arrive within {_Bounds.header_timeout:g} s."))

    def _refuse(self, response: bytes) -> None:
        self._in_head = False
        self._cancel_head_timer()
        self.transport.write(response)
        self.transport.close()
