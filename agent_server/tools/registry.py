"""The tools file (``AGENT_TOOLS_FILE``, TOML) and the registry built from it once, at start-up.

    [tools.<name>]          python = "module:function", requires_approval?, timeout_seconds?, description?
    [mcp.<server>]          url = "..." (+ headers) or command = "..." (+ args, env); allow?, timeout_seconds?,
                            requires_approval?
    [server_tools.<name>]   type = "web_search_20250305", and the tool's own settings (max_uses, ...)
    [client_tools.<name>]   description, input_schema, requires_approval? (meaningless: the client decides)

``${VAR}`` anywhere in a string value is replaced by the environment variable ``VAR`` (a missing one is an error
naming it, never its value). An invalid file, an unknown module, a duplicate name: ``ToolConfigError`` with one
line naming it, and the server does not start.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from .base import Tool, ToolConfigError
from .client import ClientTool
from .mcp import McpServer
from .python import PythonTool
from .server import ServerTool

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECTIONS = {"tools", "mcp", "server_tools", "client_tools"}


def expand(value: Any, where: str) -> Any:
    """``${VAR}`` from the environment, in every string of ``value``."""
    if isinstance(value, str):
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ToolConfigError(f"{where}: the environment variable {name} is not set")
            return os.environ[name]

        return _VARIABLE.sub(replace, value)
    if isinstance(value, dict):
        return {key: expand(item, where) for key, item in value.items()}
    if isinstance(value, list):
        return [expand(item, where) for item in value]
    return value


def _table(section: dict, name: str, where: str) -> dict:
    entry = section[name]
    if not isinstance(entry, dict):
        raise ToolConfigError(f"{where} must be a table")
    if not _NAME.match(name):
        raise ToolConfigError(f"{where}: a tool name may use letters, digits, _ and - (at most 64)")
    return entry


def _timeout(entry: dict, where: str) -> float | None:
    value = entry.get("timeout_seconds")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ToolConfigError(f"{where}: timeout_seconds must be a positive number")
    return float(value)


def _flag(entry: dict, key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ToolConfigError(f"{where}: {key} must be true or false")
    return value


class LiveNames(Collection[str]):
    """A registry's tool names as they are now (a ``Collection``, so validation can test and list them)."""

    def __init__(self, registry: ToolRegistry):
        self._registry = registry

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._registry.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry.tools)


class ToolRegistry:
    def __init__(self, tools: list[Tool] | None = None, servers: list[McpServer] | None = None,
                 source: str | None = None):
        self._fixed = {tool.name: tool for tool in tools or []}
        self.servers = servers or []
        self.source = source

    @classmethod
    def empty(cls) -> ToolRegistry:
        return cls()

    @classmethod
    def load(cls, path: Path) -> ToolRegistry:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ToolConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ToolConfigError(f"{path} is not valid TOML ({exc})") from None
        unknown = set(data) - _SECTIONS
        if unknown:
            raise ToolConfigError(f"{path}: unknown section [{sorted(unknown)[0]}] "
                                  "(expected tools, mcp, server_tools, client_tools)")
        tools: list[Tool] = []
        servers: list[McpServer] = []
        for name in data.get("tools", {}):
            where = f"{path}: [tools.{name}]"
            entry = _table(data["tools"], name, where)
            if not isinstance(entry.get("python"), str):
                raise ToolConfigError(f"{where} needs python = \"module:function\"")
            try:
                tools.append(PythonTool(name, entry["python"], description=entry.get("description"),
                                        requires_approval=_flag(entry, "requires_approval", where),
                                        timeout=_timeout(entry, where)))
            except ToolConfigError as exc:
                raise ToolConfigError(f"{where}: {exc}") from None
        for name in data.get("mcp", {}):
            where = f"{path}: [mcp.{name}]"
            entry = expand(_table(data["mcp"], name, where), where)
            allow = entry.get("allow")
            if allow is not None and not (isinstance(allow, list) and all(isinstance(a, str) for a in allow)):
                raise ToolConfigError(f"{where}: allow must be a list of tool names")
            try:
                servers.append(McpServer(
                    name, url=entry.get("url"), headers=entry.get("headers"), command=entry.get("command"),
                    args=entry.get("args"), env=entry.get("env"), allow=allow, timeout=_timeout(entry, where),
                    requires_approval=_flag(entry, "requires_approval", where)))
            except ToolConfigError as exc:
                raise ToolConfigError(f"{where}: {exc}") from None
        for name in data.get("server_tools", {}):
            where = f"{path}: [server_tools.{name}]"
            entry = expand(_table(data["server_tools"], name, where), where)
            if not isinstance(entry.get("type"), str):
                raise ToolConfigError(f"{where} needs type = \"...\" (e.g. web_search_20250305)")
            if entry.get("requires_approval"):
                raise ToolConfigError(f"{where}: server tools cannot require approval (Anthropic runs them inside "
                                      "one upstream call, before this server sees the call)")
            tools.append(ServerTool(name, entry))
        for name in data.get("client_tools", {}):
            where = f"{path}: [client_tools.{name}]"
            entry = _table(data["client_tools"], name, where)
            schema = entry.get("input_schema", {"type": "object", "properties": {}})
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise ToolConfigError(f"{where}: input_schema must be a JSON schema of type object")
            tools.append(ClientTool(name, str(entry.get("description", "")), schema))
        names = [tool.name for tool in tools]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ToolConfigError(f"{path}: the tool name {duplicate!r} is declared twice")
        server_names = {server.name for server in servers}
        clash = next((n for n in names if n.split("__")[0] in server_names and "__" in n), None)
        if clash is not None:
            raise ToolConfigError(f"{path}: {clash!r} clashes with an MCP server's tool names")
        return cls(tools, servers, source=str(path))

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    async def close(self) -> None:
        for server in self.servers:
            await server.close()

    @property
    def tools(self) -> dict[str, Tool]:
        every = dict(self._fixed)
        for server in self.servers:
            every.update(server.tools)
        return every

    def names(self) -> list[str]:
        return sorted(self.tools)

    def get(self, name: str) -> Tool | None:
        tool = self._fixed.get(name)
        if tool is not None:
            return tool
        for server in self.servers:
            if name in server.tools:
                return server.tools[name]
        return None

    def live_names(self) -> LiveNames:
        """The names a request may ask for, read at each request: MCP servers' tools come and go."""
        return LiveNames(self)

    def definitions(self, names: list[str] | None) -> list[dict]:
        tools = self.tools
        chosen = sorted(tools) if names is None else [n for n in names if n in tools]
        return [tools[name].definition() for name in chosen]
