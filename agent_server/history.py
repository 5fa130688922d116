"""Which stored turns go upstream as history."""

from __future__ import annotations

from collections.abc import Iterable


def upstream_messages(complete_turns: Iterable, new_message: str) -> list[dict]:
    """The completed exchanges, oldest first, then the new user message.

    ``complete_turns`` are (seq, role, content) rows of turns whose status is ``complete``. An exchange
    counts only when a user turn is followed directly by its complete assistant reply: a user turn whose
    reply failed, was cancelled or never came (the server died) is left out with its partial reply, so
    the upstream never sees two user turns in a row. An empty or whitespace-only reply is left out too:
    the API refuses text blocks without non-whitespace text, which would fail every later reply.
    """
    messages: list[dict] = []
    pending = None
    for seq, role, content in complete_turns:
        if role == "user":
            pending = (seq, content)
        elif role == "assistant" and pending is not None and seq == pending[0] + 1 and content.strip():
            messages.append({"role": "user", "content": pending[1]})
            messages.append({"role": "assistant", "content": content})
            pending = None
        else:
            pending = None
    messages.append({"role": "user", "content": new_message})
    return messages
