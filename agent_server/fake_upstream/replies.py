"""The ASGI responses for replies that take time: streamed SSE, and requests left hanging.

They are raw ASGI callables rather than Starlette's `StreamingResponse` because the fake must
know *how* a stream ended: it races the producer against the `http.disconnect` message, so a
client that leaves mid-stream is seen at once, even while the producer is sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from . import wire
from .blocks import DELTA, TEXT, Chunk, PlannedBlock, message_events, text_block
from .records import Recorder, StreamRecord
from .script import Behaviour


class DroppedConnection(Exception):
    """Raised out of the app on purpose: the ASGI server then cuts the socket mid chunked body."""


class QuietDrops(logging.Filter):
    """Keeps the server's "Exception in ASGI application" log quiet for deliberate drops."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


@dataclass(frozen=True)
class Reply:
    """Everything decided about one successful reply before a byte is sent."""

    request_id: str
    message_id: str
    model: str
    tokens: list[str]
    usage: dict[str, Any]
    stop_reason: str
    ttft: float
    token_delay: float
    behaviour: Behaviour
    blocks: tuple[PlannedBlock, ...] | None = None  # None: one text block of `tokens`

    def planned_blocks(self) -> tuple[PlannedBlock, ...]:
        return self.blocks if self.blocks is not None else (text_block(self.tokens),)

    def message(self) -> dict[str, Any]:
        return wire.build_message(
            message_id=self.message_id,
            model=self.model,
            tokens=self.tokens,
            usage=self.usage,
            stop_reason=self.stop_reason,
            content=[planned.block for planned in self.planned_blocks()],
        )

    def start_usage(self) -> dict[str, Any]:
        """message_start's usage: output_tokens 1 as the real API reports, unless the script set it."""
        if self.behaviour.usage is not None and "output_tokens" in self.behaviour.usage:
            return dict(self.usage)
        return {**self.usage, "output_tokens": 1}

    def chunks(self) -> list[Chunk]:
        return message_events(
            message_id=self.message_id,
            model=self.model,
            start_usage=self.start_usage(),
            usage=self.usage,
            blocks=self.planned_blocks(),
            stop_reason=self.stop_reason,
        )

    def generation_time(self) -> float:
        """How long the whole reply takes to "generate": the TTFT, then a token delay per later delta."""
        paced = sum(1 for _, kind in self.chunks() if kind in (TEXT, DELTA))
        return self.ttft + self.token_delay * max(paced - 1, 0)


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


TTFT_CLOCKS = ("accepted", "head-sent")


class StreamedReply:
    """A `text/event-stream` reply, one event per body message so nothing is buffered.

    The time to first token runs from when the reply was accepted (``ttft_from="accepted"``), as a real
    model's does: its generation does not wait for the response head to reach the client. Starting it after
    the head (``"head-sent"``, how this fake used to work) lets the client under test slow the "model" down:
    on a machine where fake and client share cores, the write of the head wakes the client, which can hold
    the fake's core while it handles the head, and that time was added to the client's TTFT. The record of
    each stream keeps how long the head took to send and when the first delta went out; ``python -m bench
    --only ttft`` prints both per target (on its 2 shared cores the head took ~0.4 ms to send to
    agent_server, which sends its own ``start`` event then, and ~0.05 ms to the baseline proxy).
    """

    def __init__(self, reply: Reply, recorder: Recorder, headers: dict[str, str], *, ttft_from: str = "accepted"):
        if ttft_from not in TTFT_CLOCKS:
            raise ValueError(f"ttft_from must be one of {', '.join(TTFT_CLOCKS)}")
        self.reply = reply
        self.recorder = recorder
        self.headers = {**headers, "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        self.ttft_from = ttft_from

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = time.perf_counter()
        record = self.recorder.open_stream(self.reply.request_id)
        raw_headers = [(key.encode(), value.encode()) for key, value in self.headers.items()]
        loop = asyncio.get_running_loop()
        first_token_due = loop.create_future()
        timer = loop.call_later(self.reply.ttft, _settle, first_token_due) if self.ttft_from == "accepted" else None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
            record.head_ms = _ms_since(accepted)
            if timer is None:
                timer = loop.call_later(self.reply.ttft, _settle, first_token_due)
            sender = asyncio.create_task(self._send_events(send, record, first_token_due, accepted))
            listener = asyncio.create_task(_wait_for_disconnect(receive))
            try:
                await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sender, listener):
                    task.cancel()
                await asyncio.wait({sender, listener})
        except OSError:
            return  # the client went away before the headers went out
        finally:
            if timer is not None:
                timer.cancel()
            # Whatever has not settled by now ended because the client left (or we were cancelled).
            self.recorder.finish_stream(record, "disconnected")
        error = None if sender.cancelled() else sender.exception()
        if error is not None and not isinstance(error, OSError):
            raise error  # DroppedConnection on purpose, anything else is a bug worth seeing

    async def _send_events(
        self, send: Send, record: StreamRecord, first_token_due: asyncio.Future, accepted: float
    ) -> None:
        reply = self.reply

        async def emit(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        chunks = reply.chunks()
        texts = sum(1 for _, kind in chunks if kind == TEXT)
        # With no text delta at all, "after 0 tokens" is right after the first block starts (or message_start).
        anchor = 1 if len(chunks) > 2 else 0
        sent_text, paced = 0, 0
        for position, (chunk, kind) in enumerate(chunks):
            if kind == TEXT and await self._fault(sent_text, texts, emit, send, record):
                return
            if kind in (TEXT, DELTA):
                if paced == 0:
                    await first_token_due
                else:
                    await asyncio.sleep(reply.token_delay)
            await emit(chunk)
            if kind in (TEXT, DELTA):
                if paced == 0:
                    record.first_delta_ms = _ms_since(accepted)
                paced += 1
            if kind == TEXT:
                sent_text += 1
                record.tokens_sent += 1
            after_last = (kind == TEXT and sent_text == texts) or (texts == 0 and position == anchor)
            if after_last and await self._fault(texts, texts, emit, send, record):
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.recorder.finish_stream(record, "completed")

    async def _fault(
        self, index: int, last: int, emit: Callable[[bytes], Awaitable[None]], send: Send, record: StreamRecord
    ) -> bool:
        """Inject the scripted mid-stream fault due after `index` of `last` text deltas; True ends the stream."""
        behaviour = self.reply.behaviour
        if behaviour.unknown_event_after_tokens is not None and min(behaviour.unknown_event_after_tokens,
                                                                    last) == index:
            await emit(wire.mystery_event())
        if behaviour.error_after_tokens is not None and min(behaviour.error_after_tokens, last) == index:
            await emit(wire.error_event(behaviour.error_type or "overloaded_error", behaviour.error_message))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.recorder.finish_stream(record, "error")
            return True
        if behaviour.drop_after_tokens is not None and min(behaviour.drop_after_tokens, last) == index:
            self.recorder.finish_stream(record, "dropped")
            raise DroppedConnection(self.reply.request_id)
        if behaviour.end_after_tokens is not None and min(behaviour.end_after_tokens, last) == index:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.recorder.finish_stream(record, "ended early")
            return True
        return False


class HangingReply:
    """Accepts the request and answers nothing until the client goes away."""

    def __init__(self, reply: Reply, recorder: Recorder, *, stream: bool) -> None:
        self.reply = reply
        self.recorder = recorder
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A streamed hang gets a lifecycle record, so a test can wait for the client to give up.
        record = self.recorder.open_stream(self.reply.request_id) if self.stream else None
        try:
            await _wait_for_disconnect(receive)
        finally:
            if record is not None:
                self.recorder.finish_stream(record, "disconnected")
