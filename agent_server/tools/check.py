"""``agent-server tools``: the configured tools, one line each, and whether each works."""

from __future__ import annotations

import asyncio
import sys

from .base import ToolConfigError
from .registry import ToolRegistry


def check_tools(settings) -> int:  # type: ignore[no-untyped-def]
    if settings.tools_file is None:
        print("no tools: AGENT_TOOLS_FILE is not set (see tools.example.toml)")
        return 0
    try:
        registry = ToolRegistry.load(settings.tools_file)
    except ToolConfigError as exc:
        print(f"agent-server tools: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_check(registry))


async def _check(registry: ToolRegistry) -> int:
    failed = None
    for server in registry.servers:
        await server.start(wait=10)
        if not server.connected:
            failed = failed or f"the MCP server {server.name} ({server.source}) does not answer: {server.last_error}"
    try:
        print(f"{'name':<32} {'kind':<8} {'approval':<9} source")
        for name in registry.names():
            tool = registry.get(name)
            assert tool is not None
            approval = "required" if tool.requires_approval else ("client" if tool.kind == "client" else "-")
            print(f"{name:<32} {tool.kind:<8} {approval:<9} {tool.source}")
        for server in registry.servers:
            if not server.connected:
                print(f"{server.name + '__*':<32} {'mcp':<8} {'-':<9} {server.source}  (NOT ANSWERING)")
    finally:
        await registry.close()
    if failed:
        print(f"agent-server tools: {failed}", file=sys.stderr)
        return 1
    return 0
