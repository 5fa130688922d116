"""One WebSocket connection to ``/agent/ws``: opened (``open_session``), its first frame read, then every frame
handed to the view by one receiving task.

The end of the connection is noticed in that one place (``Session.lost``), at the prompt as well as mid-reply;
``reconnectable`` tells a connection that dropped (the server went away, restarts, the network failed) from one
the server meant to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from .errors import ConversationGone, Exit, key_needed
from .render import describe_close, describe_error
from .urls import DEFAULT_URL, session_url, shown_url
from .view import ReplyView

CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
RECONNECT_CODES = frozenset({None, 1001, 1006, 1011, 1012, 1013, 1014})
SESSION_TIMEOUT = 30.0  # for the server's first frame


class Session:
    def __init__(self, ws: ClientConnection, first: dict[str, Any], view: ReplyView,
                 on_new_conversation: Callable[[str], None]):
        self.ws = ws
        self.view = view
        self.on_new_conversation = on_new_conversation
        self.conversation_id: str | None = first.get("conversation_id") or None
        self.turns: list[dict[str, Any]] = [t for t in first.get("turns") or [] if isinstance(t, dict)]
        reply = first.get("reply")
        self.reply: dict[str, Any] | None = reply if isinstance(reply, dict) else None
        self.pending: list[dict[str, Any]] = [p for p in first.get("pending") or [] if isinstance(p, dict)]
        self.resumed = False  # opened again after a lost connection
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.lost_code: int | None = None
        self._failed = False
        self._closing = False
        self._sending: set[asyncio.Task] = set()
        self._receiver: asyncio.Task | None = None

    @property
    def running_reply_id(self) -> str | None:
        """The reply of this conversation running when the session opened (its frames follow)."""
        if self.reply is None or self.reply.get("status") != "running" or not self.reply.get("reply_id"):
            return None
        return str(self.reply["reply_id"])

    @property
    def reconnectable(self) -> bool:
        return not self._failed and self.lost_code in RECONNECT_CODES

    def start(self) -> None:
        """Begin receiving (once what the first frame holds has been shown)."""
        if self._receiver is None:
            self._receiver = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        code, reason = None, "the connection dropped"
        try:
            async for raw in self.ws:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(frame, dict):
                    self._received(frame)
            code, reason = self.ws.close_code, describe_close(self.ws.close_code, self.ws.close_reason or "")
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                code, reason = exc.rcvd.code, describe_close(exc.rcvd.code, exc.rcvd.reason)
        except Exception as exc:  # a bug in a handler: end the session rather than hang the prompt
            self._failed, reason = True, f"the client failed on a frame: {exc!r}"
        finally:
            self.lost_code, self.lost_reason = code, reason
            if not self._closing:
                self.lost.set()

    def _received(self, frame: dict[str, Any]) -> None:
        conversation_id = frame.get("conversation_id")
        if frame.get("type") == "start" and conversation_id and self.conversation_id is None:
            self.conversation_id = str(conversation_id)
            self.on_new_conversation(self.conversation_id)
        self.view.dispatch(frame)

    # Sending

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    def cancel(self) -> None:
        """Ask the server to stop the reply in flight (its ``cancelled`` frame ends it)."""
        task = asyncio.create_task(self._send_quietly({"type": "cancel"}))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_quietly(self, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):  # the receiver reports the loss
            await self.send(frame)

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._receiver is not None:
            with contextlib.suppress(BaseException):
                await self._receiver


async def open_session(url: str, token: str | None, conversation_id: str | None, view: ReplyView,
                       on_new_conversation: Callable[[str], None], after: int = 0) -> Session:
    """A new session (on ``conversation_id``, or for a new conversation; a running reply's frames after
    ``after``), not yet receiving; raises ``ConversationGone`` or ``Exit``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        ws = await connect(session_url(url, conversation_id, after), additional_headers=headers, max_size=None,
                           open_timeout=10, close_timeout=2)
    except (InvalidURI, ValueError) as exc:
        raise Exit(2, f"{shown_url(url)} is not a WebSocket URL like {DEFAULT_URL}: {describe_error(exc)}") from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 401:
            raise key_needed(url, token) from None
        raise Exit(1, f"the server at {shown_url(url)} answered HTTP {status} instead of opening a "
                      f"WebSocket: is that the agent server's /agent/ws?") from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise Exit(1, f"cannot reach the server at {shown_url(url)}: {describe_error(exc)}") from None
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), SESSION_TIMEOUT))
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        if code == CLOSE_UNAUTHORIZED:
            raise key_needed(url, token) from None
        if code == CLOSE_NOT_FOUND and conversation_id:
            raise ConversationGone(conversation_id) from None
        reason = describe_close(code, exc.rcvd.reason if exc.rcvd else "")
        raise Exit(1, f"the server at {shown_url(url)} ended the connection at once ({reason})") from None
    except (TimeoutError, ValueError):
        await ws.close()
        raise Exit(1, f"the server at {shown_url(url)} did not open a chat session") from None
    if not isinstance(first, dict) or first.get("type") != "session":
        await ws.close()
        error = first.get("error") if isinstance(first, dict) and isinstance(first.get("error"), dict) else {}
        if error.get("type") == "not_found_error" and conversation_id:
            raise ConversationGone(conversation_id)
        if error.get("type") == "authentication_error":
            raise key_needed(url, token)
        if error:
            raise Exit(1, f"error ({error.get('type')}): {error.get('message')}")
        raise Exit(1, f"the server at {shown_url(url)} did not open a chat session")
    return Session(ws, first, view, on_new_conversation)
