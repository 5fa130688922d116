"""What every kind of tool is to the engine: a name, a definition for the request's ``tools``, and (for the kinds
this server runs) ``run``. The hierarchy:

    Tool                  the interface
    ├── PythonTool        python.py   a function, in this process (sync ones in a thread)
    ├── McpTool           mcp.py      one tool of an MCP server (stdio child or streamable HTTP)
    ├── ServerTool        server.py   run by Anthropic (web search): declared, never run here
    └── ClientTool        client.py   run by the client: the reply pauses for its result
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ToolConfigError(ValueError):
    """The tools file, or a tool in it, cannot be used; the message names which."""


class ToolFailed(Exception):
    """A tool could not run for a reason worth telling the model (a short sentence, no traceback)."""


@dataclass(frozen=True)
class ToolOutput:
    """What a tool gave back: text, or content blocks (text, image), and whether it is an error."""

    content: str | list[dict[str, Any]]
    is_error: bool = False


class Tool:
    name: str
    kind: str  # python | mcp | server | client
    description: str = ""
    requires_approval: bool = False
    timeout: float | None = None  # None: AGENT_TOOL_TIMEOUT_SECONDS
    source: str = ""

    @property
    def runs_here(self) -> bool:
        return self.kind in ("python", "mcp")

    def definition(self) -> dict[str, Any]:
        raise NotImplementedError

    async def run(self, arguments: dict[str, Any]) -> ToolOutput:
        raise ToolFailed(f"{self.name} is not run by this server")

    async def check(self) -> None:
        """Raise ToolConfigError when the tool cannot work (``agent-server tools``)."""
