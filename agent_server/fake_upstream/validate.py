"""Every rule the real API checks before it generates anything, in one pass: `validate(body, ...)`.

Why: the fake (and the offline stub) must refuse exactly what the real API refuses, or a server's bugs in
building requests (tools, tool choice, thinking, cache breakpoints, context size) only show up in production.
The history rules are in `history_rules`; this module checks the request's other fields, then the cache
breakpoints and the context window over the whole prompt, and returns what the reply needs to know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import tokens
from .caching import breakpoints
from .errors import Refusal
from .history_rules import check_history
from .models import ModelTable
from .signing import Signer

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CHOICES = ("auto", "any", "tool", "none")
MAX_BREAKPOINTS = 4
TTL_ORDER = ("a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block. Note that "
             "blocks are processed in the following order: `tools`, `system`, `messages`.")
BUDGET_BELOW_MAX = ("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation "
                    "at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                    "#max-tokens-and-context-window-size")
FORCED_TOOL = "Thinking may not be enabled when tool_choice forces tool use."


@dataclass(frozen=True)
class RequestFacts:
    """What a valid request declares, for planning the reply and accounting its usage."""

    tool_names: frozenset[str]
    web_search: bool  # a `web_search_*` server tool is declared
    thinking: bool
    prompt: list[tokens.Position]
    marks: list[tuple[int, str]]  # cache breakpoints: (position index, ttl)
    input_tokens: int


def _check_tools(tools: Any) -> tuple[frozenset[str], bool]:
    if tools is None:
        return frozenset(), False
    if not isinstance(tools, list):
        raise Refusal("tools: Input should be a valid list")
    names: list[str] = []
    web_search = False
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise Refusal(f"tools.{index}: Input should be a valid dictionary")
        kind = tool.get("type")
        custom = kind in (None, "custom")
        where = f"tools.{index}.custom" if custom else f"tools.{index}"
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise Refusal(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if custom:
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise Refusal(f"{where}.input_schema: Field required")
            if schema.get("type") != "object":
                raise Refusal(f"{where}.input_schema.type: Input should be 'object'")
        elif isinstance(kind, str) and kind.startswith("web_search_"):
            web_search = True
        names.append(name)
    if len(set(names)) != len(names):
        raise Refusal("tools: Tool names must be unique.")
    return frozenset(names), web_search


def _check_tool_choice(choice: Any, names: frozenset[str], has_tools: bool) -> str | None:
    if choice is None:
        return None
    if not isinstance(choice, dict):
        raise Refusal("tool_choice: Input should be a valid dictionary")
    kind = choice.get("type")
    if kind not in _CHOICES:
        raise Refusal(f"tool_choice: Input tag '{kind}' found using 'type' does not match any of the expected "
                      "tags: 'auto', 'any', 'tool', 'none'")
    if not has_tools and kind != "none":
        raise Refusal("tool_choice may only be specified while providing tools.")
    if "disable_parallel_tool_use" in choice and not isinstance(choice["disable_parallel_tool_use"], bool):
        raise Refusal(f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a valid boolean")
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise Refusal("tool_choice.tool.name: Field required")
        if choice["name"] not in names:
            raise Refusal(f"tool_choice.tool.name: Tool `{choice['name']}` not found in `tools`.")
    return kind


def _check_thinking(thinking: Any, max_tokens: Any, choice: str | None) -> bool:
    if thinking is None:
        return False
    if not isinstance(thinking, dict):
        raise Refusal("thinking: Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind == "disabled":
        return False
    if kind not in ("enabled", "adaptive"):
        raise Refusal(f"thinking: Input tag '{kind}' found using 'type' does not match any of the expected tags: "
                      "'adaptive', 'disabled', 'enabled'")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise Refusal("thinking.enabled.budget_tokens: Field required")
        if budget < 1024:
            raise Refusal("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if isinstance(max_tokens, int) and budget >= max_tokens:
            raise Refusal(BUDGET_BELOW_MAX)
    if choice in ("any", "tool"):
        raise Refusal(FORCED_TOOL)
    return True


def _check_cache_control(prompt: list[tokens.Position], top_level: Any) -> None:
    marked = [(position.path, position.cache_control) for position in prompt if position.cache_control is not None]
    for position in prompt:
        if position.cache_control is not None and position.block.get("type") in ("thinking", "redacted_thinking"):
            kind = position.block["type"]
            raise Refusal(f"{position.path}.{kind}.cache_control: Extra inputs are not permitted")
    if top_level is not None:
        marked.append(("cache_control", top_level))
    if len(marked) > MAX_BREAKPOINTS:
        raise Refusal(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(marked)}.")
    seen_5m = False
    for path, control in marked:
        where = path if path == "cache_control" else f"{path}.cache_control"
        if not isinstance(control, dict) or control.get("type") != "ephemeral":
            raise Refusal(f"{where}.type: Input should be 'ephemeral'")
        ttl = control.get("ttl", "5m")
        if ttl not in ("5m", "1h"):
            raise Refusal(f"{where}.ttl: Input should be '5m' or '1h'")
        if ttl == "1h" and seen_5m:
            raise Refusal(f"{where}.ttl: {TTL_ORDER}")
        seen_5m = seen_5m or ttl == "5m"


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise Refusal("system: Input should be a valid list")
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise Refusal(f"system.{index}.type: Input should be 'text'")
        if not block["text"].strip():
            raise Refusal("system: text content blocks must contain non-whitespace text")


def validate(body: Any, models: ModelTable, signer: Signer) -> RequestFacts:
    """Raise `Refusal` for the first rule `body` breaks; else the facts of the request."""
    if not isinstance(body, dict):
        raise Refusal("The request body is not valid JSON.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Refusal("model: Field required")
    if not isinstance(body.get("messages"), list):
        raise Refusal("messages: Field required")
    names, web_search = _check_tools(body.get("tools"))
    has_tools = bool(body.get("tools"))
    choice = _check_tool_choice(body.get("tool_choice"), names, has_tools)
    thinking = _check_thinking(body.get("thinking"), body.get("max_tokens"), choice)
    check_history(body["messages"], has_tools=has_tools, thinking=thinking, signer=signer)
    system = body.get("system")
    _check_system(system)
    messages, top_level = body["messages"], body.get("cache_control")
    if top_level is None and not body.get("tools") and not isinstance(system, list) and all(
        isinstance(message["content"], str) for message in messages
    ):
        # Plain chat (a benchmark's 1,000-turn history): no breakpoint is possible, so only the total is needed.
        prompt: list[tokens.Position] = []
        total = max(1, tokens.tokens_for(len(system or "") + sum(len(message["content"]) for message in messages)))
    else:
        prompt = tokens.positions(body.get("tools"), system, messages)
        _check_cache_control(prompt, top_level)
        total = tokens.total_tokens(prompt)
    window = models.context_window(model)
    if total > window:
        raise Refusal(f"prompt is too long: {total} tokens > {window} maximum")
    return RequestFacts(names, web_search, thinking, prompt, breakpoints(prompt, top_level), total)
