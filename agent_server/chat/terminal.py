"""Standard input and Ctrl-C.

Standard input is read by a daemon thread into a queue, so that waiting for a line can race Ctrl-C and a lost
connection (``first_of``), and lines typed or piped ahead simply wait their turn. Ctrl-C only sets an event; what
it means (quit, cancel, stop reconnecting, leave a question unanswered) is decided by whoever is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Awaitable
from typing import Any


async def first_of(**waits: Awaitable[Any]) -> tuple[str, Any]:
    """Wait for the first of the named awaitables to finish and cancel the others; returns its name and result
    (its exception is raised). When several finish together, the one named first wins."""
    tasks = {name: asyncio.ensure_future(wait) for name, wait in waits.items()}
    try:
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks.values():
            task.cancel()
    finished = [(name, task) for name, task in tasks.items() if task.done() and not task.cancelled()]
    for _, task in finished[1:]:
        task.exception()  # a loser's failure is not reported ("exception was never retrieved")
    name, task = finished[0]  # asyncio.wait returned: one has finished
    return name, task.result()


class LineReader:
    """The lines of standard input (None at its end, and ever after), read by a daemon thread with ``os.read``:
    the thread never blocks the exit, and holds no lock of ``sys.stdin`` that shutdown would wait for."""

    def __init__(self, fd: int = 0):
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.ended = False
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(fd,), name="chat-stdin", daemon=True).start()

    async def get(self) -> str | None:
        if self.ended:
            return None
        line = await self.queue.get()
        self.ended = line is None
        return line

    def _read(self, fd: int) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._put(line.decode(errors="replace").removesuffix("\r"))
        if pending:
            self._put(pending.decode(errors="replace"))
        self._put(None)

    def _put(self, item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the chat is over
            self._loop.call_soon_threadsafe(self.queue.put_nowait, item)


class CtrlC:
    """SIGINT sets ``pressed`` (while installed); clear it before waiting for it."""

    def __init__(self) -> None:
        self.pressed = asyncio.Event()
        self._installed = False

    def install(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.pressed.set)
            self._installed = True

    def remove(self) -> None:
        if self._installed:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
            self._installed = False

    async def wait(self) -> None:
        await self.pressed.wait()

    def clear(self) -> None:
        self.pressed.clear()
