"""A small Server-Sent Events parser for tests, working on raw bytes.

Why not ``httpx.Response.iter_lines``: it splits like ``str.splitlines``, so a U+2028, U+0085 or form feed
inside a JSON string would cut a ``data:`` line in two. The SSE spec ends lines only at CRLF, LF or CR,
and those bytes never occur inside a UTF-8 sequence, so lines are split on bytes first and decoded after.

Each dispatched event is an ``SSEEvent(event, data, arrived)``: ``data`` is the JSON-decoded data field
(the lines of a multi-line field joined with ``\\n``, as the spec says), ``arrived`` the ``time.monotonic()``
at which the bytes ending the event were read. A comment line (``: ping``) is reported at once as an
event named ``COMMENT`` whose data is the comment's text, so tests can see keep-alives.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, NamedTuple

import httpx

COMMENT = ":"
_END_OF_LINE = re.compile(rb"\r\n|\r|\n")


class SSEEvent(NamedTuple):
    event: str
    data: Any
    arrived: float


class SSEParser:
    """Incremental: ``feed`` bytes as they arrive, get the events they complete; ``close`` at end of stream."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._first_line = True

    def feed(self, chunk: bytes, arrived: float | None = None) -> list[SSEEvent]:
        arrived = time.monotonic() if arrived is None else arrived
        self._buffer += chunk
        return [event for line in self._complete_lines(final=False) if (event := self._line(line, arrived))]

    def close(self, arrived: float | None = None) -> list[SSEEvent]:
        """End of stream: a last unterminated line is still a line, but an event without its blank line is
        discarded (the spec's rule for a stream that ends mid-event)."""
        arrived = time.monotonic() if arrived is None else arrived
        events = [event for line in self._complete_lines(final=True) if (event := self._line(line, arrived))]
        if self._buffer:
            if event := self._line(self._buffer, arrived):
                events.append(event)
            self._buffer = b""
        self._event, self._data = "", []
        return events

    def _complete_lines(self, *, final: bool) -> Iterator[bytes]:
        start = 0
        while match := _END_OF_LINE.search(self._buffer, start):
            # A CR at the very end may be the first half of a CRLF split across two reads.
            if match.group() == b"\r" and match.end() == len(self._buffer) and not final:
                break
            yield self._buffer[start : match.start()]
            start = match.end()
        self._buffer = self._buffer[start:]

    def _line(self, raw: bytes, arrived: float) -> SSEEvent | None:
        line = raw.decode("utf-8")  # strict: the server must send valid UTF-8
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch(arrived)
        if line.startswith(":"):
            return SSEEvent(COMMENT, line[1:].removeprefix(" "), arrived)
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        # "id" and "retry" are not used by this API; unknown fields are ignored, as the spec says.
        return None

    def _dispatch(self, arrived: float) -> SSEEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        text = "\n".join(data)
        try:
            decoded = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"SSE event {event!r} carries data that is not JSON: {text!r}") from exc
        return SSEEvent(event, decoded, arrived)


def iter_events(response: httpx.Response) -> Iterator[SSEEvent]:
    """The events of a streamed ``httpx`` response (``client.stream(...)``), as they arrive."""
    parser = SSEParser()
    for chunk in response.iter_bytes():
        yield from parser.feed(chunk)
    yield from parser.close()


async def aiter_events(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    parser = SSEParser()
    async for chunk in response.aiter_bytes():
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event
