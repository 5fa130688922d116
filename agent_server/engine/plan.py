"""What a reply is given when it opens, and the pieces of the process it runs in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..db.base import Database
from ..metrics import Metrics
from ..money.prices import PriceTable
from ..tools.registry import ToolRegistry
from ..upstream.client import Claude
from .history import Message
from .journal import EventStore
from .request import CachePolicy


@dataclass(frozen=True)
class EngineSettings:
    max_steps: int = 10
    tool_timeout: float = 30.0
    tool_output_limit: int = 100_000
    cache: CachePolicy = field(default_factory=lambda: CachePolicy("5m"))


@dataclass
class EngineContext:
    """The process-wide pieces every reply uses."""

    db: Database
    claude: Claude
    prices: PriceTable
    tools: ToolRegistry
    events: EventStore
    metrics: Metrics
    settings: EngineSettings


@dataclass
class Answer:
    """A decision on a pending tool call, applied when the reply that continues it starts."""

    run_id: str
    tool_use_id: str
    name: str
    input: dict[str, Any]
    action: str  # approval | client_tool | superseded
    approved: bool | None = None
    reason: str | None = None
    content: str | list | None = None
    is_error: bool = False
    decided_by: str | None = None


@dataclass
class PendingStep:
    """The paused step a reply continues: its number, call, the tool calls in order and results already known."""

    step: int
    call_id: str | None
    order: list[str]
    done: dict[str, dict]  # tool_use_id -> {"content", "is_error", "duration_ms"} of calls that already ran
    answers: list[Answer]


@dataclass
class ReplyPlan:
    reply_id: str
    conversation_id: str
    owner: str
    route: str
    model: str
    max_tokens: int
    system: str | None
    tool_names: list[str] | None  # offered this reply (None: every configured tool)
    tool_choice: dict | None
    thinking: dict | None
    lease_token: str
    prompt: Message | None  # stored already (the opening transaction did it)
    prompt_turn_id: str | None
    first_call_id: str | None  # the first step's ledger row, written by the opening transaction
    next_seq: int
    before_seq: int | None  # history to read: turns before this seq (None: a new conversation, nothing to read)
    context_from_seq: int | None
    continues: PendingStep | None = None
    late_prompt: Message | None = None  # a message sent while actions were pending: stored after their results
    history: list[Message] = field(default_factory=list)
    context: dict[str, int] = field(default_factory=lambda: {"turns_sent": 1, "turns_omitted": 0})
    context_changed: bool = False
