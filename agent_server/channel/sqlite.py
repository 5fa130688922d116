"""The channel between worker processes sharing one SQLite file: a small table, written by ``publish`` and polled
by every process every ``POLL_SECONDS`` (a read of the rows after the last one seen). Old rows are pruned."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlalchemy import delete, func, select

from ..db import writes
from ..db.models import Notification, utcnow
from .base import Channel

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2
KEEP = timedelta(seconds=60)


class SqliteChannel(Channel):
    cross_process = True

    def __init__(self, db) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self._db = db
        self._last = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        async with self._db.read() as conn:
            self._last = (await conn.execute(select(func.coalesce(func.max(Notification.id), 0)))).scalar() or 0
        self._task = asyncio.create_task(self._poll(), name="sqlite-channel")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def publish(self, topic: str, payload: str) -> None:
        await self._db.write(writes.apply, ops=[writes.insert_notification(topic=topic, payload=payload,
                                                                           now=utcnow())])

    async def _poll(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                async with self._db.read() as conn:
                    rows = (await conn.execute(
                        select(Notification.id, Notification.topic, Notification.payload)
                        .where(Notification.id > self._last).order_by(Notification.id))).fetchall()
                for row_id, topic, payload in rows:
                    self._last = row_id
                    self.deliver(topic, payload)
                rounds += 1
                if rounds % 300 == 0:
                    await self._db.write(_prune, before=utcnow() - KEEP)
            except Exception as exc:
                log.warning("notification poll failed: %s", type(exc).__name__)


async def _prune(conn, *, before) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(delete(Notification).where(Notification.created_at < before))
