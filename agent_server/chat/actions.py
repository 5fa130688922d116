"""Pending actions: a tool call that waits for a person's approval, or a client tool the chat client runs itself.

Each approval is asked on the terminal (``approve calculator({...})? [y/N] ``: ``y`` or ``yes`` approves; anything
else denies, with an optional reason asked next). Piped input answers with its next lines. A client tool the
client knows (``get_timezone``) is answered at once; one it does not know is answered with an error, so that the
model hears why. The answers are sent together once every action has one; the server then starts the reply that
carries on by itself.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from .render import call_text, preview

Ask = Callable[[str], Awaitable["str | None"]]


def local_timezone() -> str:
    """The local IANA time zone: ``$TZ``, else where ``/etc/localtime`` points within a ``zoneinfo`` folder,
    else ``UTC``."""
    zone = os.environ.get("TZ", "").strip().removeprefix(":")
    if "zoneinfo/" in zone:
        zone = zone.split("zoneinfo/", 1)[1]
    if zone:
        return zone
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return "UTC"
    return target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "UTC"


CLIENT_TOOLS: dict[str, Callable[[dict[str, Any]], str]] = {
    "get_timezone": lambda arguments: local_timezone(),
}


def cannot_run(name: str) -> str:
    return f"The chat client cannot run the tool {name!r}: it does not know it."


async def answers(pending: list[dict[str, Any]], ask: Ask, note: Callable[[str], None]) -> list[dict] | None:
    """The answer frames to the ``pending`` actions, in order; None when a question was left unanswered
    (Ctrl-C, or the end of the input)."""
    frames = []
    for action in pending:
        tool_use_id, name = action.get("tool_use_id"), str(action.get("name"))
        arguments = action.get("input") if isinstance(action.get("input"), dict) else {}
        if action.get("kind") == "approval":
            answer = await ask(f"approve {call_text(name, arguments)}? [y/N] ")
            if answer is None:
                return None
            frame: dict[str, Any] = {"type": "approval", "tool_use_id": tool_use_id,
                                     "approved": answer.strip().lower() in ("y", "yes")}
            if not frame["approved"]:
                reason = await ask("reason (optional): ")
                if reason is None:
                    return None
                if reason.strip():
                    frame["reason"] = reason.strip()
        elif action.get("kind") == "client_tool":
            run = CLIENT_TOOLS.get(name)
            if run is None:
                note(f"the chat client cannot run {name}; telling the model")
                frame = {"type": "tool_result", "tool_use_id": tool_use_id, "content": cannot_run(name),
                         "is_error": True}
            else:
                try:
                    content, is_error = run(arguments), False
                except Exception as exc:  # a client tool that fails tells the model so
                    content, is_error = f"{name} failed on the chat client: {exc}", True
                note(f"  (answered {name}: {preview(content)})")
                frame = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content, "is_error": is_error}
        else:
            note(f"(a pending action of an unknown kind {action.get('kind')!r}: {name}; a message you send now "
                 "answers it as not run)")
            return None
        frames.append(frame)
    return frames
