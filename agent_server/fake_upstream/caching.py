"""Prompt caching as the real API models it: breakpoints, a 20-block lookback, TTLs, per-model minimums.

Why: a server that places `cache_control` breakpoints needs to see, in the usage it gets back, whether they
actually hit: a misplaced breakpoint shows up as a write on every call and never a read. The cache keys are
hashes of whole prefixes (every position up to and including one, `cache_control` removed, chained from the
model id), so any change earlier in the prompt misses, as it does upstream. Time is a `FakeClock` that tests
move forward instead of sleeping through a TTL.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from .tokens import Position, tokens_for

TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
LOOKBACK = 20  # blocks before each breakpoint that are also checked for a hit


class FakeClock:
    """Real time plus an offset that only ever grows until `reset`."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds

    def reset(self) -> None:
        self.offset = 0.0


@dataclass(frozen=True)
class CacheUsage:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def written(self) -> int:
        return self.write_5m + self.write_1h


def breakpoints(prompt: list[Position], top_level: Any) -> list[tuple[int, str]]:
    """(position index, ttl) of every breakpoint; the request's own `cache_control` marks the last block."""
    marks: dict[int, str] = {}

    def mark(index: int, control: Any) -> None:
        ttl = control.get("ttl", "5m") if isinstance(control, dict) else "5m"
        marks[index] = "1h" if "1h" in (ttl, marks.get(index)) else "5m"

    for index, position in enumerate(prompt):
        if position.cache_control is not None:
            mark(index, position.cache_control)
    if top_level is not None and prompt and prompt[-1].section == "messages":
        mark(len(prompt) - 1, top_level)
    return sorted(marks.items())


class PromptCache:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._entries: dict[bytes, tuple[float, float]] = {}  # prefix hash -> (expires at, ttl seconds)

    def clear(self) -> None:
        self._entries.clear()

    def account(self, model: str, prompt: list[Position], marks: list[tuple[int, str]], minimum: int) -> CacheUsage:
        """Read the longest live prefix, write each longer breakpoint prefix of at least `minimum` tokens."""
        if not marks:
            return CacheUsage()
        now = self.clock.now()
        self._prune(now)
        last = marks[-1][0]
        hashes, sums, digest, chars = [], [], hashlib.sha256(model.encode()).digest(), 0
        for position in prompt[: last + 1]:
            digest = hashlib.sha256(digest + position.hash_input().encode()).digest()
            chars += position.chars
            hashes.append(digest)
            sums.append(chars)
        read_at = -1
        for index, _ in marks:
            for candidate in range(index, max(read_at, index - LOOKBACK - 1), -1):
                entry = self._entries.get(hashes[candidate])
                if entry is not None and entry[0] > now:
                    read_at = candidate
                    break
        if read_at >= 0:
            ttl = self._entries[hashes[read_at]][1]
            self._entries[hashes[read_at]] = (now + ttl, ttl)
        read = tokens_for(sums[read_at]) if read_at >= 0 else 0
        covered, writes = read, {"5m": 0, "1h": 0}
        for index, ttl in marks:
            prefix = tokens_for(sums[index])
            if index <= read_at or prefix < minimum:
                continue
            writes[ttl] += prefix - covered
            covered = prefix
            seconds = TTL_SECONDS[ttl]
            previous = self._entries.get(hashes[index])
            expires = max(now + seconds, previous[0] if previous else 0.0)
            self._entries[hashes[index]] = (expires, max(seconds, previous[1] if previous else 0.0))
        return CacheUsage(read=read, write_5m=writes["5m"], write_1h=writes["1h"])

    def _prune(self, now: float) -> None:
        if len(self._entries) > 10_000:
            self._entries = {key: entry for key, entry in self._entries.items() if entry[0] > now}
