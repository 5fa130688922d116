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
import re
from typing import Any

import httpx2

from .base import Tool, ToolConfigError, ToolFailed, ToolOutput

log = logging.getLogger(__name__)
_API_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # the Messages API's rule for a tool's name
CONNECT_TIMEOUT = 15.0
RECONNECT_DELAYS = (0.5, 1, 2, 5, 10, 30)
# A live session is asked for its tools this often, so that a server that died between calls (a stdio child that
# exited says nothing) is noticed and reconnected before the next reply needs it.
HEALTH_EVERY = 5.0
HEALTH_TIMEOUT = 10.0
# A call that finds its server reconnecting waits this long for it (and cuts the keeper's pause short).
CALL_CONNECT_WAIT = 5.0


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
        self._refused: set[str] = set()  # tool names the API would refuse, warned about once
        self._client: Any = None
        self._ready = asyncio.Event()  # the first connection attempt has an outcome, good or bad
        self._connected = asyncio.Event()  # a session is live
        self._lost = asyncio.Event()  # a call saw the session die: the keeper drops it and reconnects
        self._retry_now = asyncio.Event()  # a call is waiting: the keeper's pause between attempts ends
        self._stop = asyncio.Event()
        self._keeper: asyncio.Task | None = None
        self.last_error: str | None = None

    @property
    def source(self) -> str:
        return self.url or " ".join([self.command or "", *self.args])

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def _target(self, stack: contextlib.AsyncExitStack) -> Any:
        from mcp.client.stdio import StdioServerParameters
        from mcp.client.streamable_http import streamable_http_client

        if self.url is not None:
            # The transport does not close a client it is given: the stack does, when the session ends.
            http = await stack.enter_async_context(httpx2.AsyncClient(
                headers=self.headers, timeout=httpx2.Timeout(30, read=300), follow_redirects=False))
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
            self._lost.clear()
            self._retry_now.clear()
            try:
                async with contextlib.AsyncExitStack() as stack:
                    target = await self._target(stack)
                    client = await stack.enter_async_context(Client(target, read_timeout_seconds=self.timeout))
                    listed = await client.list_tools()
                    self._absorb(listed.tools)
                    self._client, attempt, self.last_error = client, 0, None
                    self._connected.set()
                    self._ready.set()
                    log.info("MCP server %s connected: %d tools", self.name, len(self.tools))
                    await self._watch(client)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # anyio wraps failures in exception groups
                self.last_error = _describe(exc)
            finally:
                self._client = None
                self._connected.clear()
            if self._stop.is_set():
                return
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            attempt += 1
            log.warning("MCP server %s unavailable (%s); reconnecting in %ss", self.name, self.last_error, delay)
            self._ready.set()  # start() waits for the first outcome, good or bad
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_now.wait(), delay)

    async def _watch(self, client: Any) -> None:
        """Hold the session until the server stops, a call saw it die, or it stops answering (asked every
        ``HEALTH_EVERY`` seconds: tools it adds meanwhile are offered from then on)."""
        stop, lost = asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._lost.wait())
        try:
            while True:
                await asyncio.wait({stop, lost}, timeout=HEALTH_EVERY, return_when=asyncio.FIRST_COMPLETED)
                if stop.done():
                    return
                if lost.done():
                    self.last_error = self.last_error or "the connection was lost"
                    return
                try:
                    async with asyncio.timeout(HEALTH_TIMEOUT):  # a round trip (ping is deprecated in MCP 2)
                        listed = await client.list_tools(cache_mode="bypass")
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    self.last_error = f"no answer when asked for its tools ({_describe(exc)})"
                    return
                self._absorb(listed.tools)
        finally:
            for waiter in (stop, lost):
                waiter.cancel()

    def _absorb(self, listed: list) -> None:
        for tool in listed:
            if self.allow is not None and tool.name not in self.allow:
                continue
            name = f"{self.name}__{tool.name}"
            if not _API_NAME.match(name):
                # MCP allows names (dots, slashes, any length) that the Messages API refuses: declaring one would
                # fail every request of every reply.
                if name not in self._refused:
                    self._refused.add(name)
                    log.warning("MCP server %s: its tool %r is not offered (the Messages API allows tool names of "
                                "letters, digits, _ and - up to 64 characters, prefix included)", self.name,
                                tool.name[:100])
                continue
            if name in self.tools:
                self.tools[name].schema = tool.input_schema or {"type": "object", "properties": {}}
                continue
            self.tools[name] = McpTool(self, tool.name, tool.description or "",
                                       tool.input_schema or {"type": "object", "properties": {}})

    async def call(self, tool: str, arguments: dict[str, Any]) -> ToolOutput:
        client = self._client
        if client is None:
            client = await self._reconnected()
        if client is None:
            raise ToolFailed(f"the MCP server {self.name} is unavailable ({self.last_error or 'not connected'})")
        try:
            result = await client.call_tool(tool, arguments)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if _connection_lost(exc) and client is self._client:
                # Later calls wait for the keeper's new session rather than use this dead one.
                self._client = None
                self._connected.clear()
                self.last_error = f"the connection was lost ({_describe(exc)})"
                self._lost.set()
            raise ToolFailed(f"the MCP server {self.name} failed ({_describe(exc)})") from None
        return ToolOutput(_content(result), is_error=bool(result.is_error))

    async def _reconnected(self) -> Any:
        """The session, once the keeper has one again (at most ``CALL_CONNECT_WAIT`` from now), or None."""
        if self._keeper is None or self._keeper.done():
            return None
        self._retry_now.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), CALL_CONNECT_WAIT)
        return self._client


def _connection_lost(exc: BaseException) -> bool:
    """Whether a failed call means the session is gone (rather than the server refusing this one call)."""
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED

    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.code == CONNECTION_CLOSED
    return True  # a transport failure (a closed stream, a refused connection, a broken pipe)


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
