"""MCP servers' tools, through the official ``mcp`` SDK: a stdio child or a streamable HTTP endpoint.

Each server has one ``McpServer``: a keeper task that connects at start-up, lists the tools, holds the session open
and, when the session dies (the child exits, the endpoint goes away), reconnects with a growing pause. The SDK's
client lives in an anyio task group that must be entered and left by one task: the keeper is that task; calls
from replies go through the session it holds. A call to a server that is down gives the model an ``is_error``
result, never a failed reply. Tools are offered as ``<server>__<tool>``.

Secrets (``${VAR}`` in headers or env) reach the server only: they are never logged or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx2

from .base import Tool, ToolConfigError, ToolFailed, ToolOutput

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 15.0
RECONNECT_DELAYS = (0.5, 1, 2, 5, 10, 30)


class McpServer:
    def __init__(self, name: str, *, url: str | None = None, headers: dict[str, str] | None = None,
                 command: str | None = None, args: list[str] | None = None, env: dict[str, str] | None = None,
                 allow: list[str] | None = None, timeout: float | None = None, requires_approval: bool = False):
        if (url is None) == (command is None):
            raise ToolConfigError(f"mcp.{name}: give exactly one of url or command")
        self.name = name
        self.url, self.headers = url, headers or {}
        self.command, self.args, self.env = command, args or [], env or {}
        self.allow = set(allow) if allow else None
        self.timeout = timeout
        self.requires_approval = requires_approval
        self.tools: dict[str, McpTool] = {}
        self._client: Any = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._keeper: asyncio.Task | None = None
        self.last_error: str | None = None

    @property
    def source(self) -> str:
        return self.url or " ".join([self.command or "", *self.args])

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _target(self) -> Any:
        from mcp.client.stdio import StdioServerParameters
        from mcp.client.streamable_http import streamable_http_client

        if self.url is not None:
            http = httpx2.AsyncClient(headers=self.headers, timeout=httpx2.Timeout(30, read=300),
                                      follow_redirects=False)
            return streamable_http_client(self.url, http_client=http)
        return StdioServerParameters(command=self.command or "", args=self.args, env=self.env or None)

    async def start(self, *, wait: float = CONNECT_TIMEOUT) -> None:
        """Start the keeper and wait (up to ``wait``) for the first connection; a server that is not up yet is
        connected later, in the background."""
        self._keeper = asyncio.create_task(self._keep(), name=f"mcp-{self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait)
        if not self.connected:
            log.warning("MCP server %s is not answering yet (%s); retrying in the background", self.name,
                        self.last_error or "no answer")

    async def close(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeper

    async def _keep(self) -> None:
        from mcp import Client

        attempt = 0
        while not self._stop.is_set():
            try:
                async with Client(self._target(), read_timeout_seconds=self.timeout) as client:
                    listed = await client.list_tools()
                    self._absorb(listed.tools)
                    self._client, attempt, self.last_error = client, 0, None
                    self._ready.set()
                    log.info("MCP server %s connected: %d tools", self.name, len(self.tools))
                    await self._stop.wait()
                    return
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # anyio wraps failures in exception groups
                self.last_error = _describe(exc)
            finally:
                self._client = None
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            attempt += 1
            log.warning("MCP server %s unavailable (%s); reconnecting in %ss", self.name, self.last_error, delay)
            self._ready.set()  # start() waits for the first outcome, good or bad
            await asyncio.sleep(delay)

    def _absorb(self, listed: list) -> None:
        for tool in listed:
            if self.allow is not None and tool.name not in self.allow:
                continue
            name = f"{self.name}__{tool.name}"
            if name in self.tools:
                self.tools[name].schema = tool.input_schema or {"type": "object", "properties": {}}
                continue
            self.tools[name] = McpTool(self, tool.name, tool.description or "",
                                       tool.input_schema or {"type": "object", "properties": {}})

    async def call(self, tool: str, arguments: dict[str, Any]) -> ToolOutput:
        client = self._client
        if client is None:
            raise ToolFailed(f"the MCP server {self.name} is unavailable ({self.last_error or 'not connected'})")
        try:
            result = await client.call_tool(tool, arguments)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise ToolFailed(f"the MCP server {self.name} failed ({_describe(exc)})") from None
        return ToolOutput(_content(result), is_error=bool(result.is_error))


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:160] if text else type(exc).__name__


def _content(result: Any) -> str | list[dict]:
    blocks: list[dict] = []
    for item in result.content or []:
        kind = getattr(item, "type", None)
        if kind == "text":
            blocks.append({"type": "text", "text": item.text})
        elif kind == "image":
            blocks.append({"type": "image", "source": {"type": "base64", "media_type": item.mime_type,
                                                       "data": item.data}})
        else:
            blocks.append({"type": "text", "text": item.model_dump_json(by_alias=True, exclude_none=True)})
    if not blocks and result.structured_content is not None:
        from ..jsonenc import dumps

        return dumps(result.structured_content)
    if all(block["type"] == "text" for block in blocks):
        return "".join(block["text"] for block in blocks)
    return blocks


class McpTool(Tool):
    kind = "mcp"

    def __init__(self, server: McpServer, tool: str, description: str, schema: dict[str, Any]):
        self.server = server
        self.tool = tool
        self.name = f"{server.name}__{tool}"
        self.description = description
        self.schema = schema
        self.timeout = server.timeout
        self.requires_approval = server.requires_approval
        self.source = server.source

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.schema}

    async def run(self, arguments: dict[str, Any]) -> ToolOutput:
        return await self.server.call(self.tool, arguments)
