"""Request validation reads the tools as they are now: an MCP server's tool that appears after start-up can be
asked for at once, and one that went away is refused."""

from __future__ import annotations

import mcp.types
import pytest

from agent_server import errors
from agent_server.http.body import validate
from agent_server.http.schemas import AgentRequest, Limits
from agent_server.tools.mcp import McpServer
from agent_server.tools.registry import ToolRegistry


def _listed(*names: str) -> list[mcp.types.Tool]:
    return [mcp.types.Tool(name=name, description=name, input_schema={"type": "object", "properties": {}})
            for name in names]


def test_a_tool_an_mcp_server_adds_later_is_accepted_and_one_it_drops_is_refused() -> None:
    server = McpServer("docs", command="true")
    registry = ToolRegistry([], [server])
    limits = Limits(models=frozenset({"claude-sonnet-4-5"}), max_tokens=4096, max_message_chars=1000,
                    tools=registry.live_names())
    ask = {"message": "Hi", "tools": ["docs__late"], "tool_choice": {"type": "tool", "name": "docs__late"}}
    with pytest.raises(errors.ValidationFailed, match="unknown tool 'docs__late'; configured: none"):
        validate(AgentRequest, ask, limits)
    server._absorb(_listed("late"))  # what the keeper does when the server lists a new tool
    assert validate(AgentRequest, ask, limits).tools == ["docs__late"]
    assert list(limits.tools) == ["docs__late"] and len(limits.tools) == 1
    server.tools.clear()
    with pytest.raises(errors.ValidationFailed, match="unknown tool"):
        validate(AgentRequest, ask, limits)
