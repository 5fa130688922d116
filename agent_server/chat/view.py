"""The frames of replies, shown: one handler per frame ``type`` (unknown types are ignored, so a new kind of frame
is one more handler), and how far the reply in flight has been shown.

The view outlives connections: frames reach it from each ``Session`` in turn and, for a reply that finished while
the connection was down, from ``GET /replies/{id}/events``. Every frame of a reply carries its ``seq``; the view
remembers the last one it showed (``Progress``), so a frame it already showed is dropped and a reconnection asks
for the frames after it (``after``). A reply's last frame (``done``, ``error``, ``cancelled``) is shown even when
its ``seq`` is not past the last shown: a reply closed as ``interrupted`` after its process died numbers its final
frame after the frames that were stored, and some of those shown live may not have been.

What the prompt waits for is a ``Waiter``: the end of a reply (to a message, to answers, or one found running when
a conversation is opened). A ``done`` with status ``requires_action`` ends it too; the client then asks about the
pending actions, and the reply that starts once they are all answered gets a new waiter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .output import Output
from .render import error_line, tool_result_line, tool_use_line, usage_line

TERMINAL = frozenset({"done", "error", "cancelled"})
FrameHandler = Callable[[dict[str, Any]], None]


class Waiter:
    def __init__(self, message: str | None = None):
        self.ended = asyncio.Event()
        self.final: dict[str, Any] | None = None  # the frame that ended it (None: ended without one)
        self.message = message  # the message it waits for the reply to, when it was sent as one
        self.sent = False  # that message has been handed to the socket
        self.started = False  # its reply's ``start`` was shown
        self.cancelling = False


class Progress:
    """How far one reply has been shown."""

    def __init__(self, reply_id: str | None = None):
        self.reply_id = reply_id
        self.last_seq = 0
        self.ended = reply_id is None
        self.text = ""  # every text token shown, all steps
        self.tools: set[str] = set()  # tool_use ids shown
        self.results: set[str] = set()  # tool_result ids shown
        self.pending: list[dict[str, Any]] = []


class ReplyView:
    def __init__(self, output: Output):
        self.output = output
        self.progress = Progress()
        self.waiter: Waiter | None = None  # what the client has yet to finish waiting for
        self.seen: set[str] = set()  # reply ids begun here
        self.last_frame_at = time.monotonic()
        self.handlers: dict[str, FrameHandler] = {
            "start": self.on_start,
            "token": self.on_token,
            "thinking": self.on_thinking,
            "tool_use": self.on_tool_use,
            "tool_result": self.on_tool_result,
            "requires_action": self.on_requires_action,
            "done": self.on_done,
            "cancelled": self.on_cancelled,
            "error": self.on_error,
        }

    @property
    def following(self) -> str | None:
        """The reply shown in part, not yet to its end."""
        return None if self.progress.ended else self.progress.reply_id

    def expect(self, message: str | None = None) -> Waiter:
        self.waiter = Waiter(message)
        return self.waiter

    def follow(self, reply_id: str) -> None:
        """Show ``reply_id`` from its beginning (its frames come from elsewhere than a ``start``)."""
        if self.progress.reply_id != reply_id:
            self.progress = Progress(reply_id)
            self.seen.add(reply_id)

    def forget(self) -> None:
        """Another conversation: nothing of this one's replies is waited for."""
        self.progress, self.waiter = Progress(), None

    def paused(self, pending: list[dict[str, Any]]) -> None:
        """Actions wait for answers (found on opening a conversation): ask about them as after a reply."""
        self.finish({"type": "done", "status": "requires_action", "pending": pending}, waiter=self.expect())

    def finish(self, final: dict[str, Any] | None = None, waiter: Waiter | None = None) -> None:
        """End the wait (for the reply shown, unless ``waiter``), with ``final`` as its last frame."""
        self.output.end_lines()
        waiter = waiter or self.waiter
        if waiter is not None and not waiter.ended.is_set():
            waiter.final = final
            waiter.ended.set()

    # Dispatch

    def dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        seq = frame.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            if not self._fresh(str(kind), seq, frame):
                return
            self.last_frame_at = time.monotonic()
        handler = self.handlers.get(kind)  # type: ignore[arg-type]
        if handler is not None:
            handler(frame)

    def _fresh(self, kind: str, seq: int, frame: dict[str, Any]) -> bool:
        progress = self.progress
        if kind == "start" and frame.get("reply_id") != progress.reply_id:
            self.follow(str(frame.get("reply_id")))
            self.progress.last_seq = seq
            return True
        if seq <= progress.last_seq:
            return kind in TERMINAL and not progress.ended
        progress.last_seq = seq
        return True

    # Frame handlers

    def on_start(self, frame: dict[str, Any]) -> None:
        if self.waiter is None or self.waiter.ended.is_set():
            self.expect()  # a reply begun by itself (after answers, or found running)
        assert self.waiter is not None
        self.waiter.started = True
        self.output.continued = False

    def on_token(self, frame: dict[str, Any]) -> None:
        text = str(frame.get("text", ""))
        self.progress.text += text
        self.output.reply_text(text)

    def on_thinking(self, frame: dict[str, Any]) -> None:
        self.output.thinking(str(frame.get("text", "")))

    def on_tool_use(self, frame: dict[str, Any]) -> None:
        self.progress.tools.add(str(frame.get("id")))
        self.output.line(tool_use_line(frame.get("name"), frame.get("input"), frame.get("kind")))

    def on_tool_result(self, frame: dict[str, Any]) -> None:
        self.progress.results.add(str(frame.get("tool_use_id")))
        self.output.line(tool_result_line(frame.get("content"), frame.get("is_error")))

    def on_requires_action(self, frame: dict[str, Any]) -> None:
        pending = frame.get("pending") if isinstance(frame.get("pending"), list) else []
        self.progress.pending = [item for item in pending or [] if isinstance(item, dict)]

    def on_done(self, frame: dict[str, Any]) -> None:
        if frame.get("status") == "requires_action" and not isinstance(frame.get("pending"), list):
            frame = {**frame, "pending": self.progress.pending}
        self.output.note(usage_line(frame))
        self._ended(frame)

    def on_cancelled(self, frame: dict[str, Any]) -> None:
        self.output.note("(cancelled)")
        self._ended(frame)

    def on_error(self, frame: dict[str, Any]) -> None:
        self.output.note(error_line(frame))
        if "seq" in frame or self.following is None:  # a reply's end, or the answer to a frame sent
            self._ended(frame)

    def _ended(self, frame: dict[str, Any]) -> None:
        if "seq" in frame:
            self.progress.ended = True
        self.finish(frame)
