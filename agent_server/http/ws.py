"""WebSocket /agent/ws: a chat session over one connection.

Per session: this handler reads frames; a forwarder follows the current reply (started here, or found running when
the session resumes a conversation) and writes its events as frames; a pinger keeps an idle session alive (a client
that stops reading is cut by the protocol: ``http_protocol``). Frames are written under one lock so they never
interleave. Replies run on their own: a socket that closes leaves its reply running (``on_disconnect: continue``)
or cancels it.

Hostile clients: malformed frames spend a per-session budget (past it: close 1008); one key holds at most
``AGENT_MAX_WS_SESSIONS_PER_KEY`` sessions per process; a frame over ``AGENT_MAX_BODY_BYTES`` closes with 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import errors
from ..service.replies import ReplyRequest
from . import frames
from .agent import reply_request
from .auth import bearer_token, owner_for
from .body import parse_json, validate
from .context import count_model_call, runtime_of
from .responses import PlainJSONResponse as JSONResponse
from .schemas import AgentRequest, WsApproval, WsMessage, WsToolResult
from .serialize import turn

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008
HISTORY_TURNS = 50
HISTORY_BYTES = 512 * 1024
MALFORMED_BURST = 20  # malformed frames a session may send at once; one more is allowed per second after that
PAUSED_END_SECONDS = 10.0  # at most this long for a paused reply to store its end once its answers are all in


class Budget:
    """A token bucket: ``spend()`` is False once the burst is used up faster than it refills."""

    def __init__(self, burst: int, per_second: float):
        self.burst, self.rate = burst, per_second
        self.tokens, self.at = float(burst), time.monotonic()

    def spend(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Session:
    def __init__(self, websocket: WebSocket, owner: str, conversation_id: str | None):
        self.ws = websocket
        self.runtime = runtime_of(websocket)
        self.owner = owner
        self.conversation_id = conversation_id
        self.reply_id: str | None = None
        self.process = None  # the ReplyProcess when it runs in this process
        self.forwarder: asyncio.Task | None = None
        self.pending: dict[str, str] = {}  # tool_use_id -> approval | client_tool
        self.answers: dict[str, dict] = {}
        self.on_disconnect = self.runtime.settings.on_disconnect
        self.malformed = Budget(MALFORMED_BURST, 1.0)
        self.closed = False
        self._lock = asyncio.Lock()
        self._last_sent = time.monotonic()

    # -- writing -------------------------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        async with self._lock:
            self._last_sent = time.monotonic()
            await self.ws.send_text(text)

    async def send_error(self, error: errors.AgentError) -> None:
        envelope = error.envelope()
        if error.retry_after is not None:
            envelope["error"]["retry_after"] = error.retry_after
        await self.send_text(frames.ws_frame("error", envelope))

    async def ping_forever(self) -> None:
        interval = self.runtime.settings.ws_ping_seconds
        while True:
            idle_for = time.monotonic() - self._last_sent
            if idle_for < interval:
                await asyncio.sleep(interval - idle_for)
                continue
            await self.send_text('{"type":"ping"}')

    # -- following a reply ---------------------------------------------------------------------------------

    def follow(self, reply_id: str, events, process=None) -> None:  # type: ignore[no-untyped-def]
        self.reply_id, self.process = reply_id, process
        self.forwarder = asyncio.create_task(self._forward(events))

    async def _forward(self, events) -> None:  # type: ignore[no-untyped-def]
        try:
            async for event in events:
                if event.name == "requires_action":
                    self.pending = {item["tool_use_id"]: item["kind"] for item in event.data["pending"]}
                    self.answers = {}
                elif event.name == "start":
                    self.conversation_id = event.data["conversation_id"]
                    self.ws.scope.setdefault("agent", {})["conversation_id"] = self.conversation_id
                await self.send_text(frames.ws(event))
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the socket is gone; the reply is not ours to stop here
        except Exception:
            request_id = self.ws.scope.get("agent", {}).get("request_id", "unknown")
            log.exception("unhandled error forwarding a reply (request id %s)", request_id)
            with contextlib.suppress(Exception):
                await self.send_error(errors.InternalError(request_id))

    @property
    def busy(self) -> bool:
        return self.forwarder is not None and not self.forwarder.done()

    # -- frames from the client ----------------------------------------------------------------------------

    async def handle_frame(self, text: str) -> None:
        try:
            data = parse_json(text)
        except errors.AgentError as exc:
            await self.malformed_frame(exc)
            return
        kind = data.get("type", "message") if isinstance(data, dict) else None
        if not isinstance(kind, str):
            kind = None
        if kind in ("ping", "pong"):
            return
        handler = {"message": self.on_message, "cancel": self.on_cancel, "approval": self.on_answer,
                   "tool_result": self.on_answer, "history": self.on_history}.get(kind)  # type: ignore[arg-type]
        if handler is None:
            await self.malformed_frame(errors.ValidationFailed(
                'Invalid frame: expected a type of "message", "cancel", "approval", "tool_result" or "history".'))
            return
        await handler(data)

    async def malformed_frame(self, error: errors.AgentError) -> None:
        if not self.malformed.spend():
            log.info("closing a WebSocket session that sent too many malformed frames")
            self.closed = True
            await self.ws.close(code=CLOSE_POLICY, reason="too many malformed frames")
            return
        await self.send_error(error)

    async def on_message(self, data: dict) -> None:
        try:
            frame = validate(WsMessage, data, self.runtime.limits)
        except errors.AgentError as exc:
            await self.malformed_frame(exc)
            return
        body = AgentRequest.model_construct(
            message=frame.message, conversation_id=self.conversation_id, system=None, model=frame.model,
            max_tokens=frame.max_tokens, tools=frame.tools, tool_choice=frame.tool_choice, thinking=frame.thinking,
            approvals=[], tool_results=[], background=False, on_disconnect=frame.on_disconnect)
        if await self._start(reply_request(body), frame.on_disconnect):
            self.pending, self.answers = {}, {}  # the message answered them as not run

    async def on_answer(self, data: dict) -> None:
        model = WsApproval if data.get("type") == "approval" else WsToolResult
        try:
            frame = validate(model, data, self.runtime.limits)
        except errors.AgentError as exc:
            await self.malformed_frame(exc)
            return
        kind = self.pending.get(frame.tool_use_id)
        if kind is None or frame.tool_use_id in self.answers:
            await self.send_error(errors.ValidationFailed(
                "No pending action has this tool_use_id (unknown, or already answered)."))
            return
        if isinstance(frame, WsApproval):
            if kind != "approval":
                await self.send_error(errors.ValidationFailed("This pending action needs a tool_result frame."))
                return
            answer = {"kind": "approval", "tool_use_id": frame.tool_use_id, "approved": frame.approved,
                      "reason": frame.reason}
        else:
            if kind != "client_tool":
                await self.send_error(errors.ValidationFailed("This pending action needs an approval frame."))
                return
            answer = {"kind": "client_tool", "tool_use_id": frame.tool_use_id, "content": frame.content,
                      "is_error": frame.is_error}
        self.answers[frame.tool_use_id] = answer
        if set(self.answers) == set(self.pending):
            answers, self.pending, self.answers = list(self.answers.values()), {}, {}
            if self.busy and self.forwarder is not None:
                # Answered as soon as ``requires_action`` arrived: the paused reply is storing its end (its
                # ``done`` comes next). Let it, rather than refuse the answers as a conflict.
                await asyncio.wait({self.forwarder}, timeout=PAUSED_END_SECONDS)
            if not await self._start(ReplyRequest(conversation_id=self.conversation_id, answers=answers), None):
                await self._reload_pending()

    async def _reload_pending(self) -> None:
        """After answers the server refused (answered elsewhere meanwhile, a limit): what is pending now, as
        stored; the refused answers are forgotten (the error frame said why), so the client sends them again."""
        if self.conversation_id is None:
            return
        with contextlib.suppress(errors.AgentError):
            pending = await self.runtime.conversations.pending_actions(owner=self.owner,
                                                                       conversation_id=self.conversation_id)
            self.pending, self.answers = {item["tool_use_id"]: item["kind"] for item in pending}, {}

    async def _start(self, request: ReplyRequest, on_disconnect: str | None) -> bool:
        """Start a reply and follow it; False (the client got an ``error`` frame) when it could not start."""
        if self.busy:
            await self.send_error(errors.Conflict("A reply is already in progress on this session."))
            return False
        try:
            await count_model_call(self.ws, self.owner)
            process = await self.runtime.replies.start(owner=self.owner, request=request, route="ws")
        except errors.AgentError as exc:
            await self.send_error(exc)
            return False
        self.on_disconnect = on_disconnect or self.runtime.settings.on_disconnect
        self.conversation_id = process.conversation_id
        self.follow(process.reply_id, process.journal.follow(0), process)
        return True

    async def on_cancel(self, data: dict) -> None:
        if not self.busy or self.reply_id is None:
            return
        if self.process is not None:
            self.process.cancel("cancelled")
            return
        reply_id = self.reply_id
        asyncio.ensure_future(self.runtime.replies.cancel(owner=self.owner, reply_id=reply_id))

    async def on_history(self, data: dict) -> None:
        before = data.get("before")
        if self.conversation_id is None or not (isinstance(before, int) and not isinstance(before, bool)
                                                and before > 0):
            await self.malformed_frame(errors.ValidationFailed(
                'Invalid frame: {"type": "history", "before": <seq>} on a session with a conversation.'))
            return
        page = await self.runtime.conversations.turns_page(owner=self.owner, conversation_id=self.conversation_id,
                                                           before=before, limit=HISTORY_TURNS)
        turns, older = await _bounded_page(page)
        await self.send_text(frames.ws_frame("history", {"turns": turns, "before": older}))

    async def close(self) -> None:
        """The connection is gone: stop forwarding; cancel the reply if the client asked for that."""
        if self.busy:
            if self.on_disconnect == "cancel" and self.reply_id is not None:
                if self.process is not None:
                    self.process.cancel("cancelled")
                else:
                    asyncio.ensure_future(self.runtime.replies.cancel(owner=self.owner, reply_id=self.reply_id))
            assert self.forwarder is not None
            self.forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.forwarder


async def upgrade_required(request) -> JSONResponse:  # type: ignore[no-untyped-def]
    """A plain HTTP request on the WebSocket route: 426, with the envelope, saying how to connect."""
    error = errors.ValidationFailed(
        "This is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket).")
    return JSONResponse(error.envelope(), status_code=426, headers={"Upgrade": "websocket", "Connection": "Upgrade"})


def origin_allowed(origin: str | None, allowed: tuple[str, ...], own: str | None = None) -> bool:
    """Browsers apply no CORS to WebSockets: a handshake from a page must come from an allowed origin (or this
    server's own page). Clients that are not browsers send no Origin and are not affected."""
    if origin is None or "*" in allowed:
        return True
    origin = origin.rstrip("/")
    return origin in allowed or (own is not None and origin == own)


def _own_origin(websocket: WebSocket) -> str | None:
    host = websocket.headers.get("host")
    if not host:
        return None
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    return f"{scheme}://{host}"


async def _bounded_page(page) -> tuple[list[dict], int | None]:  # type: ignore[no-untyped-def]
    """The newest turns of ``page`` that fit ``HISTORY_BYTES`` (at least one), built off the event loop when big:
    a default ``websockets`` client refuses frames over 1 MiB, and older pages are a ``history`` frame away."""

    def build() -> tuple[list[dict], int | None]:
        shaped = [turn(t) for t in page.turns]
        sizes = [len(frames.ws_frame("t", item)) for item in shaped]
        keep, total = len(shaped), sum(sizes)
        while keep > 1 and total > HISTORY_BYTES:
            total -= sizes[len(shaped) - keep]
            keep -= 1
        kept = shaped[len(shaped) - keep:]
        return kept, (kept[0]["seq"] if keep < len(shaped) else page.before)

    if sum(len(t.content_blocks or "") + len(t.content) for t in page.turns) > HISTORY_BYTES // 4:
        return await asyncio.to_thread(build)
    return build()


async def _resume(session: Session, conversation_id: str, after: int) -> bool:
    """The session frame of a stored conversation (its newest turns; a running reply followed from ``after``)."""
    runtime, owner = session.runtime, session.owner
    try:
        page = await runtime.conversations.turns_page(owner=owner, conversation_id=conversation_id, before=None,
                                                      limit=HISTORY_TURNS)
        reply_id = await runtime.replies.running_reply_of(owner=owner, conversation_id=conversation_id)
        pending = await runtime.conversations.pending_actions(owner=owner, conversation_id=conversation_id)
    except errors.NotFound as exc:
        await session.send_error(exc)
        await session.ws.close(code=CLOSE_NOT_FOUND)
        return False
    turns, before = await _bounded_page(page)
    reply = None
    if reply_id is not None:
        status = await runtime.replies.status(owner=owner, reply_id=reply_id)
        reply = {"reply_id": reply_id, "status": status.status, "last_seq": status.last_seq}
    session.pending = {item["tool_use_id"]: item["kind"] for item in pending}
    await session.send_text(frames.ws_frame("session", {
        "conversation_id": conversation_id, "turns": turns, "turns_before": before, "reply": reply,
        "pending": pending or None}))
    if reply_id is not None and reply is not None and reply["status"] == "running":
        events = await runtime.replies.follow(owner=owner, reply_id=reply_id, after=after)
        session.follow(reply_id, events, runtime.supervisor.get(reply_id))
    return True


async def agent_ws(websocket: WebSocket) -> None:
    runtime = runtime_of(websocket)
    if not origin_allowed(websocket.headers.get("origin"), runtime.settings.cors_origins, _own_origin(websocket)):
        await websocket.close(code=CLOSE_POLICY)  # before accept: the handshake is refused with 403
        return
    token = bearer_token(websocket.headers) or websocket.query_params.get("token")
    await websocket.accept()
    try:
        owner = owner_for(token, runtime.settings.client_keys)
    except errors.AuthenticationFailed as exc:
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason=exc.message[:120])
        return
    websocket.scope.setdefault("agent", {})["owner"] = owner
    if not runtime.ws_sessions.enter(owner):
        error = errors.RateLimited(f"At most {runtime.settings.max_ws_sessions_per_key} WebSocket sessions may be "
                                   "open per client key.", retry_after=5)
        with contextlib.suppress(Exception):
            await websocket.send_text(frames.ws_frame("error", error.envelope()))
            await websocket.close(code=CLOSE_POLICY)
        return
    try:
        await _session(websocket, runtime, owner)
    finally:
        runtime.ws_sessions.leave(owner)


async def _session(websocket: WebSocket, runtime, owner: str) -> None:  # type: ignore[no-untyped-def]
    conversation_id = websocket.query_params.get("conversation_id") or None
    after_raw = websocket.query_params.get("after") or "0"
    after = int(after_raw) if after_raw.isascii() and after_raw.isdigit() and len(after_raw) < 12 else 0
    session = Session(websocket, owner, conversation_id)
    try:
        if conversation_id is not None:
            if not await _resume(session, conversation_id, after):
                return
        else:
            await session.send_text(frames.ws_frame("session", {"conversation_id": None, "turns": [],
                                                                "turns_before": None, "reply": None, "pending": None}))
    except (WebSocketDisconnect, OSError):
        await session.close()  # the client left before its session frame went out: nothing more to do
        return
    pinger = asyncio.create_task(session.ping_forever())
    runtime.metrics.ws_sessions.inc()
    max_bytes = runtime.settings.max_body_bytes
    try:
        while not session.closed:
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
                    await session.malformed_frame(errors.InvalidJSON("The frame is not valid UTF-8 JSON."))
                    continue
            if len(text) > max_bytes:
                await websocket.close(code=CLOSE_TOO_BIG)
                break
            await session.handle_frame(text)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        runtime.metrics.ws_sessions.dec()
        pinger.cancel()
        await session.close()
