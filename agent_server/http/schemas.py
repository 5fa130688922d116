"""Request models: they validate what clients send and generate the OpenAPI description.

Limits that depend on configuration (allowed models, the ``max_tokens`` ceiling, message length, the configured
tools) are checked against the validation context that ``body.validate`` passes in.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from ..text import not_unicode, unstorable


@dataclass(frozen=True)
class Limits:
    models: frozenset[str]
    max_tokens: int
    max_message_chars: int
    default_max_tokens: int = 1024
    # A live view, not a snapshot: an MCP server that connects (or adds a tool) after start-up is offered at once.
    tools: Collection[str] = frozenset()


def _limits(info: ValidationInfo) -> Limits | None:
    context: Any = info.context
    return context.get("limits") if isinstance(context, dict) else None


def _encodable(value: str) -> str:
    problem = not_unicode(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _storable(value: str) -> str:
    problem = unstorable(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _check_message(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise ValueError("must contain more than whitespace")
    limits = _limits(info)
    if limits and len(value) > limits.max_message_chars:
        raise ValueError(f"is longer than {limits.max_message_chars} characters")
    return _encodable(value)


def _check_model(value: str | None, info: ValidationInfo) -> str | None:
    limits = _limits(info)
    if value is not None and limits and value not in limits.models:
        raise ValueError(f"unknown model {value[:100]!r}; allowed: {', '.join(sorted(limits.models))}")
    return value


def _check_max_tokens(value: int | None, info: ValidationInfo) -> int | None:
    limits = _limits(info)
    if value is not None and limits and value > limits.max_tokens:
        raise ValueError(f"must be at most {limits.max_tokens}")
    return value


def _check_tools(value: list[str] | None, info: ValidationInfo) -> list[str] | None:
    limits = _limits(info)
    if value is not None and limits is not None:
        unknown = [name for name in value if name not in limits.tools]
        if unknown:
            shown = unknown[0][:64]
            raise ValueError(f"unknown tool {shown!r}; configured: {', '.join(sorted(limits.tools)) or 'none'}")
    return value


Text = Annotated[str, AfterValidator(_storable)]
Message = Annotated[str, Field(min_length=1, description="The user's message."), AfterValidator(_check_message)]
ModelName = Annotated[
    str | None, Field(default=None, description="One of the allowed models."), AfterValidator(_check_model)
]
MaxTokens = Annotated[
    int | None, Field(default=None, ge=1, description="At most the server's ceiling."),
    AfterValidator(_check_max_tokens),
]
ToolNames = Annotated[
    list[Annotated[str, Field(max_length=128)]] | None,
    Field(default=None, max_length=256, description="Tools to offer for this reply (default: every configured one)."),
    AfterValidator(_check_tools),
]


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["auto", "any", "none", "tool"]
    name: str | None = Field(default=None, max_length=128)
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("a name is given exactly when type is 'tool'")
        return self


class ThinkingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    budget_tokens: int = Field(ge=1024, description="Tokens the model may think with (at least 1024).")


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tool_use_id: str = Field(min_length=1, max_length=100)
    approved: bool
    reason: Text | None = Field(default=None, max_length=2000)


class ClientToolResult(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tool_use_id: str = Field(min_length=1, max_length=100)
    content: Text | list[dict[str, Any]]
    is_error: bool = False


class ReplyOptions(BaseModel):
    """Fields every way of asking for a reply shares."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: ModelName = None
    max_tokens: MaxTokens = None
    tools: ToolNames = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingRequest | None = None
    on_disconnect: Literal["continue", "cancel"] | None = None

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ReplyOptions:
        limits = _limits(info)
        if self.thinking is not None:
            ceiling = self.max_tokens or (limits.default_max_tokens if limits else None)
            if ceiling is not None and self.thinking.budget_tokens >= ceiling:
                raise ValueError(f"thinking.budget_tokens must be less than max_tokens ({ceiling})")
            if self.tool_choice is not None and self.tool_choice.type in ("any", "tool"):
                raise ValueError("thinking cannot be used with a tool_choice that forces a tool")
        if self.tool_choice is not None and self.tool_choice.type == "tool" and limits is not None:
            if self.tool_choice.name not in limits.tools:
                raise ValueError(f"tool_choice names an unknown tool {str(self.tool_choice.name)[:64]!r}")
        if self.tool_choice is not None and self.tool_choice.type == "tool" and self.tools is not None:
            if self.tool_choice.name not in self.tools:
                raise ValueError(f"tool_choice names {str(self.tool_choice.name)[:64]!r}, which tools does not offer")
        return self


class AgentRequest(ReplyOptions):
    """Body of ``POST /agent`` and ``POST /agent/stream``."""

    message: Message | None = None
    conversation_id: str | None = Field(default=None, max_length=64, description="Continue this conversation.")
    system: Text | None = Field(default=None, description="System prompt of a new conversation.")
    approvals: list[Approval] = Field(default_factory=list, max_length=128)
    tool_results: list[ClientToolResult] = Field(default_factory=list, max_length=128)
    background: bool = Field(default=False, description="Answer 202 at once; the reply runs on (POST /agent).")

    @model_validator(mode="after")
    def _something_to_say(self) -> AgentRequest:
        if self.message is None and not self.approvals and not self.tool_results:
            raise ValueError("give a message, or answers (approvals, tool_results) to pending actions")
        if (self.approvals or self.tool_results) and self.conversation_id is None:
            raise ValueError("answers to pending actions need the conversation_id")
        return self


class WsMessage(ReplyOptions):
    """A ``message`` frame on the WebSocket (``type`` may be omitted). The session holds the conversation."""

    type: Literal["message"] = "message"
    message: Message


class WsApproval(Approval):
    type: Literal["approval"]


class WsToolResult(ClientToolResult):
    type: Literal["tool_result"]
