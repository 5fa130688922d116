"""What the fake upstream saw: every HTTP attempt and the lifecycle of every streamed reply.

Tests and benchmarks long-poll these through the control API, so every change wakes the
waiters; notification is synchronous so it also works from a `finally` in a cancelled task.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


def parse_body(raw: bytes) -> Any:
    """A request body as JSON, or None when it is not JSON."""
    try:
        return json.loads(raw)
    except ValueError:
        return None


OUTCOMES = ("open", "completed", "disconnected", "error", "dropped")


@dataclass
class StreamRecord:
    request_id: str
    outcome: str = "open"
    tokens_sent: int = 0
    head_ms: float | None = None  # accepted -> response head sent
    first_delta_ms: float | None = None  # accepted -> first content delta sent (the fake's own TTFT)


class Recorder:
    """Attempts and stream lifecycles of one fake app, with waits that need no polling."""

    def __init__(self) -> None:
        # Each request's body is kept as the bytes received and parsed again when read: one object that the
        # garbage collector never walks. Kept parsed, a benchmark's thousands of 1,000-message bodies made the
        # fake pause ~10 ms for each full collection, in the middle of some request's reply.
        self._requests: list[tuple[dict[str, Any], bytes]] = []
        self.streams: list[StreamRecord] = []
        # Replaced on every change: waiters hold the old one, which is set to wake them.
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def add_request(self, record: dict[str, Any], body: bytes) -> None:
        """``record``: the attempt's fields but its body (later changes to it are seen too)."""
        self._requests.append((record, body))
        self._notify()

    def request_count(self) -> int:
        return len(self._requests)

    def requests_json(self) -> list[dict[str, Any]]:
        """Every attempt, its ``body`` parsed (None when it was not JSON)."""
        return [{"id": record["id"], "path": record["path"], "body": parse_body(body),
                 **{key: value for key, value in record.items() if key not in ("id", "path")}}
                for record, body in self._requests]

    def open_stream(self, request_id: str) -> StreamRecord:
        record = StreamRecord(request_id)
        self.streams.append(record)
        self._notify()
        return record

    def finish_stream(self, record: StreamRecord, outcome: str) -> None:
        """Settle a stream's outcome; the first outcome wins, later ones are ignored."""
        if record.outcome == "open":
            record.outcome = outcome
            self._notify()

    def clear(self) -> None:
        self._requests.clear()
        self.streams.clear()
        self._notify()

    def count_outcome(self, outcome: str) -> int:
        return sum(1 for record in self.streams if record.outcome == outcome)

    def streams_json(self) -> list[dict[str, Any]]:
        return [asdict(record) for record in self.streams]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate()` holds after some change, or `timeout` seconds pass."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            return predicate()
        return True
