"""A lost connection, mended: the client reconnects by itself and carries on the reply it was showing.

The loss is said in one line; then a new session is opened with a growing pause (0.5, 1, 2, 4... s, at most 10 s;
Ctrl-C stops trying and quits) on the same conversation, asking for the running reply's frames after the last one
shown (``after``). If that reply still runs, its frames carry on exactly where they stopped. If it finished
meanwhile, its status is read (``GET /replies/{id}``) and its missing frames replayed from storage (``GET
/replies/{id}/events``), or, when those are gone, its stored text not yet shown (the audit) and how it ended.

A session opened again also checks, while it waits, that a reply it follows still runs: a reply whose process
died can end without any frame reaching a follower that had already seen past what was stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .errors import ConversationGone, Exit
from .http import ApiError
from .render import content_text, tool_result_line, tool_use_line
from .session import Session
from .terminal import first_of
from .view import TERMINAL

if TYPE_CHECKING:
    from .client import ChatClient

FIRST_PAUSE, MAX_PAUSE = 0.5, 10.0
STALL_SECONDS = 3.0


class Reconnector:
    def __init__(self, client: ChatClient):
        self.client = client

    async def reconnect(self) -> int | None:
        """After ``client.session`` was lost: None once a new session is in place, else the exit status."""
        client = self.client
        old = client.session
        assert old is not None
        if not old.reconnectable:
            return client.connection_lost(old)
        client.output.note(f"connection to the server lost ({old.lost_reason}); reconnecting (Ctrl-C quits)")
        session = await self._connect_again(old.conversation_id)
        if session is None:  # Ctrl-C
            resume = f"; run agent-server chat again to resume {old.conversation_id}" if old.conversation_id else ""
            client.output.note(f"(stopped reconnecting{resume})")
            return 1
        await client.switch(session)
        await self._carry_on(session)
        return None

    async def _connect_again(self, conversation_id: str | None) -> Session | None:
        client, view = self.client, self.client.view
        pause = FIRST_PAUSE
        while True:
            client.ctrl_c.clear()
            what, _ = await first_of(interrupt=client.ctrl_c.wait(), pause=asyncio.sleep(pause))
            if what == "interrupt":
                return None
            after = view.progress.last_seq if view.following else 0
            try:
                what, session = await first_of(session=client.connect(conversation_id, after),
                                               interrupt=client.ctrl_c.wait())
            except ConversationGone as gone:
                raise Exit(1, f"conversation {gone.conversation_id} is no longer on the server") from None
            except Exit as exc:
                if exc.status != 1:
                    raise
                pause = min(pause * 2, MAX_PAUSE)
                continue
            if what == "interrupt":
                return None
            session.resumed = True
            return session

    async def _carry_on(self, session: Session) -> None:
        client, view, output = self.client, self.client.view, self.client.output
        following, running = view.following, session.running_reply_id
        if following is not None and running == following:
            output.note("(reconnected: the reply carries on)")
            output.continued = True
            session.start()
            return
        output.note("(reconnected)")
        if following is not None:  # it ended meanwhile
            output.continued = True
            await self.catch_up(following)
            if running is not None:  # and another runs, followed from after our last seq: from its start instead
                try:
                    fresh = await client.connect(session.conversation_id)
                except (Exit, ConversationGone):
                    fresh = None
                if fresh is not None:
                    fresh.resumed = True
                    await client.switch(fresh)
                    session = fresh
        waiter = view.waiter
        if running is not None and (waiter is None or waiter.ended.is_set()):
            view.expect()  # its frames follow: wait for its end before the prompt
        session.start()
        if running is not None or following is not None or waiter is None or waiter.ended.is_set():
            return
        # A message (or answers) sent, and no frame of its reply seen.
        lost = next((t.get("reply_id") for t in reversed(session.turns) if t.get("reply_id")), None)
        if lost is not None and lost not in view.seen:
            view.follow(str(lost))
            await self.catch_up(str(lost))
        elif session.pending:
            view.paused(session.pending)
        elif waiter.message is not None and not waiter.sent:
            await client.send_waited(waiter)
        else:
            output.note("(the message may not have reached the server: send it again)")
            view.finish()

    async def catch_up(self, reply_id: str) -> None:
        """Show the end of ``reply_id``, which no session follows any more (it finished, or its process died)."""
        client, view = self.client, self.client.view
        shown = view.progress.last_seq
        try:
            status = await client.api.reply(reply_id)
            if status.get("status") == "running":
                return  # after all: ``watch`` looks again
            last = status.get("last_seq") if isinstance(status.get("last_seq"), int) else 0
            after = min(shown, max(last - 1, 0))
            frames = await client.api.events(reply_id, after)
        except ApiError as exc:
            client.output.note(f"(how the reply ended cannot be read: {exc})")
            view.finish()
            return
        if not frames or frames[0]["seq"] > after + 1:  # its events are gone: the stored text instead
            await self._stored_rest(reply_id)
            frames = [frame for frame in frames if frame.get("type") in TERMINAL]
        for frame in frames:
            view.dispatch(frame)
        if view.following == reply_id:  # still no end
            client.output.note(f"(the reply ended meanwhile: {status.get('status', 'unknown')})")
            view.progress.ended = True
            view.finish()

    async def _stored_rest(self, reply_id: str) -> None:
        """The stored turns of ``reply_id`` not shown yet: text past what was shown, tool calls and results."""
        client, progress = self.client, self.client.view.progress
        conversation_id = client.session.conversation_id if client.session else None
        if not conversation_id:
            return
        try:
            turns = (await client.api.audit(conversation_id)).get("turns") or []
        except ApiError:
            return
        shown = progress.text
        for turn in turns:
            if not isinstance(turn, dict) or turn.get("reply_id") != reply_id or not turn.get("step"):
                continue
            blocks = [block for block in turn.get("blocks") or [] if isinstance(block, dict)]
            if turn.get("role") == "assistant":
                text = content_text(turn.get("content"))
                if shown.startswith(text):
                    shown = shown[len(text):]
                else:
                    client.output.reply_text(text[len(shown):] if text.startswith(shown) else text)
                    shown = ""
                for block in blocks:
                    if block.get("type") == "tool_use" and block.get("id") not in progress.tools:
                        client.output.line(tool_use_line(block.get("name"), block.get("input")))
            for block in blocks:
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in progress.results:
                    client.output.line(tool_result_line(block.get("content"), block.get("is_error")))

    async def watch(self) -> None:
        """Returns once a reply followed on a resumed session turns out to have ended with no frame saying so."""
        view = self.client.view
        while True:
            await asyncio.sleep(STALL_SECONDS)
            reply_id = view.following
            if reply_id is None or time.monotonic() - view.last_frame_at < STALL_SECONDS:
                continue
            try:
                status: dict[str, Any] = await self.client.api.reply(reply_id)
            except ApiError:
                continue
            if status.get("status") != "running":
                await self.catch_up(reply_id)
                return
