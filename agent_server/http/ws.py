"""WebSocket /agent/ws: a multi-turn chat session over one connection, history loaded on resume.

Three tasks per session: this handler reads frames, a reply task streams the current reply, and a ping
task keeps idle sessions alive. Frames are written under one lock so they never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import errors
from ..service import ReplyParams
from .auth import bearer_token, owner_for
from .body import parse_json, validate
from .context import count_model_call, runtime_of
from .opening import StartOnce
from .schemas import WsMessage
from .serialize import done_payload, turn

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_BIG = 1009


class Session:
    def __init__(self, websocket: WebSocket, owner: str, conversation_id: str | None):
        self.ws = websocket
        self.runtime = runtime_of(websocket)
        self.owner = owner
        self.conversation_id = conversation_id
        self.reply_task: asyncio.Task | None = None
        self._cancel_requested = False
        self._lock = asyncio.Lock()
        self._last_sent = time.monotonic()

    async def send(self, frame: dict) -> None:
        async with self._lock:
            self._last_sent = time.monotonic()
            await self.ws.send_text(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))

    async def send_error(self, error: errors.AgentError) -> None:
        envelope = error.envelope()
        if error.retry_after is not None:
            envelope["error"]["retry_after"] = error.retry_after
        await self.send({"type": "error", **envelope})

    async def ping_forever(self) -> None:
        interval = self.runtime.settings.ws_ping_seconds
        while True:
            idle_for = time.monotonic() - self._last_sent
            if idle_for < interval:
                await asyncio.sleep(interval - idle_for)
                continue
            await self.send({"type": "ping"})

    async def handle_frame(self, text: str) -> None:
        try:
            data = parse_json(text)
        except errors.AgentError as exc:
            await self.send_error(exc)
            return
        kind = data.get("type", "message") if isinstance(data, dict) else None
        if kind == "cancel":
            self.cancel()
            return
        if kind in ("ping", "pong"):
            return
        if kind != "message":
            await self.send_error(errors.ValidationFailed(
                "Invalid frame: expected {\"type\": \"message\", \"message\": ...} or {\"type\": \"cancel\"}."
            ))
            return
        try:
            frame = validate(WsMessage, data, self.runtime.limits)
        except errors.AgentError as exc:
            await self.send_error(exc)
            return
        if self.reply_task is not None and not self.reply_task.done():
            await self.send_error(errors.Conflict("A reply is already in progress on this session."))
            return
        self._cancel_requested = False
        self.reply_task = asyncio.create_task(self.guarded_reply(frame))

    def cancel(self) -> None:
        if self.reply_task is not None and not self.reply_task.done():
            self._cancel_requested = True
            self.reply_task.cancel(msg="client cancelled")

    async def guarded_reply(self, frame: WsMessage) -> None:
        """The reply task: failures of the connection end it quietly, bugs become an ``api_error`` frame."""
        try:
            await self.reply(frame)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            if self.ws.client_state.name == "CONNECTED" and isinstance(exc, RuntimeError):
                await self._report_bug()
        except Exception:
            await self._report_bug()

    async def _report_bug(self) -> None:
        request_id = self.ws.scope.get("agent", {}).get("request_id", "unknown")
        log.exception("unhandled error in a WebSocket reply (request id %s)", request_id)
        with contextlib.suppress(Exception):
            await self.send_error(errors.InternalError(request_id))

    async def reply(self, frame: WsMessage) -> None:
        params = ReplyParams(
            message=frame.message, conversation_id=self.conversation_id, model=frame.model,
            max_tokens=frame.max_tokens,
        )
        try:
            await count_model_call(self.ws, self.owner)
            reply = await self.runtime.service.open_reply(owner=self.owner, params=params, route="ws")
        except errors.AgentError as exc:
            await self.send_error(exc)
            return
        self.conversation_id = reply.conversation_id
        self.ws.scope.setdefault("agent", {})["conversation_id"] = reply.conversation_id

        start = StartOnce(
            lambda: self.send({"type": "start", "conversation_id": reply.conversation_id, "model": reply.model})
        )

        async def token(text: str) -> None:
            if not start.sent:
                await start()
            await self.send({"type": "token", "text": text})

        try:
            outcome = await reply.run(token, on_open=start)
        except errors.AgentError as exc:
            await start()
            await self.send_error(exc)
            return
        except asyncio.CancelledError:
            # A cancel before run() began leaves nothing stored yet: store it (a no-op otherwise).
            await reply.abandon()
            if not self._cancel_requested:
                raise
            asyncio.current_task().uncancel()
            await start()
            await self.send({"type": "cancelled", "conversation_id": reply.conversation_id, "turn_id": reply.turn_id})
            return
        except BaseException:
            await reply.abandon()
            raise
        await start()
        await self.send({"type": "done", **done_payload(outcome)})

    async def close_reply(self) -> None:
        """The connection is gone: stop the reply in flight (its partial turn is stored by the reply)."""
        if self.reply_task is not None and not self.reply_task.done():
            self.reply_task.cancel(msg="client disconnected")
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reply_task


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Browsers apply no CORS to WebSockets: a handshake from a page must come from an allowed origin.
    Clients that are not browsers send no Origin and are not affected."""
    return origin is None or "*" in allowed or origin.rstrip("/") in allowed


async def agent_ws(websocket: WebSocket) -> None:
    runtime = runtime_of(websocket)
    if not origin_allowed(websocket.headers.get("origin"), runtime.settings.cors_origins):
        await websocket.close(code=1008)  # before accept: the handshake is refused with 403
        return
    token = bearer_token(websocket.headers) or websocket.query_params.get("token")
    await websocket.accept()
    try:
        owner = owner_for(token, runtime.settings.client_keys)
    except errors.AuthenticationFailed as exc:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason=exc.message[:120])
        return
    websocket.scope.setdefault("agent", {})["owner"] = owner
    conversation_id = websocket.query_params.get("conversation_id") or None
    session = Session(websocket, owner, conversation_id)
    turns: list = []
    if conversation_id is not None:
        try:
            turns = await runtime.service.history(owner=owner, conversation_id=conversation_id)
        except errors.NotFound as exc:
            await session.send_error(exc)
            await websocket.close(code=CLOSE_NOT_FOUND)
            return
    await session.send({"type": "session", "conversation_id": conversation_id, "turns": [turn(t) for t in turns]})
    pinger = asyncio.create_task(session.ping_forever())
    runtime.metrics.ws_sessions.inc()
    max_bytes = runtime.settings.max_body_bytes
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                if len(data) > max_bytes:
                    await websocket.close(code=CLOSE_TOO_BIG)
                    break
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    await session.send_error(errors.InvalidJSON("The frame is not valid UTF-8 JSON."))
                    continue
            if len(text) > max_bytes:
                await websocket.close(code=CLOSE_TOO_BIG)
                break
            await session.handle_frame(text)
    except WebSocketDisconnect:
        pass
    finally:
        runtime.metrics.ws_sessions.dec()
        pinger.cancel()
        await session.close_reply()
