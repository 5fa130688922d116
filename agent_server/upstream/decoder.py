"""The Messages API's Server-Sent Events, decoded from the bytes of a streamed response into content blocks.

Why not the SDK's own stream objects: ``messages.stream()`` builds a pydantic model for every event and
re-accumulates a full message snapshot after each one; a reply needs the deltas as they come and the blocks
exactly as the API sent them (thinking signatures must go back byte for byte). Decoding the events here cut the
server's CPU per streamed reply by a quarter (bench/ROUNDS.md). The SDK still makes the request:
authentication, retries before the response starts, status errors and timeouts are all its own.

``EventDecoder`` follows the SSE parsing rules (lines end in CRLF, LF or CR; ``:`` starts a comment; ``data``
lines of one event are joined with newlines; one optional space after the colon; an event is dispatched at a
blank line). ``MessageAssembler`` applies the decoded events: it rebuilds every content block from its
``content_block_start`` and deltas (text, ``input_json_delta`` fragments parsed at the block's stop, thinking and
its signature, citations), and keeps the model, stop reason and usage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..money.prices import Usage

_BOM = b"\xef\xbb\xbf"
# Usage fields that ``message_delta`` may carry. They are cumulative totals, not increments: a value present in
# a later event replaces the earlier one (adding them would double count the input).
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_CACHE_SPLIT = (
    ("ephemeral_5m_input_tokens", "cache_write_5m_tokens"),
    ("ephemeral_1h_input_tokens", "cache_write_1h_tokens"),
)
# No real count comes near this; a larger one (or a negative one, or a string) is a broken upstream, and storing
# it would overflow a 64-bit column or record a negative cost.
MAX_TOKENS_REPORTED = 10**12


class EventDecoder:
    """Bytes in, ``(event name, data)`` pairs out; chunks may split lines and events anywhere."""

    def __init__(self) -> None:
        self._pending = b""
        self._started = False
        self._skip_lf = False
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        buffer = self._pending + chunk
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._pending = buffer
                return []
            self._started = True
            buffer = buffer.removeprefix(_BOM)
        if self._skip_lf:
            # The previous chunk ended in a CR that was taken as a line end: this LF completes that CRLF.
            self._skip_lf = False
            buffer = buffer.removeprefix(b"\n")
        if b"\r" in buffer:
            self._skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._pending = buffer.split(b"\n")
        events: list[tuple[str, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append((self._event or "message", b"\n".join(self._data)))
                self._event, self._data = "", []
            elif line[0] != 0x3A:  # lines starting with ':' are comments
                name, colon, value = line.partition(b":")
                if colon and value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    self._data.append(value)
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")
        return events


class UnreadableEvent(ValueError):
    """An event whose data is not the JSON the Messages API documents (or usage no real call reports)."""


class ErrorEvent(Exception):
    """An ``event: error`` inside a 200 stream: ``kind`` is the error's type (e.g. ``overloaded_error``)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


# What ``MessageAssembler.apply`` reports: ("text", str), ("thinking", str), ("block", index) once a block is
# complete, or None.
Delta = tuple[str, Any] | None
_KNOWN = {"message_start", "message_delta", "message_stop", "content_block_start", "content_block_delta",
          "content_block_stop", "ping", "error"}


@dataclass
class MessageAssembler:
    model: str | None = None
    stop_reason: str | None = None
    stopped: bool = False
    usage: dict = field(default_factory=dict)
    blocks: list[dict] = field(default_factory=list)
    _parts: dict[int, list[str]] = field(default_factory=dict)
    _json: dict[int, list[str]] = field(default_factory=dict)
    _open: set[int] = field(default_factory=set)

    def reset(self) -> None:
        self.__dict__.update(MessageAssembler().__dict__)

    def apply(self, event: str, data: bytes) -> Delta:
        if event == "ping":
            return None
        try:
            payload = json.loads(data)
            if event == "content_block_delta":
                return self._delta(payload["index"], payload["delta"])
            if event == "content_block_start":
                self._start(payload["index"], payload["content_block"])
            elif event == "content_block_stop":
                return self._stop(payload["index"])
            elif event == "message_start":
                message = payload["message"]
                self.model = message.get("model") or self.model
                self._merge_usage(message.get("usage"))
            elif event == "message_delta":
                self.stop_reason = payload.get("delta", {}).get("stop_reason") or self.stop_reason
                self._merge_usage(payload.get("usage"))
            elif event == "message_stop":
                self.stopped = True
            elif event == "error":
                error = payload.get("error") or {}
                raise ErrorEvent(str(error.get("type") or "api_error"), str(error.get("message") or ""))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            if event not in _KNOWN and not isinstance(exc, ErrorEvent):
                raise UnreadableEvent(f"an unknown {event[:40]!r} event whose data is not JSON") from exc
            raise UnreadableEvent(f"unreadable {event[:40]!r} event") from exc
        return None  # events this version does not know, with JSON data: ignored, as the API asks

    def _start(self, index: int, block: dict) -> None:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise ValueError("a content block without a type")
        while len(self.blocks) <= index:
            self.blocks.append({})
        self.blocks[index] = dict(block)
        self._open.add(index)
        if block["type"] == "text":
            self._parts[index] = [block.get("text") or ""]
        elif block["type"] == "thinking":
            self._parts[index] = [block.get("thinking") or ""]
        elif block["type"] in ("tool_use", "server_tool_use", "mcp_tool_use"):
            self._json[index] = []

    def _delta(self, index: int, delta: dict) -> Delta:
        kind = delta["type"]
        if kind == "text_delta":
            text = delta["text"]
            self._parts[index].append(text)
            return ("text", text)
        if kind == "input_json_delta":
            self._json[index].append(delta["partial_json"])
        elif kind == "thinking_delta":
            text = delta["thinking"]
            self._parts[index].append(text)
            return ("thinking", text)
        elif kind == "signature_delta":
            self.blocks[index]["signature"] = delta["signature"]
        elif kind == "citations_delta":
            self.blocks[index].setdefault("citations", []).append(delta["citation"])
        return None

    def _stop(self, index: int) -> Delta:
        self._finish_block(index)
        return ("block", index)

    def _finish_block(self, index: int) -> None:
        block = self.blocks[index]
        self._open.discard(index)
        if index in self._parts:
            block["text" if block["type"] == "text" else "thinking"] = "".join(self._parts.pop(index))
        if index in self._json:
            raw = "".join(self._json.pop(index))
            block["input"] = json.loads(raw) if raw.strip() else block.get("input") or {}
            if not isinstance(block["input"], dict):
                raise ValueError("a tool input that is not a JSON object")

    def partial_blocks(self) -> list[dict]:
        """The blocks so far, for a reply cut short: finished ones whole, the open ones as far as they came
        (a tool call whose input was still arriving is left out: it can never be run)."""
        blocks = []
        for index, block in enumerate(self.blocks):
            if index in self._open:
                if block.get("type") in ("text", "thinking") and index in self._parts:
                    key = "text" if block["type"] == "text" else "thinking"
                    text = "".join(self._parts[index])
                    if text:
                        blocks.append({**block, key: text})
                continue
            if block:
                blocks.append(block)
        return blocks

    def _merge_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for key, value in usage.items():
            if value is not None:
                self.usage[key] = value

    def usage_record(self) -> Usage:
        return usage_from_wire(self.usage)


def _count(value: object, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_REPORTED:
        raise UnreadableEvent(f"usage.{name} is not a token count")
    return value


def usage_from_wire(usage: dict) -> Usage:
    """Our ``Usage`` from the API's ``usage`` object; counts that are not non-negative integers in range raise
    ``UnreadableEvent``."""
    split = usage.get("cache_creation") if isinstance(usage.get("cache_creation"), dict) else None
    values: dict[str, Any] = {name: _count(usage.get(name), name) for name in _USAGE_FIELDS}
    for wire, ours in _CACHE_SPLIT:
        values[ours] = _count(split.get(wire), wire) if split and split.get(wire) is not None else None
    server = usage.get("server_tool_use")
    if isinstance(server, dict):
        values["web_search_requests"] = _count(server.get("web_search_requests"), "web_search_requests")
        values["web_fetch_requests"] = _count(server.get("web_fetch_requests"), "web_fetch_requests")
    return Usage(**values)


def safe_usage(usage: dict) -> Usage:
    """The counts of ``usage`` that are valid (the others as 0): what a failed call is recorded with."""
    clean = {}
    for key, value in usage.items():
        if key in ("cache_creation", "server_tool_use") and isinstance(value, dict):
            inner = {k: v for k, v in value.items()
                     if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TOKENS_REPORTED}
            clean[key] = inner
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS_REPORTED:
            clean[key] = value
    return usage_from_wire(clean)


def stream_deltas(decoder: EventDecoder, assembler: MessageAssembler, chunk: bytes) -> Iterator[Delta]:
    """What ``chunk`` changes, applying every event to ``assembler`` on the way."""
    for event, data in decoder.feed(chunk):
        delta = assembler.apply(event, data)
        if delta is not None:
            yield delta
