"""A minimal HTTP/1.1 SSE client on an asyncio protocol, for the fan-out section only.

Why not httpx there: its HTTP/1.1 parser (h11) is pure Python, and at 200 streams x 100 tokens/s, each
token its own TCP segment, it cost this machine about 0.35 ms of client CPU per token: the load generator,
not the servers, set the figures (20k tokens/s would need ~7 cores). This client does what the fan-out
needs and nothing more: one connection per stream (``Connection: close``), the status line, chunked or
plain bodies, events split on blank lines, token events timed as they arrive. Same results as
``client.sse_stream`` (``StreamResult``), a fraction of the cost.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

from .client import StreamResult, Target, without_id


class _SSEProtocol(asyncio.Protocol):
    def __init__(self, request: bytes, target: Target, result: StreamResult, gaps: bool, started: float):
        self.request, self.target, self.result, self.gaps, self.started = request, target, result, gaps, started
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.events = b""
        self.head_done = False
        self.chunked = False
        self.ended = False
        self.last = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        if not self.head_done:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
            self.head_done = True
            status = head.split("\r\n", 1)[0].split(" ")
            if len(status) < 2 or status[1] != "200":
                self._finish(f"HTTP {' '.join(status[1:])}")
                return
            self.chunked = "transfer-encoding: chunked" in head.lower()
        if self.chunked:
            self._dechunk(now)
        else:
            self._feed(self.buffer, now)
            self.buffer = b""

    def _dechunk(self, now: float) -> None:
        position = 0
        while True:
            line_end = self.buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            size = int(self.buffer[position:line_end].split(b";", 1)[0], 16)
            if size == 0:
                self._finish(None)
                return
            start = line_end + 2
            if len(self.buffer) < start + size + 2:
                break
            self._feed(self.buffer[start:start + size], now)
            position = start + size + 2
        self.buffer = self.buffer[position:]

    def _feed(self, payload: bytes, now: float) -> None:
        *events, self.events = (self.events + payload).split(b"\n\n")
        result = self.result
        for event in events:
            event = without_id(event)
            if event.startswith(self.target.token_event):
                if result.tokens == 0:
                    result.ttft = now - self.started
                elif self.gaps:
                    result.gaps.append(now - self.last)
                self.last = now
                result.tokens += 1
            elif event.startswith(self.target.end_event):
                self.ended = True
            elif event.startswith(b"event: error"):
                result.error = event.decode(errors="replace")[:200]

    def _finish(self, error: str | None) -> None:
        if self.done.done():
            return
        self.result.total = time.perf_counter() - self.started
        if error is None and self.result.error is None and not self.ended:
            error = "stream ended without its end event"
        self.result.error = self.result.error or error
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(f"connection lost: {exc}" if exc else None)


async def sse_stream(target: Target, body: dict, *, timeout: float, gaps: bool = False,
                     expect_tokens: int | None = None) -> StreamResult:
    """POST ``body`` to ``target`` on a fresh connection and time its token events (see ``client.sse_stream``)."""
    url = urlsplit(target.url)
    payload = json.dumps(body).encode()
    head = [f"POST {url.path or '/'} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json",
            f"Content-Length: {len(payload)}", "Connection: close", "Accept: text/event-stream",
            *(f"{k}: {v}" for k, v in target.headers.items())]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
    result = StreamResult(ok=False)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    protocol = _SSEProtocol(request, target, result, gaps, started)
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: protocol, url.hostname, url.port)
            await protocol.done
    except (OSError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
        if protocol.transport is not None:
            protocol.transport.close()
    if result.error is None and expect_tokens is not None and result.tokens != expect_tokens:
        result.error = f"{result.tokens} tokens, expected {expect_tokens}"
    result.ok = result.error is None
    return result
