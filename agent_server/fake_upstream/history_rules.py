"""The real API's rules for the `messages` history, enforced by the fake on every request.

Why: a server that runs a tool loop can easily send a history the real API refuses (a `tool_use` left without
its `tool_result` after a cancelled turn, an edited thinking block, whitespace-only text); each such request is
a 400 upstream, and usually every later request of that conversation too. The fake refuses the same requests
with the same wording (where known), so tests catch those bugs before production does.

Consecutive user messages are merged, as the real API does: a "turn" below is such a run, or one assistant
message.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import Refusal
from .signing import Signer

NO_TOOLS = "Requests which include `tool_use` or `tool_result` blocks must define tools."
WHITESPACE = "messages: text content blocks must contain non-whitespace text"
THINKING_FIRST = (
    "Expected `thinking` or `redacted_thinking`, but found `{found}`. When `thinking` is enabled, a final "
    "`assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and "
    "`tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this "
    "requirement, disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_ASSISTANT_ONLY = {"tool_use", "thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result"}
_THINKING = ("thinking", "redacted_thinking")
_PAIRED = {"tool_use", "tool_result", "server_tool_use", "web_search_tool_result"}


def _blocks(message: dict[str, Any]) -> list[Any]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _check_block(n: int, m: int, role: str, block: Any, signer: Signer) -> None:
    where = f"messages.{n}.content.{m}"
    if not isinstance(block, dict):
        raise Refusal(f"{where}: Input should be a valid dictionary")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise Refusal(f"{where}.type: Field required")
    if role == "user" and kind in _ASSISTANT_ONLY:
        raise Refusal(f"{where}: `{kind}` blocks can only be in `assistant` messages")
    if role == "assistant" and kind == "tool_result":
        raise Refusal(f"{where}: `tool_result` blocks can only be in `user` messages")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise Refusal(f"{where}.text.text: Field required")
        if not block["text"].strip():
            raise Refusal(WHITESPACE)
    elif kind in ("tool_use", "server_tool_use"):
        if not isinstance(block.get("id"), str) or not _TOOL_ID.match(block["id"]):
            raise Refusal(f"{where}.{kind}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(block.get("name"), str):
            raise Refusal(f"{where}.{kind}.name: Field required")
        if not isinstance(block.get("input"), dict):
            raise Refusal(f"{where}.{kind}.input: Input should be a valid dictionary")
    elif kind in ("tool_result", "web_search_tool_result"):
        if not isinstance(block.get("tool_use_id"), str):
            raise Refusal(f"{where}.{kind}.tool_use_id: Field required")
    elif kind == "thinking":
        for field in ("thinking", "signature"):
            if not isinstance(block.get(field), str):
                raise Refusal(f"{where}.thinking.{field}: Field required")
        if not signer.verify(block["thinking"], block["signature"]):
            raise Refusal(f"{where}: Invalid `signature` in `thinking` block")
    elif kind == "redacted_thinking":
        if not isinstance(block.get("data"), str):
            raise Refusal(f"{where}.redacted_thinking.data: Field required")
        if not signer.verify_redacted(block["data"]):
            raise Refusal(f"{where}: Invalid `data` in `redacted_thinking` block")


def _check_message(n: int, message: Any, final: bool, signer: Signer) -> bool:
    """Raise for a malformed message; True when it holds blocks that must pair up (tool or server tool)."""
    if not isinstance(message, dict):
        raise Refusal(f"messages.{n}: Input should be a valid dictionary")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise Refusal(f"messages.{n}.role: Input should be 'user' or 'assistant'")
    content = message.get("content")
    if not isinstance(content, (str, list)):
        raise Refusal(f"messages.{n}.content: Input should be a valid list")
    prefill = final and role == "assistant"
    if not content:
        if prefill:
            return False
        raise Refusal(f"messages.{n}: all messages must have non-empty content except for the optional final "
                      "assistant message")
    if isinstance(content, str):
        if not content.strip():
            raise Refusal(WHITESPACE)
    else:
        for m, block in enumerate(content):
            _check_block(n, m, role, block, signer)
    if prefill:
        last = _blocks(message)[-1]
        if last.get("type") == "text" and last["text"] != last["text"].rstrip():
            raise Refusal("messages: final assistant content cannot end with trailing whitespace")
    return isinstance(content, list) and any(block["type"] in _PAIRED for block in content)


def _turns(messages: list[dict[str, Any]]) -> list[tuple[str, list[tuple[int, int, dict[str, Any]]]]]:
    """Consecutive user messages merged into one turn (as upstream); each assistant message a turn of its own,
    since its tool calls must be answered by the very next message. Blocks are (message, block index, block)."""
    turns: list[tuple[str, list[tuple[int, int, dict[str, Any]]]]] = []
    for n, message in enumerate(messages):
        blocks = [(n, m, block) for m, block in enumerate(_blocks(message))]
        if turns and turns[-1][0] == message["role"] == "user":
            turns[-1][1].extend(blocks)
        else:
            turns.append((message["role"], blocks))
    return turns


def _missing(where: int, missing: list[str]) -> Refusal:
    return Refusal(f"messages.{where}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                   f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in "
                   "the next message.")


def _check_pairs(turns: list[tuple[str, list[tuple[int, int, dict[str, Any]]]]]) -> None:
    """Every `tool_use` answered first thing in the next turn; every `tool_result` answering one."""
    seen: set[str] = set()
    asked: list[str] = []  # tool_use ids of the assistant turn just before
    for role, blocks in turns:
        if role == "assistant":
            if asked:
                raise _missing(blocks[0][0], asked)
            asked, servers = [], set[str]()
            for n, m, block in blocks:
                kind = block["type"]
                if kind in ("tool_use", "server_tool_use"):
                    if block["id"] in seen:
                        raise Refusal(f"messages.{n}.content.{m}: `tool_use` ids must be unique")
                    seen.add(block["id"])
                    if kind == "tool_use":
                        asked.append(block["id"])
                    else:
                        servers.add(block["id"])
                elif kind == "web_search_tool_result" and block["tool_use_id"] not in servers:
                    raise Refusal(f"messages.{n}.content.{m}: unexpected `tool_use_id` found in "
                                  f"`web_search_tool_result` blocks: {block['tool_use_id']}. Each "
                                  "`web_search_tool_result` block must have a corresponding `server_tool_use` "
                                  "block before it.")
            continue
        leading: set[str] = set()
        for n, m, block in blocks:
            if block["type"] != "tool_result":
                break
            leading.add(block["tool_use_id"])
        missing = [tool_id for tool_id in asked if tool_id not in leading]
        if missing:
            raise _missing(blocks[0][0], missing)
        for n, m, block in blocks:
            if block["type"] == "tool_result" and block["tool_use_id"] not in asked:
                raise Refusal(f"messages.{n}.content.{m}: unexpected `tool_use_id` found in `tool_result` blocks: "
                              f"{block['tool_use_id']}. Each `tool_result` block must have a corresponding "
                              "`tool_use` block in the previous message.")
        asked = []


def _check_thinking_loop(turns: list[tuple[str, list[tuple[int, int, dict[str, Any]]]]]) -> None:
    """With thinking on, an unfinished tool loop's assistant turn must start with its thinking."""
    if len(turns) < 2 or turns[-1][0] != "user" or turns[-2][0] != "assistant":
        return
    if not any(block["type"] == "tool_result" for _, _, block in turns[-1][1]):
        return
    assistant = turns[-2][1]
    if not any(block["type"] == "tool_use" for _, _, block in assistant):
        return
    n, _, first = assistant[0]
    if first["type"] not in _THINKING:
        raise Refusal(f"messages.{n}.content.0.type: " + THINKING_FIRST.format(found=first["type"]))


def check_history(messages: Any, *, has_tools: bool, thinking: bool, signer: Signer) -> None:
    """Raise `Refusal` for the first rule the history breaks, checked in the order the API does."""
    if not isinstance(messages, list):
        raise Refusal("messages: Field required")
    if not messages:
        raise Refusal("messages: at least one message is required")
    last = len(messages) - 1
    paired = [_check_message(n, message, n == last, signer) for n, message in enumerate(messages)]
    if messages[0]["role"] != "user":
        raise Refusal('messages: first message must use the "user" role')
    if not any(paired):
        return  # nothing to pair up, and no tool loop to check (the common, plain-chat case: keep it fast)
    if not has_tools:
        for message in messages:
            if isinstance(message["content"], list) and any(
                block.get("type") in ("tool_use", "tool_result") for block in message["content"]
            ):
                raise Refusal(NO_TOOLS)
    turns = _turns([message for message in messages if message["content"]])  # only a final prefill may be empty
    _check_pairs(turns)
    if thinking:
        _check_thinking_loop(turns)
