"""A reply's numbered events: emitted at the upstream's pace, followed by any number of readers, stored in batches.

``Journal`` (one per running reply) keeps the events in memory and wakes its followers; a follower is a cursor,
so a slow one never holds the reply back, and once it falls behind what memory keeps it is fed from storage.

``EventStore`` (one per process) writes the events of every running reply in one transaction every
``FLUSH_SECONDS`` (never a transaction per token), then tells other processes which replies have new events
(the notification channel carries ids only). A reply's last events — the final ``done``/``error``/``cancelled``
among them — are stored by the transaction that ends the reply, so a client that sees ``done`` can read it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

from ..db import reads, writes
from ..db.base import Database
from ..db.models import utcnow
from ..db.writes import Op
from .events import Event, Numbered, number

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.15
KEEP_IN_MEMORY = 4096  # events a running reply keeps for its followers; older ones are read back from storage
STORAGE_PAGE = 500


class Journal:
    def __init__(self, reply_id: str, store: EventStore, *, first_seq: int = 1):
        self.reply_id = reply_id
        self._store = store
        self._events: list[Numbered] = []
        self._base = first_seq - 1  # seq of the event before the first one held in memory
        self._pending: list[dict] = []  # rows not yet handed to the store
        self._flushed_to = first_seq - 1
        self._inflight: asyncio.Future | None = None
        self._waiters: set[asyncio.Future] = set()  # one per follower that has seen every event
        # Operations stored with each batch of this reply's events (the running call's usage so far).
        self.progress: Callable[[], list[Op]] = list
        self.closed = False

    @property
    def waiting(self) -> bool:
        """Someone follows this reply live and has seen every event so far."""
        return bool(self._waiters)

    @property
    def last_seq(self) -> int:
        return self._base + len(self._events)

    def emit(self, event: Event) -> Numbered:
        """Number ``event``, hand it to followers now and to storage with the next batch."""
        numbered = number(self.last_seq + 1, event.name, event.data())
        self._append(numbered)
        self._pending.append(_row(self.reply_id, numbered))
        self._store.dirty(self)
        return numbered

    def prepare_final(self, event: Event) -> tuple[Numbered, list[dict]]:
        """The final event, numbered but not yet shown, and every row still to store, the final one included:
        the transaction that ends the reply writes them; ``publish_final`` shows the event once it committed."""
        numbered = number(self.last_seq + 1, event.name, event.data())
        rows, self._pending = self._pending + [_row(self.reply_id, numbered)], []
        return numbered, rows

    async def settled(self) -> None:
        """Wait until a batch in flight with some of this reply's events is stored (or has failed)."""
        while self._inflight is not None and not self._inflight.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._inflight)

    def publish_final(self, numbered: Numbered) -> None:
        self._append(numbered)
        self.close()
        self._store.ended(self.reply_id)

    def close(self) -> None:
        self.closed = True
        self._pending = []
        self._store.forget(self)
        self._notify()

    def _append(self, numbered: Numbered) -> None:
        self._events.append(numbered)
        if len(self._events) > KEEP_IN_MEMORY and self._flushed_to > self._base + KEEP_IN_MEMORY // 2:
            drop = min(self._flushed_to - self._base, len(self._events) - KEEP_IN_MEMORY // 2)
            del self._events[:drop]
            self._base += drop
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- the store's side ----------------------------------------------------------------------------------

    def take_pending(self, inflight: asyncio.Future) -> list[dict]:
        rows, self._pending = self._pending, []
        if rows:
            self._inflight = inflight
        return rows

    def stored(self, rows: list[dict]) -> None:
        self._flushed_to = max(self._flushed_to, rows[-1]["seq"])

    def give_back(self, rows: list[dict]) -> None:
        self._pending = rows + self._pending

    # -- followers -----------------------------------------------------------------------------------------

    async def follow(self, after: int) -> AsyncIterator[Numbered]:
        """Every event after ``after``, then each new one as it comes, until the reply's last."""
        cursor = after
        while True:
            if cursor < self._base:
                rows = await self._store.read_after(self.reply_id, cursor)
                for seq, name, data in rows:
                    if seq > self._base:
                        break
                    yield _stored(seq, name, data)
                    cursor = seq
                else:
                    if not rows:  # evicted but not stored (cannot happen): skip rather than spin
                        cursor = self._base
                continue
            index = cursor - self._base
            if index < len(self._events):
                event = self._events[index]
                cursor = event.seq
                yield event
                continue
            if self.closed:
                return
            # A future of its own (not one shared and shielded): woken in one turn of the loop, not two, and a
            # follower that goes away (its client left) cancels nobody else's.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)


def _row(reply_id: str, event: Numbered, now: datetime | None = None) -> dict:
    return {"reply_id": reply_id, "seq": event.seq, "type": event.name, "data": event.json,
            "created_at": now or utcnow()}


def _stored(seq: int, name: str, data: str) -> Numbered:
    import json

    return Numbered(seq, name, json.loads(data), data)


def from_storage(rows) -> list[Numbered]:  # type: ignore[no-untyped-def]
    return [_stored(seq, name, data) for seq, name, data in rows]


class EventStore:
    """Stores every running reply's events of this process, in one transaction per batch."""

    def __init__(self, db: Database, *, on_stored: Callable[[set[str]], Awaitable[None]] | None = None):
        self._db = db
        self._dirty: dict[int, Journal] = {}
        self._on_stored = on_stored
        self._kick = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._announcing: set[asyncio.Task] = set()
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-store")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        if self._announcing:
            await asyncio.gather(*self._announcing, return_exceptions=True)

    def ended(self, reply_id: str) -> None:
        """A reply's last events were stored by the transaction that ended it (not by a batch): tell the other
        processes now, so that their followers see the end at once rather than at their next poll."""
        if self._on_stored is None:
            return
        task = asyncio.ensure_future(self._on_stored({reply_id}))
        self._announcing.add(task)
        task.add_done_callback(self._announced)

    def _announced(self, task: asyncio.Task) -> None:
        self._announcing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not announce the end of a reply: %s", type(task.exception()).__name__)

    def dirty(self, journal: Journal) -> None:
        if id(journal) not in self._dirty:
            self._dirty[id(journal)] = journal
            self._kick.set()

    def forget(self, journal: Journal) -> None:
        self._dirty.pop(id(journal), None)

    async def read_after(self, reply_id: str, after: int) -> list:
        async with self._db.read() as conn:
            return await reads.events_after(conn, reply_id=reply_id, after=after, limit=STORAGE_PAGE)

    async def _run(self) -> None:
        delay = FLUSH_SECONDS
        while True:
            await self._kick.wait()
            await asyncio.sleep(delay)
            self._kick.clear()
            try:
                await self.flush()
                delay = FLUSH_SECONDS
            except Exception as exc:
                self.failures += 1
                delay = min(delay * 2, 5.0)
                self._kick.set()
                log.warning("could not store reply events (retrying in %.1fs): %s", delay, type(exc).__name__)

    async def flush(self) -> None:
        journals, self._dirty = list(self._dirty.values()), {}
        if not journals:
            return
        inflight = asyncio.get_running_loop().create_future()
        batches = [(journal, journal.take_pending(inflight)) for journal in journals]
        rows = [row for _, batch in batches for row in batch]
        try:
            if rows:
                progress = [op for journal, batch in batches if batch for op in journal.progress()]
                await self._db.write(writes.apply, ops=[writes.insert_events(rows), *progress])
        except BaseException:
            for journal, batch in batches:
                if batch:
                    journal.give_back(batch)
                    self.dirty(journal)
            inflight.set_result(None)
            raise
        for journal, batch in batches:
            if batch:
                journal.stored(batch)
        inflight.set_result(None)
        if self._on_stored is not None and rows:
            await self._on_stored({journal.reply_id for journal, batch in batches if batch})
