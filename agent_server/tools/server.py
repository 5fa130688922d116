"""An Anthropic server tool (web search, web fetch, code execution): declared in the request, run by Anthropic,
its calls and results come back in the same message, and its fee is in the ledger (``money.prices``).

Server tools cannot require approval: the model runs them inside one upstream call, before this server sees the
call, so there is no moment at which to ask.
"""

from __future__ import annotations

from typing import Any

from .base import Tool


class ServerTool(Tool):
    kind = "server"

    def __init__(self, name: str, declaration: dict[str, Any]):
        self.name = name
        self.declaration = {**declaration, "name": declaration.get("name", name)}
        self.source = str(declaration.get("type"))

    def definition(self) -> dict[str, Any]:
        return dict(self.declaration)
