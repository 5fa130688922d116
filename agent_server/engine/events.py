"""The typed events of a reply: the engine emits them, JSON, SSE and WebSocket only encode them.

Every event of a reply gets a number (``seq``: 1, 2, ... in order) when it is emitted; ``Numbered`` carries that
number, the event's name and its data, with the data's JSON encoded once and shared by the three encoders and by
storage (``reply_events``). The last event of a reply is ``done``, ``error`` or ``cancelled``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..jsonenc import dumps

TERMINAL = frozenset({"done", "error", "cancelled"})


@dataclass(frozen=True, slots=True)
class Numbered:
    seq: int
    name: str
    data: dict[str, Any]
    json: str

    @property
    def terminal(self) -> bool:
        return self.name in TERMINAL


def number(seq: int, name: str, data: dict[str, Any]) -> Numbered:
    return Numbered(seq, name, data, dumps(data))


class Event:
    name: ClassVar[str]

    def data(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Start(Event):
    name: ClassVar[str] = "start"
    reply_id: str
    conversation_id: str
    model: str
    context: dict[str, int]

    def data(self) -> dict[str, Any]:
        return {"reply_id": self.reply_id, "conversation_id": self.conversation_id, "model": self.model,
                "context": self.context}


@dataclass(frozen=True, slots=True)
class Token(Event):
    name: ClassVar[str] = "token"
    text: str

    def data(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass(frozen=True, slots=True)
class Thinking(Event):
    name: ClassVar[str] = "thinking"
    text: str

    def data(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass(frozen=True, slots=True)
class ToolUse(Event):
    name: ClassVar[str] = "tool_use"
    id: str
    tool: str
    input: dict
    kind: str

    def data(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.tool, "input": self.input, "kind": self.kind}


@dataclass(frozen=True, slots=True)
class ToolResult(Event):
    name: ClassVar[str] = "tool_result"
    tool_use_id: str
    is_error: bool
    content: str
    duration_ms: int | None
    truncated: bool = False

    def data(self) -> dict[str, Any]:
        data = {"tool_use_id": self.tool_use_id, "is_error": self.is_error, "content": self.content,
                "duration_ms": self.duration_ms}
        if self.truncated:
            data["truncated"] = True
        return data


@dataclass(frozen=True, slots=True)
class Step(Event):
    name: ClassVar[str] = "step"
    step: int
    stop_reason: str | None
    usage: dict[str, int]
    cost_usd: float | None

    def data(self) -> dict[str, Any]:
        return {"step": self.step, "stop_reason": self.stop_reason, "usage": self.usage, "cost_usd": self.cost_usd}


@dataclass(frozen=True, slots=True)
class RequiresAction(Event):
    name: ClassVar[str] = "requires_action"
    pending: list[dict]

    def data(self) -> dict[str, Any]:
        return {"pending": self.pending}


@dataclass(frozen=True, slots=True)
class Done(Event):
    name: ClassVar[str] = "done"
    payload: dict

    def data(self) -> dict[str, Any]:
        return self.payload


@dataclass(frozen=True, slots=True)
class Error(Event):
    name: ClassVar[str] = "error"
    envelope: dict

    def data(self) -> dict[str, Any]:
        return self.envelope


@dataclass(frozen=True, slots=True)
class Cancelled(Event):
    name: ClassVar[str] = "cancelled"
    reply_id: str
    conversation_id: str
    turn_id: str | None

    def data(self) -> dict[str, Any]:
        return {"reply_id": self.reply_id, "conversation_id": self.conversation_id, "turn_id": self.turn_id}
