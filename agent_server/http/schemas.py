"""Request models: they validate what clients send and generate the OpenAPI description.

Limits that depend on configuration (allowed models, the ``max_tokens`` ceiling, message length) are
checked against the validation context that ``body.validate`` passes in.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo


class Limits(BaseModel):
    models: frozenset[str]
    max_tokens: int
    max_message_chars: int


def _limits(info: ValidationInfo) -> Limits | None:
    context: Any = info.context
    return context.get("limits") if isinstance(context, dict) else None


def _check_message(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise ValueError("must contain more than whitespace")
    limits = _limits(info)
    if limits and len(value) > limits.max_message_chars:
        raise ValueError(f"is longer than {limits.max_message_chars} characters")
    return value


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


Message = Annotated[str, Field(min_length=1, description="The user's message."), AfterValidator(_check_message)]
ModelName = Annotated[
    str | None, Field(default=None, description="One of the allowed models."), AfterValidator(_check_model)
]
MaxTokens = Annotated[
    int | None, Field(default=None, ge=1, description="At most the server's ceiling."),
    AfterValidator(_check_max_tokens),
]


class AgentRequest(BaseModel):
    """Body of ``POST /agent`` and ``POST /agent/stream``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    message: Message
    conversation_id: str | None = Field(default=None, max_length=64, description="Continue this conversation.")
    system: str | None = Field(default=None, description="System prompt of a new conversation.")
    model: ModelName = None
    max_tokens: MaxTokens = None


class WsMessage(BaseModel):
    """A ``message`` frame on the WebSocket (``type`` may be omitted). The session holds the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["message"] = "message"
    message: Message
    model: ModelName = None
    max_tokens: MaxTokens = None
