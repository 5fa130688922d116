"""The reply use cases shared by every route: start one (or continue a paused one), follow its events from any
process, read its status, cancel it wherever it runs. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..channel.base import Channel, wait_for
from ..db import lease, reads, writes
from ..db.models import new_id, utcnow
from ..engine import blocks as b
from ..engine.events import Numbered
from ..engine.history import Message
from ..engine.journal import from_storage
from ..engine.plan import EngineContext, ReplyPlan
from ..engine.reply import ReplyProcess
from ..engine.supervisor import Supervisor
from .budgets import Budgets
from .opening import Opened, open_reply

log = logging.getLogger(__name__)
FINAL = ("complete", "requires_action", "failed", "cancelled", "interrupted")


@dataclass(frozen=True)
class ReplyRequest:
    message: str | None = None
    conversation_id: str | None = None
    system: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    tools: list[str] | None = None
    tool_choice: dict | None = None
    thinking: dict | None = None
    answers: list[dict] = field(default_factory=list)  # {"kind": approval|client_tool, "tool_use_id", ...}


@dataclass(frozen=True)
class ReplyStatus:
    reply_id: str
    conversation_id: str
    status: str
    turn_id: str | None
    steps: int
    totals: reads.Totals
    created_at: Any
    finished_at: Any
    last_seq: int


class ReplyService:
    def __init__(self, ctx: EngineContext, supervisor: Supervisor, channel: Channel, budgets: Budgets, *,
                 default_model: str, default_max_tokens: int, poll_seconds: float = 1.0):
        self.ctx = ctx
        self.supervisor = supervisor
        self.channel = channel
        self.budgets = budgets
        self.default_model = default_model
        self.default_max_tokens = default_max_tokens
        self.poll_seconds = poll_seconds
        self._holder = lease.this_process()

    @property
    def draining(self) -> bool:
        return self.supervisor.draining

    async def start(self, *, owner: str, request: ReplyRequest, route: str) -> ReplyProcess:
        """Open a reply (its prompt and first call stored, its lease taken) and launch it."""
        if self.supervisor.draining:
            raise errors.ShuttingDown("The server is shutting down; try again in a moment.")
        if request.model is not None and request.model not in self.ctx.prices:
            raise errors.ValidationFailed(f"Unknown model {request.model!r}.")
        await self.budgets.check(owner)
        reply_id, call_id, token = new_id("reply"), new_id("call"), lease.new_token()
        try:
            await self.supervisor.slots.take(owner, reply_id)
        except errors.RateLimited:
            self.ctx.metrics.rate_limited.labels("concurrency").inc()
            raise
        try:
            prompt = b.encode(b.text_blocks(request.message)) if request.message is not None else None
            opened = await self.ctx.db.write(
                open_reply, owner=owner, conversation_id=request.conversation_id, system=request.system,
                model=request.model, default_model=self.default_model, prompt_blocks=prompt, answers=request.answers,
                reply_id=reply_id, call_id=call_id, token=token, holder=self._holder, route=route, now=utcnow(),
            )
        except BaseException:
            await self.supervisor.slots.give_back(owner, reply_id)
            raise
        plan = self._plan(owner, request, route, reply_id, opened, prompt, token=token,
                          first_call_id=call_id if opened.prompt_turn_id is not None else None)
        process = self.supervisor.launch(plan)
        # Let it run to its first wait (the upstream request on its way) before the caller builds its response.
        await asyncio.sleep(0)
        return process

    def _plan(self, owner: str, request: ReplyRequest, route: str, reply_id: str, opened: Opened, prompt: str | None,
              *, token: str, first_call_id: str | None) -> ReplyPlan:
        message = Message("user", prompt, b.estimate_tokens(prompt)) if prompt is not None else None
        late = opened.continues is not None and message is not None
        max_tokens = request.max_tokens or self.default_max_tokens
        thinking = None
        if request.thinking is not None:
            thinking = {"type": "enabled", "budget_tokens": request.thinking["budget_tokens"]}
        return ReplyPlan(
            reply_id=reply_id, conversation_id=opened.conversation_id, owner=owner, route=route, model=opened.model,
            max_tokens=max_tokens, system=opened.system, tool_names=request.tools, tool_choice=request.tool_choice,
            thinking=thinking, lease_token=token, prompt=None if late else message,
            prompt_turn_id=opened.prompt_turn_id, first_call_id=first_call_id, next_seq=opened.next_seq,
            before_seq=opened.before_seq, context_from_seq=opened.context_from_seq, continues=opened.continues,
            late_prompt=message if late else None,
        )

    # -- following, status, cancel -------------------------------------------------------------------------

    async def status(self, *, owner: str, reply_id: str) -> ReplyStatus:
        process = self.supervisor.get(reply_id)
        async with self.ctx.db.read() as conn:
            row = await reads.get_reply(conn, reply_id=reply_id, owner=owner)
            if row is None:
                raise errors.NotFound("Reply not found.")
            totals = await reads.totals_by_reply(conn, reply_id=reply_id)
            last_seq = row.last_seq
            if row.status == "running" and process is None:
                # Running elsewhere: its row says nothing of its events until it ends; what is stored does.
                stored = await reads.last_event(conn, reply_id=reply_id)
                last_seq = stored.seq if stored is not None else 0
        if process is not None:
            last_seq = process.journal.last_seq
        return ReplyStatus(row.id, row.conversation_id, row.status, row.turn_id, row.steps, totals, row.created_at,
                           row.finished_at, last_seq)

    async def follow(self, *, owner: str, reply_id: str, after: int = 0) -> AsyncIterator[Numbered]:
        """The reply's events after ``after``: replayed from storage (or memory), then live until its last one,
        whichever process runs it. Raises NotFound for another owner's reply."""
        process = self.supervisor.get(reply_id)
        if process is not None:
            if process.owner != owner:
                raise errors.NotFound("Reply not found.")
            return process.journal.follow(after)
        async with self.ctx.db.read() as conn:
            row = await reads.get_reply(conn, reply_id=reply_id, owner=owner)
        if row is None:
            raise errors.NotFound("Reply not found.")
        return self._follow_stored(reply_id, after)

    async def _follow_stored(self, reply_id: str, after: int) -> AsyncIterator[Numbered]:
        cursor = after
        while True:
            # Listening before reading: a batch stored between the read and the wait still wakes it.
            stored = wait_for(self.channel, "events", lambda payload: reply_id in payload.split(","),
                              self.poll_seconds)
            try:
                async with self.ctx.db.read() as conn:
                    rows = await reads.events_after(conn, reply_id=reply_id, after=cursor)
                    reply = await reads.get_reply(conn, reply_id=reply_id) if not rows else None
                for event in from_storage(rows):
                    cursor = event.seq
                    yield event
                    if event.terminal:
                        return
                if rows:
                    continue
                if reply is None:
                    return  # deleted meanwhile
                if reply.status != "running":
                    final = await self._final_event(reply)
                    if final is not None and final.seq > cursor:
                        yield final
                    elif final is not None and final.terminal and (
                            cursor > reply.last_seq or (cursor == reply.last_seq and reply.status == "interrupted")):
                        # The follower saw events its dead process never stored (an interrupted reply): the end
                        # is numbered after what it saw, so that its numbers keep going up. At the end's own
                        # number the follower's event was one of those (a follower that got the end stops).
                        yield Numbered(cursor + 1, final.name, final.data, final.json)
                    return
                process = self.supervisor.get(reply_id)
                if process is not None:  # it moved here? (a continuation cannot; but be exact)
                    async for event in process.journal.follow(cursor):
                        yield event
                    return
                if await self._abandoned(reply):
                    continue
                await stored
            finally:
                if not stored.done():
                    stored.cancel()

    async def _abandoned(self, reply) -> bool:  # type: ignore[no-untyped-def]
        """A running reply whose process died: close it now (any instance may), so its follower gets the end."""
        closed = await self.supervisor.sweep()
        return reply.id in closed

    async def _final_event(self, reply) -> Numbered | None:  # type: ignore[no-untyped-def]
        """The last event of a finished reply whose events have expired: kept with the reply, always."""
        async with self.ctx.db.read() as conn:
            row = await reads.last_event(conn, reply_id=reply.id)
        return from_storage([row])[0] if row is not None else None

    async def cancel(self, *, owner: str, reply_id: str) -> ReplyStatus:
        """Stop the reply wherever it runs; idempotent. Returns its status once it has stopped (or at once when
        another process runs it and it has not stopped within a few seconds)."""
        current = await self.status(owner=owner, reply_id=reply_id)
        if current.status != "running":
            return current
        process = self.supervisor.get(reply_id)
        if process is not None:
            process.cancel("cancelled")
            await process.wait()
            return await self.status(owner=owner, reply_id=reply_id)
        if reply_id in await self.supervisor.sweep():  # its process died: it is closed as interrupted, not stopped
            return await self.status(owner=owner, reply_id=reply_id)
        await self.ctx.db.write(writes.apply, ops=[writes.update_reply(reply_id, cancel_requested_at=utcnow())])
        await self.channel.publish("cancel", reply_id)
        for _ in range(50):
            status = await self.status(owner=owner, reply_id=reply_id)
            if status.status != "running":
                return status
            await wait_for(self.channel, "events", lambda payload: reply_id in payload.split(","), 0.1)
        return await self.status(owner=owner, reply_id=reply_id)

    async def running_reply_of(self, *, owner: str, conversation_id: str) -> str | None:
        """The reply generating on this conversation now (any process), if any."""
        async with self.ctx.db.read() as conn:
            record = await reads.get_conversation(conn, conversation_id=conversation_id, owner=owner)
            if record is None:
                raise errors.conversation_not_found(conversation_id)
            reply_id = await reads.running_reply_of(conn, conversation_id=conversation_id)
        return reply_id
