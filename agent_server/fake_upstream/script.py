"""What the fake upstream is told to do, one behaviour per HTTP attempt.

A test appends behaviours; each `POST /v1/messages` attempt that passes auth and validation
takes the next one (a behaviour with `times=n` serves n attempts in a row). An empty script
means a normal reply, so the fake works unscripted.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ToolCall(BaseModel):
    """A `tool_use` block the scripted model asks for; its tool must be declared unless `undeclared`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None  # default: toolu_ + random hex
    undeclared: bool = False  # True: a model asking for a tool the request does not declare


class ServerToolUse(BaseModel):
    """A server tool call (`server_tool_use` + its `web_search_tool_result`) made within the reply."""

    model_config = ConfigDict(extra="forbid")

    name: str = "web_search"
    input: dict[str, Any] = Field(default_factory=dict)


class Behaviour(BaseModel):
    """One scripted upstream behaviour; every field is optional and unset means "normal".

    Precedence: `status` answers at once; else `hang`; else `raw_body`/`content_type`, else
    `gzip_garbage`; else a reply. The reply's blocks, in order: thinking (`thinking`, or a short
    default one when the request enables thinking), `redacted_thinking`, each of `server_tool_uses`
    with its results, the text, then one `tool_use` per `tool_calls` entry. The text is `tokens`,
    else `text`, else `n_tokens` generated tokens, else the fake's default (an echo, or after tool
    results `Done. Results: ...`); with `tool_calls` there is text only when one of those is given.
    A fault index past the last text token fires after the last text token.
    """

    model_config = ConfigDict(extra="forbid")

    times: int = Field(default=1, ge=1, description="How many consecutive attempts this serves.")
    # Answer with an error status and the matching Anthropic error body.
    status: int | None = Field(default=None, ge=400, le=599)
    retry_after: str | None = None
    # Sent as `x-should-retry` only when given, since it overrides the SDK's own retry policy.
    should_retry: bool | None = None
    # The reply: exact text (one token), exact tokens, or n generated tokens.
    text: str | None = None
    tokens: list[str] | None = None
    n_tokens: int | None = Field(default=None, ge=0)
    # Timing in seconds: message_start goes out at once, the first delta after `ttft`.
    ttft: float | None = Field(default=None, ge=0)
    token_delay: float | None = Field(default=None, ge=0)
    # Faults after k text deltas: an `event: error`, a connection cut mid chunked body, or a clean early end.
    error_after_tokens: int | None = Field(default=None, ge=0)
    error_type: str | None = None
    error_message: str | None = None
    drop_after_tokens: int | None = Field(default=None, ge=0)
    # The body ends cleanly after k text deltas, without message_delta/message_stop (a proxy cutting it short).
    end_after_tokens: int | None = Field(default=None, ge=0)
    # Accept the request and never answer until the client goes away.
    hang: bool = False
    # Usage values merged over the counted ones, any JSON (strings, negatives, huge numbers) sent unchanged.
    usage: dict[str, Any] | None = None
    # Default: "tool_use" with tool_calls, else "end_turn"; "pause_turn" goes with server_tool_uses.
    stop_reason: str | None = None
    model: str | None = None
    # Agent behaviour: tool calls (several = parallel tool use), thinking, server tools.
    tool_calls: list[ToolCall] | None = None
    thinking: str | None = None
    redacted_thinking: bool = False
    server_tool_uses: list[ServerToolUse] | None = None
    # Hardening faults: a 200 with this exact content type and body; a 200 claiming gzip that is not gzip;
    # an unknown event with non-JSON data after k text deltas (the stream then carries on).
    content_type: str | None = None
    raw_body: str | None = None
    gzip_garbage: bool = False
    unknown_event_after_tokens: int | None = Field(default=None, ge=0)


class Script:
    """A FIFO of behaviours, safe to feed from one thread while another consumes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[list[Any]] = deque()  # [behaviour, attempts left]

    def extend(self, behaviours: list[Behaviour]) -> None:
        with self._lock:
            self._queue.extend([behaviour, behaviour.times] for behaviour in behaviours)

    def next(self) -> Behaviour:
        """The behaviour for the next attempt, or the default one when the script is empty."""
        with self._lock:
            if not self._queue:
                return Behaviour()
            entry = self._queue[0]
            entry[1] -= 1
            if entry[1] == 0:
                self._queue.popleft()
            return entry[0]

    def pending(self) -> int:
        """Attempts still scripted."""
        with self._lock:
            return sum(left for _, left in self._queue)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
