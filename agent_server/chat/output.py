"""Where things are written: stdout carries the conversation, stderr what the client says itself.

stdout: replayed turns and live ones with the same ``you>`` and ``claude>`` labels, tool calls and results as
indented ``→``/``←`` lines, thinking prefixed (and dimmed on a terminal). stderr: the prompt, questions, notes,
command output, usage lines. Every line is kept whole: whatever is written next ends a line left open first.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .render import CONTINUED, LABELS, THINKING

DIM, PLAIN = "\x1b[2m", "\x1b[0m"


def is_terminal(stream: Any) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no stdin, or a closed one
        return False


class Output:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.dim = is_terminal(self.out)
        self.continued = False  # the next reply text carries on a reply shown before a reconnection
        self._open: dict[int, bool] = {id(self.out): False, id(self.err): False}  # a line begun, not ended
        self._kind: str | None = None  # what the open stdout line is: "text" or "thinking"

    def _write(self, stream: TextIO, text: str) -> None:
        if text:
            stream.write(text)
            stream.flush()
            self._open[id(stream)] = not text.endswith("\n")

    def end_lines(self) -> None:
        for stream in (self.out, self.err):
            if self._open[id(stream)]:
                self._write(stream, "\n")
        self._kind = None

    # The client's own words (stderr)

    def note(self, text: str) -> None:
        self.end_lines()
        self._write(self.err, text + "\n")

    def prompt(self, text: str) -> None:
        self.end_lines()
        self._write(self.err, text)

    def line_typed(self, typed: str | None = None) -> None:
        """A line was read after a prompt. The terminal's echo of it ended the prompt's line, unless it was typed
        ahead (or not on a terminal): that one is shown after the prompt, as a shell does."""
        if typed is not None:
            self._write(self.err, typed + "\n")
        self._open[id(self.err)] = False

    # The conversation (stdout)

    def line(self, text: str) -> None:
        self.end_lines()
        self._write(self.out, text + "\n")

    def turn(self, role: str, text: str) -> None:
        self.line(f"{LABELS.get(role, f'{role}> ')}{text}")

    def reply_text(self, text: str) -> None:
        if not text:
            return
        if self._kind != "text":
            self.end_lines()
            self._write(self.out, LABELS["assistant"] + (CONTINUED if self.continued else ""))
            self.continued = False
            self._kind = "text"
        self._write(self.out, text)

    def thinking(self, text: str) -> None:
        if not text:
            return
        if self._kind != "thinking":
            self.end_lines()
            self._write(self.out, THINKING)
        shown = text.replace("\n", "\n" + THINKING)
        self._write(self.out, f"{DIM}{shown}{PLAIN}" if self.dim else shown)
        self._kind = "thinking"
