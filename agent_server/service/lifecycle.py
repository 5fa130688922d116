"""A conversation's lifecycle: its title, its deletion, and what expires on its own (retention, reply events).

Deleting removes every piece of content — turns, tool runs, replies, reply events, the title and system prompt —
in one transaction, on SQLite and PostgreSQL alike; the calls stay in the ledger (owner, model, tokens, cost,
times) with their links to the deleted turns cleared, so usage and budgets still count them. On SQLite the freed
pages are overwritten (``secure_delete``); see docs/operations.md for what PostgreSQL keeps until VACUUM.

The sweeper runs hourly on one instance at a time (a job lease in the database, held by this ``Lifecycle``: two
apps in one process are two instances too) and works in small batches, each its own short transaction, so it never
holds the write lock for long. A batch is chosen inside the transaction that deletes it, so a reply that starts on a
conversation meanwhile keeps it (a conversation whose reply runs is never swept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, select, update

from .. import errors
from ..db import lease, reads, writes
from ..db.base import Database
from ..db.lease import this_process
from ..text import unstorable
from ..db.models import Conversation, Reply, ReplyEvent, ToolRun, Turn, UpstreamCall, utcnow

log = logging.getLogger(__name__)
SWEEP_EVERY_SECONDS = 3600
BATCH = 20  # conversations per transaction
EVENTS_BATCH = 500  # replies whose events expire, per transaction
TITLE_CHARS = 200


def clean_title(title: str) -> str:
    title = " ".join(title.split())
    if not title:
        raise errors.ValidationFailed("Invalid request: title: must contain more than whitespace.")
    if len(title) > TITLE_CHARS:
        raise errors.ValidationFailed(f"Invalid request: title: is longer than {TITLE_CHARS} characters.")
    problem = unstorable(title)
    if problem is not None:
        raise errors.ValidationFailed(f"Invalid request: title: {problem}.")
    return title


async def delete_conversations(conn, *, conversation_ids: list[str]) -> int:
    """Every piece of content of these conversations, in one transaction; the ledger keeps its calls."""
    if not conversation_ids:
        return 0
    replies = select(Reply.id).where(Reply.conversation_id.in_(conversation_ids))
    await conn.execute(delete(ReplyEvent).where(ReplyEvent.reply_id.in_(replies)))
    await conn.execute(delete(ToolRun).where(ToolRun.conversation_id.in_(conversation_ids)))
    await conn.execute(update(UpstreamCall).where(UpstreamCall.conversation_id.in_(conversation_ids))
                       .values(prompt_turn_id=None, turn_id=None))
    await conn.execute(delete(Turn).where(Turn.conversation_id.in_(conversation_ids)))
    await conn.execute(delete(Reply).where(Reply.conversation_id.in_(conversation_ids)))
    result = await conn.execute(delete(Conversation).where(Conversation.id.in_(conversation_ids)))
    return result.rowcount


async def set_title(conn, *, owner: str, conversation_id: str, title: str, now: datetime):  # type: ignore[no-untyped-def]
    result = await conn.execute(update(Conversation).where(Conversation.id == conversation_id,
                                                           Conversation.owner == owner)
                                .values(title=title, updated_at=now))
    if result.rowcount == 0:
        raise errors.conversation_not_found(conversation_id)


class Lifecycle:
    def __init__(self, db: Database, replies, *, retention_days: float | None, events_hours: float,  # type: ignore[no-untyped-def]
                 clock: Callable[[], datetime] = utcnow):
        self.db = db
        self.replies = replies  # ReplyService: cancels a running reply before its conversation goes
        self.retention_days = retention_days
        self.events_hours = events_hours
        self.clock = clock
        self._task: asyncio.Task | None = None
        # This instance, not only this process: two apps of one process must not both sweep in one period.
        self._holder = f"{this_process().machine}/{this_process().pid}/{secrets.token_hex(4)}"[-200:]

    async def rename(self, *, owner: str, conversation_id: str, title: str) -> reads.ConversationRecord:
        await self.db.write(set_title, owner=owner, conversation_id=conversation_id, title=clean_title(title),
                            now=self.clock())
        async with self.db.read() as conn:
            record = await reads.get_conversation(conn, conversation_id=conversation_id, owner=owner)
        if record is None:
            raise errors.conversation_not_found(conversation_id)
        return record

    async def delete(self, *, owner: str, conversation_id: str) -> None:
        for _ in range(3):  # a reply may start between the cancel and the delete: cancel that one too
            running = await self.replies.running_reply_of(owner=owner, conversation_id=conversation_id)  # 404
            if running is not None:
                await self.replies.cancel(owner=owner, reply_id=running)
            deleted = await self.db.write(_delete_owned, owner=owner, conversation_id=conversation_id, now=utcnow(),
                                          heavy=True)
            if deleted != _BUSY:
                break
        else:
            raise errors.Conflict("This conversation is generating a reply that could not be stopped; try again.")
        if not deleted:
            raise errors.conversation_not_found(conversation_id)

    # -- the sweeper ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._sweep_forever(), name="lifecycle-sweeper")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sweep_forever(self) -> None:
        await asyncio.sleep(60)  # not on the way to start-up
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("the retention sweep failed (next try in an hour): %s", type(exc).__name__)
            await asyncio.sleep(SWEEP_EVERY_SECONDS)

    async def sweep(self) -> dict[str, int]:
        """One pass, if this process holds the sweeper's lease: expired conversations and reply events."""
        now = self.clock()
        # Held for most of the period: the holder's next pass finds it expired and takes it again, another
        # instance's pass in between finds it held. One sweep an hour across instances; a dead holder's lease
        # is taken over by the next pass after it expired.
        if not await self.db.write(writes.take_job_lease, name="sweeper", holder=self._holder, now=now,
                                   expires_at=now + timedelta(seconds=SWEEP_EVERY_SECONDS * 0.9)):
            return {"conversations": 0, "reply_events": 0}
        deleted = 0
        if self.retention_days is not None:
            cutoff = now - timedelta(days=self.retention_days)
            while True:
                count = await self.db.write(_delete_expired, cutoff=cutoff, heavy=True)
                if not count:
                    break
                deleted += count
                await asyncio.sleep(0)  # between batches, others write
        expired = replies_expired = 0
        events_cutoff = now - timedelta(hours=self.events_hours)
        while True:
            async with self.db.read() as conn:
                batch = [row[0] for row in await conn.execute(
                    select(Reply.id).where(Reply.finished_at < events_cutoff, Reply.last_seq > 1,
                                           Reply.status != "running")
                    .where(select(ReplyEvent.seq).where(ReplyEvent.reply_id == Reply.id,
                                                        ReplyEvent.seq < Reply.last_seq).exists())
                    .limit(EVENTS_BATCH))]
            if not batch:
                break
            expired += await self.db.write(_expire_events, reply_ids=batch, heavy=True)
            replies_expired += len(batch)
            await asyncio.sleep(0)
        if deleted or expired:
            log.info("sweep: %d conversations past retention deleted, events of %d replies expired", deleted,
                     replies_expired)
        return {"conversations": deleted, "reply_events": expired}


_BUSY = -1  # _delete_owned: a reply holds the conversation's lease


async def _delete_owned(conn, *, owner: str, conversation_id: str, now: datetime) -> int:
    owned = (await conn.execute(select(Conversation).where(Conversation.id == conversation_id,
                                                           Conversation.owner == owner).with_for_update())
             ).one_or_none()
    if owned is None:
        return 0
    if not lease.is_free(owned, now):
        return _BUSY
    return await delete_conversations(conn, conversation_ids=[conversation_id])


async def _delete_expired(conn, *, cutoff: datetime) -> int:
    """One batch of the conversations not updated since ``cutoff`` and not generating a reply, chosen and deleted in
    this one transaction (chosen in an earlier one, a reply could start on one before it went)."""
    query = (select(Conversation.id).where(Conversation.updated_at < cutoff, Conversation.lock_token.is_(None))
             .order_by(Conversation.updated_at).limit(BATCH))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)  # a reply opening on one of them has it: skip it
    batch = [row[0] for row in await conn.execute(query)]
    return await delete_conversations(conn, conversation_ids=batch)


async def _expire_events(conn, *, reply_ids: list[str]) -> int:
    """Every event of these finished replies but the last (their ``done`` or ``error``, kept for good)."""
    last = select(Reply.last_seq).where(Reply.id == ReplyEvent.reply_id).scalar_subquery()
    result = await conn.execute(delete(ReplyEvent).where(and_(ReplyEvent.reply_id.in_(reply_ids),
                                                              ReplyEvent.seq < last)))
    return result.rowcount
