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
EVENT_LIMIT = 64 * 1024  # UTF-8 bytes of a result in a tool_result event (the audit keeps it whole)


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
        return cut_utf8(b.result_text(self.content), EVENT_LIMIT)


def cut_utf8(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character; and whether it was cut."""
    if len(text) * 4 <= limit:
        return text, False
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


def not_run(call_id: str, reason: str) -> ToolResult:
    return ToolResult(call_id, f"not run: {reason}", True, None, "not_run")


def _size(block: dict) -> int:
    """A block's share of the output limit: a text's characters; anything else (an image) its JSON."""
    return len(block.get("text") or "") if block.get("type") == "text" else len(b.encode(block))


def _cut(output: ToolOutput, limit: int) -> ToolOutput:
    if isinstance(output.content, str):
        if len(output.content) <= limit:
            return output
        notice = f"\n[output cut at {limit} of {len(output.content)} characters]"
        return ToolOutput(output.content[:limit] + notice, output.is_error)
    total = sum(_size(block) for block in output.content)
    if total <= limit:
        return output
    # Content blocks stay blocks: the first ones that fit (a text cut at the limit), then the notice. An image
    # is kept whole or left out, never sent as a cut piece of base64 text.
    kept: list[dict] = []
    used = 0
    for block in output.content:
        size = _size(block)
        if used + size <= limit:
            kept.append(block)
            used += size
            continue
        if block.get("type") == "text" and limit - used > 0:
            kept.append({**block, "text": block["text"][:limit - used]})
        break
    kept.append({"type": "text", "text": f"[output cut at {limit} of {total} characters]"})
    return ToolOutput(kept, output.is_error)


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
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the reply is being cancelled
        # The tool raised CancelledError of its own accord: to the task group that would be a cancelled child,
        # and the step would lose the call's result.
        log.info("tool %s raised CancelledError", call.name)
        return ToolResult(call.id, "the tool was cancelled", True, elapsed(), "error")
    except (Exception, SystemExit) as exc:  # SystemExit: a library's sys.exit() must not end the server
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
