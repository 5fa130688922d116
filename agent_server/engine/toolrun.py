"""Running the tool calls of one step: concurrently, each with its timeout, in the reply's task group.

A tool that raises, times out, is unknown or is not offered in this reply gives the model an ``is_error`` result
with a short message (never a traceback); the reply goes on. Output above ``output_limit`` characters is cut with
a notice. Cancelling the reply cancels the running tools (an async tool stops; a sync one in its thread is left to
finish on its own, its result dropped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..tools.base import Tool, ToolFailed, ToolOutput
from . import blocks as b

log = logging.getLogger(__name__)
EVENT_LIMIT = 64 * 1024  # characters of a result in a tool_result event (the audit keeps it whole)


@dataclass
class ToolCall:
    id: str
    name: str
    input: dict[str, Any]
    tool: Tool | None
    offered: bool

    @property
    def kind(self) -> str:
        return self.tool.kind if self.tool is not None else "unknown"

    @property
    def needs_decision(self) -> str | None:
        """``approval`` or ``client_tool`` when a person or the client must answer first, else None."""
        if self.tool is None or not self.offered:
            return None
        if self.tool.kind == "client":
            return "client_tool"
        if self.tool.requires_approval:
            return "approval"
        return None


@dataclass
class ToolResult:
    tool_use_id: str
    content: str | list[dict]
    is_error: bool
    duration_ms: int | None
    outcome: str  # ok, error, timeout, not_run

    def block(self) -> dict:
        return b.tool_result_block(self.tool_use_id, self.content, self.is_error)

    def event_content(self) -> tuple[str, bool]:
        text = b.result_text(self.content)
        return (text[:EVENT_LIMIT], True) if len(text) > EVENT_LIMIT else (text, False)


def not_run(call_id: str, reason: str) -> ToolResult:
    return ToolResult(call_id, f"not run: {reason}", True, None, "not_run")


def _cut(output: ToolOutput, limit: int) -> ToolOutput:
    if isinstance(output.content, str):
        if len(output.content) <= limit:
            return output
        notice = f"\n[output cut at {limit} of {len(output.content)} characters]"
        return ToolOutput(output.content[:limit] + notice, output.is_error)
    size = len(b.encode(output.content))
    if size <= limit:
        return output
    text = b.result_text(output.content)
    return ToolOutput(text[:limit] + f"\n[output cut at {limit} of {size} characters]", output.is_error)


async def run_one(call: ToolCall, *, default_timeout: float, output_limit: int) -> ToolResult:
    if call.tool is None:
        return ToolResult(call.id, f"unknown tool {call.name!r}", True, 0, "error")
    if not call.offered:
        return ToolResult(call.id, f"the tool {call.name!r} is not available in this reply", True, 0, "error")
    timeout = call.tool.timeout or default_timeout
    started = time.perf_counter()

    def elapsed() -> int:
        return round((time.perf_counter() - started) * 1000)

    try:
        async with asyncio.timeout(timeout):
            output = await call.tool.run(call.input)
    except TimeoutError:
        return ToolResult(call.id, f"the tool did not finish within {timeout:g} s", True, elapsed(), "timeout")
    except ToolFailed as exc:
        return ToolResult(call.id, str(exc), True, elapsed(), "error")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.info("tool %s raised %s", call.name, type(exc).__name__)
        message = str(exc).splitlines()[0][:300] if str(exc) else ""
        return ToolResult(call.id, f"{type(exc).__name__}: {message}" if message else type(exc).__name__, True,
                          elapsed(), "error")
    output = _cut(output, output_limit)
    return ToolResult(call.id, output.content, output.is_error, elapsed(), "error" if output.is_error else "ok")


async def run_calls(calls: list[ToolCall], *, default_timeout: float, output_limit: int,
                    on_result: Callable[[ToolCall, ToolResult], None]) -> dict[str, ToolResult]:
    """Run ``calls`` at once; ``on_result`` hears of each as it finishes. Cancellation cancels them all."""
    results: dict[str, ToolResult] = {}

    async def one(call: ToolCall) -> None:
        result = await run_one(call, default_timeout=default_timeout, output_limit=output_limit)
        results[call.id] = result
        on_result(call, result)

    async with asyncio.TaskGroup() as group:
        for call in calls:
            group.create_task(one(call), name=f"tool-{call.name}")
    return results
