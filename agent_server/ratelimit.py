"""Per-client rate limits on model calls, with the ``limits`` library.

A moving window (exact: the N+1th call inside any window is refused) in memory by default, or in Redis
(``AGENT_RATE_LIMIT_STORAGE=redis://...``) so that the limit holds across workers and machines.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import parse
from limits.storage import storage_from_string
from limits.aio.strategies import MovingWindowRateLimiter

from . import errors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quota:
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


def storage_uri(configured: str) -> str:
    uri = configured.strip()
    return uri if uri.startswith("async+") else f"async+{uri}"


class RateLimiter:
    def __init__(self, rate: str, storage: str):
        self.item = parse(rate)
        self._storage = storage_from_string(storage_uri(storage))
        self._limiter = MovingWindowRateLimiter(self._storage)

    async def hit(self, identity: str) -> Quota:
        """Count one model call for ``identity``; raises RateLimited (with headers) when over the limit."""
        allowed = await self._limiter.hit(self.item, identity)
        reset_at, remaining = await self._limiter.get_window_stats(self.item, identity)
        reset = max(1, math.ceil(reset_at - time.time()))
        quota = Quota(self.item.amount, max(remaining, 0), reset)
        if not allowed:
            raise errors.RateLimited(
                f"Rate limit of {self.item.amount} per {self.item.get_expiry()} s exceeded; retry in {reset} s.",
                retry_after=reset,
                headers=quota.headers(),
            )
        return quota

    async def check_storage(self) -> bool:
        return await self._storage.check()

    async def reset(self) -> None:
        await self._storage.reset()
