"""Per-client rate limits on model calls: a moving window (exact: the N+1th call inside any window of the
configured length is refused), in this process by default, or in Redis through the ``limits`` library
(``AGENT_RATE_LIMIT_STORAGE=redis://...``) so that the limit holds across workers and machines.

The in-process window is our own ``MovingWindow`` rather than ``limits``' memory storage: the async one
starts a task on every call that hands a bisect to a thread for every key (a thread hop per model call,
~85 µs on the way to each first token), and the sync one starts a thread per expiry timer. A deque of call
times per caller does the same counting in a few microseconds.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
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


def is_memory(configured: str) -> bool:
    return configured.strip().removeprefix("async+").startswith("memory://")


class MovingWindow:
    """Calls per identity in the last ``seconds``, kept in this process."""

    SWEEP_EVERY = 1024  # calls between two sweeps of identities whose calls have all left the window

    def __init__(self, limit: int, seconds: float):
        self.limit = limit
        self.seconds = seconds
        self._calls: dict[str, deque[float]] = {}
        self._until_sweep = self.SWEEP_EVERY

    def hit(self, identity: str, now: float | None = None) -> tuple[bool, int, int]:
        """Count a call if the window has room: (allowed, remaining, seconds until the oldest call leaves)."""
        now = time.monotonic() if now is None else now
        calls = self._calls.get(identity)
        if calls is None:
            calls = self._calls[identity] = deque()
        cutoff = now - self.seconds
        while calls and calls[0] < cutoff:
            calls.popleft()
        allowed = len(calls) < self.limit
        if allowed:
            calls.append(now)
        reset = max(1, math.ceil(calls[0] + self.seconds - now)) if calls else 1
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(cutoff)
        return allowed, self.limit - len(calls), reset

    def _sweep(self, cutoff: float) -> None:
        self._until_sweep = self.SWEEP_EVERY
        for identity in [key for key, calls in self._calls.items() if not calls or calls[-1] < cutoff]:
            del self._calls[identity]

    @property
    def identities(self) -> int:
        return len(self._calls)


class RateLimiter:
    def __init__(self, rate: str, storage: str):
        self.item = parse(rate)
        self._window: MovingWindow | None = None
        if is_memory(storage):
            self._window = MovingWindow(self.item.amount, self.item.get_expiry())
        else:
            self._storage = storage_from_string(storage_uri(storage))
            self._limiter = MovingWindowRateLimiter(self._storage)

    async def hit(self, identity: str) -> Quota:
        """Count one model call for ``identity``; raises RateLimited (with headers) when over the limit."""
        if self._window is not None:
            allowed, remaining, reset = self._window.hit(identity)
        else:
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
