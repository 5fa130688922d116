"""A tool the client runs (the user's location, a file on their device): declared to the model like any tool;
when the model calls it, the reply pauses with ``requires_action`` until the client sends the result."""

from __future__ import annotations

from typing import Any

from .base import Tool


class ClientTool(Tool):
    kind = "client"

    def __init__(self, name: str, description: str, input_schema: dict[str, Any]):
        self.name = name
        self.description = description
        self.input_schema = input_schema
        self.source = "client"

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}
