"""Progress on stderr while a run goes: one rewritten line on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, *, enabled: bool = True, stream: TextIO | None = None):
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = self._stream.isatty()
        self._every = 0.2 if self._tty else 3.0
        self._last = 0.0
        self._started = time.monotonic()
        self._section = ""
        self._dirty = False

    def _write(self, text: str, *, final: bool) -> None:
        if not self._enabled:
            return
        stamp = f"[{time.monotonic() - self._started:6.1f}s] {self._section:<10} {text}"
        if self._tty:
            end = "\n" if final else ""
            self._stream.write("\r\x1b[2K" + stamp[:200] + end)
            self._dirty = not final
        else:
            self._stream.write(stamp + "\n")
        self._stream.flush()

    def section(self, name: str, what: str) -> None:
        self._section = name
        self._write(what, final=True)

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self._every:
            self._last = now
            self._write(text, final=False)

    def note(self, text: str) -> None:
        self._write(text, final=True)
