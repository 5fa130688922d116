"""Replies in flight per client key (``AGENT_MAX_CONCURRENT_REPLIES``): counted in this process, or in Redis when
``AGENT_RATE_LIMIT_STORAGE`` is a Redis URL, so the cap holds across workers and instances.

In Redis a key's slots are a sorted set of reply ids scored by an expiry that the holding process renews with its
reply leases: a process that dies without giving its slots back loses them when the expiry passes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from . import errors

log = logging.getLogger(__name__)

SLOT_TTL_SECONDS = 30


class Slots:
    def __init__(self, limit: int):
        self.limit = limit
        self._held: dict[str, set[str]] = {}

    async def take(self, owner: str, reply_id: str) -> None:
        held = self._held.setdefault(owner, set())
        if len(held) >= self.limit:
            raise _refused(self.limit)
        held.add(reply_id)

    async def give_back(self, owner: str, reply_id: str) -> None:
        self.release(owner, reply_id)

    def release(self, owner: str, reply_id: str) -> None:
        """Give a slot back now (from a callback: Redis's removal runs as a task)."""
        held = self._held.get(owner)
        if held is not None:
            held.discard(reply_id)
            if not held:
                del self._held[owner]

    async def renew(self, held: list[tuple[str, str]]) -> None:
        pass

    async def close(self) -> None:
        pass


def _quiet(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not give back a reply slot: %s", type(task.exception()).__name__)


def _refused(limit: int) -> errors.RateLimited:
    return errors.RateLimited(f"At most {limit} replies may be in flight per client key; retry shortly.",
                              retry_after=1)


_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisSlots(Slots):
    def __init__(self, limit: int, url: str):
        super().__init__(limit)
        import redis.asyncio as redis

        self._redis = redis.from_url(url.removeprefix("async+"))
        self._take = self._redis.register_script(_TAKE)

    @staticmethod
    def _key(owner: str) -> str:
        return f"agent_server:slots:{owner}"

    async def take(self, owner: str, reply_id: str) -> None:
        now = time.time()
        taken = await self._take(keys=[self._key(owner)],
                                 args=[now, self.limit, now + SLOT_TTL_SECONDS, reply_id, SLOT_TTL_SECONDS * 4])
        if not taken:
            raise _refused(self.limit)

    async def give_back(self, owner: str, reply_id: str) -> None:
        await self._redis.zrem(self._key(owner), reply_id)

    def release(self, owner: str, reply_id: str) -> None:
        task = asyncio.ensure_future(self.give_back(owner, reply_id))
        task.add_done_callback(_quiet)

    async def renew(self, held: list[tuple[str, str]]) -> None:
        expires = time.time() + SLOT_TTL_SECONDS
        async with self._redis.pipeline(transaction=False) as pipe:
            for owner, reply_id in held:
                pipe.zadd(self._key(owner), {reply_id: expires}, xx=True)
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


def open_slots(limit: int, storage: str) -> Slots:
    uri = storage.strip().removeprefix("async+")
    if uri.startswith(("redis://", "rediss://", "unix://")):
        return RedisSlots(limit, uri)
    return Slots(limit)
