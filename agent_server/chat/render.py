"""How things read: the labels, the usage line, costs as plain decimals, times, tool lines and replayed turns.

Pure functions of the server's JSON: nothing here writes or waits.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

LABELS = {"user": "you> ", "assistant": "claude> "}
STATUS_MARKS = {"incomplete": " (cancelled)", "failed": " (failed)"}
THINKING = "  (thinking) "
CONTINUED = "…"  # after the label, when a reply carries on after a reconnection
PREVIEW = 120  # characters of a tool call or result shown
FIRST_WORDS = 50
CLOSE_MEANINGS = {
    1000: "closed by the server",
    1001: "the server is going away",
    1006: "the connection dropped",
    1011: "the server hit an error",
    1012: "the server is restarting",
}


def format_usd(value: Any) -> str:
    """``$0.000068``, never ``6.8e-05``: at least cents, at most the server's nine decimals."""
    if value is None or isinstance(value, bool):
        return "cost unknown"
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return "cost unknown"
    if not amount.is_finite():
        return "cost unknown"
    amount = amount.quantize(Decimal("1e-9")).normalize()
    if amount.as_tuple().exponent > -2:
        amount = amount.quantize(Decimal("0.01"))
    return f"${amount:f}"


def format_time(stamp: Any) -> str:
    """An API timestamp (UTC) as local ``YYYY-MM-DD HH:MM``; anything unparsable as given."""
    if not isinstance(stamp, str):
        return "?"
    try:
        moment = datetime.fromisoformat(stamp.removesuffix("Z"))
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def first_words(text: Any, limit: int = FIRST_WORDS) -> str:
    words = " ".join(str(text or "").split())
    if len(words) <= limit:
        return words
    cut = words[:limit]
    if " " in cut[limit // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip() + "…"


def preview(text: Any, limit: int = PREVIEW) -> str:
    """One line of at most ``limit`` characters: whitespace runs as one space, a longer text cut with "…"."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


def content_text(content: Any) -> str:
    """A turn's (or a tool result's) content as text: a string as it is; content blocks by their text (other
    blocks by their type in brackets)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'block')}]")
            else:
                parts.append(str(block))
        return " ".join(part for part in parts if part)
    return str(content)


def call_text(name: Any, arguments: Any) -> str:
    """``calculator({"expression": "6*7"})``, cut to a preview."""
    try:
        shown = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = str(arguments)
    return preview(f"{name}({shown})")


def tool_use_line(name: Any, arguments: Any, kind: Any = None) -> str:
    return f"  → {call_text(name, arguments)}" + ("  (server tool)" if kind == "server" else "")


def tool_result_line(content: Any, is_error: Any = False) -> str:
    text = content_text(content)
    return f"  ← {preview(f'error: {text}' if is_error else text) or '(empty)'}"


def usage_line(frame: dict[str, Any]) -> str:
    return (f"({frame.get('input_tokens', '?')} in / {frame.get('output_tokens', '?')} out tokens, "
            f"{format_usd(frame.get('estimated_cost_usd'))})")


def error_line(frame: dict[str, Any]) -> str:
    error = frame.get("error") if isinstance(frame.get("error"), dict) else {}
    retry = f" (retry in {error['retry_after']} s)" if error.get("retry_after") is not None else ""
    return f"error ({error.get('type', 'error')}): {error.get('message', 'no message')}{retry}"


def describe_close(code: int | None, reason: str = "") -> str:
    if code is None:
        return "the connection dropped"
    text = CLOSE_MEANINGS.get(code, f"closed with code {code}")
    return f"{text}: {reason}" if reason else text


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    reason = getattr(exc, "reason", None)  # urllib's URLError wraps the OSError
    return str(reason) if reason is not None and str(reason) else text


def replayed(turn: dict[str, Any]) -> list[str]:
    """A stored turn as the lines the live reply showed: text after its label, tool calls and results as tool
    lines, thinking previewed; an assistant turn cut short gets its mark."""
    role = str(turn.get("role"))
    blocks = [block for block in turn.get("blocks") or [] if isinstance(block, dict)]
    content = content_text(turn.get("content")).rstrip()
    if role == "user":
        results = [block for block in blocks if block.get("type") == "tool_result"]
        if results and not content:
            return [tool_result_line(block.get("content"), block.get("is_error")) for block in results]
        return [LABELS["user"] + content]
    if role != "assistant":
        return [f"{role}> {content}"]
    if not any(block.get("type") != "text" for block in blocks):
        blocks = [{"type": "text", "text": content}] if content else []
    lines: list[str] = []
    texts: list[str] = []

    def text_done() -> None:
        if texts and "".join(texts).strip():
            lines.append(LABELS["assistant"] + "".join(texts).rstrip())
        texts.clear()

    for block in blocks:
        kind = str(block.get("type"))
        if kind == "text":
            texts.append(str(block.get("text") or ""))
            continue
        text_done()
        if kind == "thinking":
            lines.append(THINKING + preview(block.get("thinking") or ""))
        elif kind == "redacted_thinking":
            lines.append(THINKING + "[redacted]")
        elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
            lines.append(tool_use_line(block.get("name"), block.get("input"),
                                       "server" if kind == "server_tool_use" else None))
        elif kind.endswith("_tool_result"):
            lines.append(tool_result_line(block.get("content"), block.get("is_error")))
    text_done()
    mark = STATUS_MARKS.get(str(turn.get("status")), "")
    if mark:
        if lines and lines[-1].startswith(LABELS["assistant"]):
            lines[-1] += mark
        else:
            lines.append(LABELS["assistant"] + mark.lstrip())
    return lines
