"""What ends the run, and what the server refused: each carries the one line the user is told."""

from __future__ import annotations

from .urls import TOKEN_VARIABLE, shown_url


class Exit(Exception):
    """End the run with ``status`` after printing ``message`` (one line)."""

    def __init__(self, status: int, message: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message


class ConversationGone(Exception):
    """The server has no such conversation for this key (4404)."""

    def __init__(self, conversation_id: str):
        super().__init__(conversation_id)
        self.conversation_id = conversation_id


def key_needed(url: str, token: str | None) -> Exit:
    if token:
        return Exit(2, f"the server at {shown_url(url)} refused this client key: give the right one with "
                       f"--token KEY or the {TOKEN_VARIABLE} environment variable")
    return Exit(2, f"the server at {shown_url(url)} wants a client key: give it with --token KEY or the "
                   f"{TOKEN_VARIABLE} environment variable")
