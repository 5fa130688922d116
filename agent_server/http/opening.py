"""When a streamed reply's ``start`` event (or frame) goes out: once, first, and off the critical path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable


class StartOnce:
    """Sends ``start`` the first time it is awaited, and never again.

    Routes await it as the reply's ``on_open`` (the upstream has accepted the call: writing to the client
    then overlaps the model's time to first token, instead of delaying the upstream request by two socket
    writes) and before any other event they send (``start`` is always first, also when the upstream fails
    before accepting the call, or the reply is cancelled or refused).
    """

    def __init__(self, send_start: Callable[[], Awaitable[None]]):
        self._send_start = send_start
        self.sent = False

    async def __call__(self) -> None:
        if not self.sent:
            self.sent = True
            await self._send_start()
