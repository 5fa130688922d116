"""The channel's interface and its in-process side."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
Listener = Callable[[str], None]
TOPICS = ("cancel", "events")


class Channel:
    """``publish(topic, payload)`` reaches every ``subscribe``d listener of every process, this one included.

    Delivery is best effort (a process that was not listening misses it): whatever must not be lost is written to
    the database first, and listeners read it from there.
    """

    cross_process = False

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = {topic: set() for topic in TOPICS}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def subscribe(self, topic: str, listener: Listener) -> Callable[[], None]:
        self._listeners[topic].add(listener)
        return lambda: self._listeners[topic].discard(listener)

    async def publish(self, topic: str, payload: str) -> None:
        self.deliver(topic, payload)

    def deliver(self, topic: str, payload: str) -> None:
        for listener in list(self._listeners.get(topic, ())):
            try:
                listener(payload)
            except Exception:
                log.exception("a channel listener failed")


class LocalChannel(Channel):
    """One process: publishing is delivering."""


def wait_for(channel: Channel, topic: str, match: Callable[[str], bool], timeout: float) -> asyncio.Future:
    """A future that completes when a payload on ``topic`` matches, or after ``timeout`` (whichever first)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def heard(payload: str) -> None:
        if match(payload) and not future.done():
            future.set_result(True)

    unsubscribe = channel.subscribe(topic, heard)
    timer = loop.call_later(timeout, lambda: future.done() or future.set_result(False))
    future.add_done_callback(lambda _: (unsubscribe(), timer.cancel()))
    return future
