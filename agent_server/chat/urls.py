"""The server's addresses: the WebSocket URL given, with a conversation (and a reply's place) in its query, and
the HTTP API next to it."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_URL = "ws://127.0.0.1:8000/agent/ws"
TOKEN_VARIABLE = "AGENT_TOKEN"
OURS = ("conversation_id", "after")  # query parameters the client sets itself


def session_url(url: str, conversation_id: str | None, after: int = 0) -> str:
    """``url`` opening ``conversation_id`` (none: a new conversation), its running reply's frames after ``after``."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in OURS]
    if conversation_id:
        query.append(("conversation_id", conversation_id))
        if after > 0:
            query.append(("after", str(after)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def server_key(url: str) -> str:
    """The state file's key for a server: its URL without a key or conversation id in the query."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("token", *OURS)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def http_base(url: str) -> str:
    """The HTTP API next to a WebSocket URL: ws→http, wss→https, same host and port, no path."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def shown_url(url: str) -> str:
    """A URL fit to print: without its query, which may hold a key."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))
