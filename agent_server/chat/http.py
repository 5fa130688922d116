"""The HTTP API the commands and the catching-up use: urllib in a thread, so the client needs nothing beyond the
standard library and ``websockets``.

``GET /conversations?limit=N``, ``GET /conversations/{id}`` (the audit), ``GET /replies/{id}`` (a reply's status)
and ``GET /replies/{id}/events?after=N`` (a finished reply's frames after ``N``, read as Server-Sent Events).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from .errors import key_needed
from .render import describe_error
from .urls import http_base

HTTP_TIMEOUT = 30.0
TERMINAL = frozenset({"done", "error", "cancelled"})


class ApiError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(f"error ({kind}): {message}")


class Api:
    def __init__(self, url: str, token: str | None):
        self.url = url
        self.token = token
        self.base_url = http_base(url)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @contextmanager
    def _open(self, path: str, accept: str) -> Iterator[Any]:
        request = urllib.request.Request(self.base_url + path, headers={"Accept": accept, **self.headers()})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                yield response
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()
            if exc.code == 401:
                raise key_needed(self.url, self.token) from None
            try:
                error = json.loads(body)["error"]
                kind, message = str(error["type"]), str(error["message"])
            except (ValueError, KeyError, TypeError):
                kind, message = "http_error", f"HTTP {exc.code} from {self.base_url}{path}"
            raise ApiError(kind, message) from None
        except (OSError, urllib.error.URLError) as exc:
            raise ApiError("connection_error", f"cannot reach {self.base_url}: {describe_error(exc)}") from None

    def _get(self, path: str) -> Any:
        with self._open(path, "application/json") as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:
            raise ApiError("api_error", f"{self.base_url}{path} did not answer JSON") from None

    def _events(self, path: str) -> list[dict[str, Any]]:
        """The frames of an event stream up to its last (``done``, ``error`` or ``cancelled``) or its end, each
        as the WebSocket sends it: ``{"type": <event>, "seq": <id>, ...data}``."""
        frames: list[dict[str, Any]] = []
        fields: dict[str, str] = {}
        with self._open(path, "text/event-stream") as response:
            for raw in response:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                frame = _frame(fields)
                fields = {}
                if frame is not None:
                    frames.append(frame)
                    if frame["type"] in TERMINAL:
                        break
        return frames

    async def get(self, path: str) -> Any:
        return await asyncio.to_thread(self._get, path)

    async def audit(self, conversation_id: str) -> dict[str, Any]:
        return await self.get(f"/conversations/{quote(conversation_id, safe='')}")

    async def reply(self, reply_id: str) -> dict[str, Any]:
        return await self.get(f"/replies/{quote(reply_id, safe='')}")

    async def events(self, reply_id: str, after: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._events, f"/replies/{quote(reply_id, safe='')}/events?after={after}")


def _frame(fields: dict[str, str]) -> dict[str, Any] | None:
    try:
        data = json.loads(fields["data"])
        seq = int(fields["id"])
    except (KeyError, ValueError):
        return None
    if not isinstance(data, dict) or not fields.get("event"):
        return None
    return {**data, "type": fields["event"], "seq": seq}
