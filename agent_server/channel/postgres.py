"""The channel over PostgreSQL ``LISTEN/NOTIFY``: one dedicated connection listens; a notification carries ids
only (payloads must stay under 8,000 bytes), so a long list of reply ids is sent in several notifications. If the
listening connection drops, it reconnects; what was missed meanwhile is found by the listeners' own polling."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from sqlalchemy.engine import make_url

from .base import TOPICS, Channel

log = logging.getLogger(__name__)
MAX_PAYLOAD = 7000
_PREFIX = "agent_server_"


def _dsn(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def chunks(payload: str) -> list[str]:
    """Comma-separated ids split into notifications that fit the payload limit."""
    if len(payload) <= MAX_PAYLOAD:
        return [payload]
    out, current = [], ""
    for item in payload.split(","):
        if current and len(current) + len(item) + 1 > MAX_PAYLOAD:
            out.append(current)
            current = item
        else:
            current = f"{current},{item}" if current else item
    return [*out, current] if current else out


class PostgresChannel(Channel):
    cross_process = True

    def __init__(self, database_url: str):
        super().__init__()
        self._dsn = _dsn(database_url)
        self._listener: psycopg.AsyncConnection | None = None
        self._sender: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="pg-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 10)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for conn in (self._listener, self._sender):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                self._listener = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                for topic in TOPICS:
                    await self._listener.execute(f"LISTEN {_PREFIX}{topic}")
                self._ready.set()
                delay = 0.5
                async for notice in self._listener.notifies():
                    self.deliver(notice.channel.removeprefix(_PREFIX), notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", type(exc).__name__, delay)
                self._ready.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def publish(self, topic: str, payload: str) -> None:
        async with self._send_lock:
            for attempt in range(2):
                try:
                    if self._sender is None or self._sender.closed:
                        self._sender = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                    for part in chunks(payload):
                        await self._sender.execute("SELECT pg_notify(%s, %s)", (f"{_PREFIX}{topic}", part))
                    return
                except psycopg.OperationalError:
                    self._sender = None
                    if attempt:
                        raise
