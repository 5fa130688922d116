"""A Server-Sent Events response driven by a producer coroutine.

Chosen over sse-starlette: that library patches uvicorn's exit handler at import time and ends every
stream as soon as shutdown starts, which defeats our grace period (replies in flight may finish, then
get a final ``shutdown`` event after their partial turn is stored). Starlette's StreamingResponse pulls
from an iterator, so tokens pushed by the reply would need a queue hop; here the producer writes events
straight to the connection, a timer keeps idle streams alive with a comment line (a timer, not a task per
stream: cheaper to set up on the way to the first token), and a listener stops the producer when the client
disconnects (a client that stops reading is cut by the protocol: ``http_protocol``). What the producer follows
(a reply) is not its to stop: ``on_disconnect`` tells the caller the client left.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from starlette.types import Receive, Scope, Send

from ..jsonenc import dumps

Emit = Callable[[bytes], Awaitable[None]]

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
]


def encode_event(event: str, data: dict) -> bytes:
    """An event that belongs to no reply (no ``id:``)."""
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


class EventStream:
    def __init__(self, producer: Callable[[Emit], Awaitable[None]], *, ping_seconds: float, headers=(),
                 on_disconnect: Callable[[], None] | None = None):
        self._producer = producer
        self._on_disconnect = on_disconnect
        self._ping_seconds = ping_seconds
        self._headers = [*HEADERS, *headers]
        self._last_sent = time.monotonic()
        self._disconnected = False
        self._head_sent = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pinging: asyncio.Task | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The head goes out with the first event or ping, not before: a producer may have other work first
        # (agent.py starts the upstream call before its first event), and the ping timer bounds the wait.
        producer_task = asyncio.current_task()
        assert producer_task is not None

        async def emit(chunk: bytes) -> None:
            await self._send_body(send, chunk)

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self._disconnected = True
                    producer_task.cancel(msg="client disconnected")
                    return

        listener = asyncio.create_task(listen())
        self._arm_ping(send, self._ping_seconds)
        try:
            await self._producer(emit)
        except asyncio.CancelledError:
            if not self._disconnected:
                raise
            producer_task.uncancel()
            self._left()
            return
        except OSError:
            self._disconnected = True
            self._left()
            return  # the client went away while we wrote (or stopped reading)
        finally:
            if self._ping_timer is not None:
                self._ping_timer.cancel()
            helpers = [task for task in (listener, self._pinging) if task is not None]
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        if not self._disconnected:
            with contextlib.suppress(OSError):
                await self._send_body(send, b"", more_body=False)

    def _left(self) -> None:
        if self._on_disconnect is not None:
            self._on_disconnect()

    async def _send_body(self, send: Send, body: bytes, more_body: bool = True) -> None:
        self._last_sent = time.monotonic()
        if not self._head_sent:
            self._head_sent = True
            await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": body, "more_body": more_body})

    def _arm_ping(self, send: Send, delay: float) -> None:
        self._ping_timer = asyncio.get_running_loop().call_later(delay, self._ping_due, send)

    def _ping_due(self, send: Send) -> None:
        idle_for = time.monotonic() - self._last_sent
        if idle_for >= self._ping_seconds and (self._pinging is None or self._pinging.done()):
            self._pinging = asyncio.ensure_future(self._send_body(send, b": ping\n\n"))
            self._pinging.add_done_callback(_client_gone_is_fine)
            idle_for = 0.0
        self._arm_ping(send, self._ping_seconds - idle_for)


def _client_gone_is_fine(task: asyncio.Task) -> None:
    """A ping that failed because the client left needs no report: the listener ends the stream."""
    if not task.cancelled():
        task.exception()
