"""The real API's request rules, enforced by the fake: each refusal is a 400 with the API's wording, recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from agent_server.fake_upstream import Behaviour, FakeUpstream, wire

MODEL = "claude-sonnet-5-5"
TOOL = {"name": "get_time", "description": "The time", "input_schema": {"type": "object"}}
USE = {"type": "tool_use", "id": "toolu_a", "name": "get_time", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_a", "content": "12:00"}
ASK = {"role": "user", "content": "what time is it?"}
CC = {"type": "ephemeral"}


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=2, timeout=10) as sdk:
        yield sdk


async def refused(fake: FakeUpstream, client: anthropic.AsyncAnthropic, **request: Any) -> str:
    """Send a request the API refuses; return its message, checked to be recorded (and never retried)."""
    request = {"model": MODEL, "max_tokens": 1024, **request}
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(**request)
    error = caught.value
    assert error.status_code == 400 and error.type == "invalid_request_error"
    [*_, last] = fake.requests()
    [*_, violation] = fake.violations()
    assert last["status"] == 400 and violation["request_id"] == last["id"] == error.request_id
    assert violation["message"] == error.body["error"]["message"]
    return violation["message"]


def loop(*tail: dict) -> list[dict]:
    return [ASK, {"role": "assistant", "content": [USE]}, *tail]


async def test_tool_blocks_need_tools(fake: FakeUpstream, client) -> None:
    message = await refused(fake, client, messages=loop({"role": "user", "content": [RESULT]}))
    assert message == "Requests which include `tool_use` or `tool_result` blocks must define tools."
    ok = await client.messages.create(model=MODEL, max_tokens=1024, tools=[TOOL], tool_choice={"type": "none"},
                                      messages=loop({"role": "user", "content": [RESULT]}))
    assert ok.content[0].text == "Done. Results: 12:00"


async def test_a_tool_use_must_be_answered_in_the_next_message(fake: FakeUpstream, client) -> None:
    missing = await refused(fake, client, tools=[TOOL], messages=loop({"role": "user", "content": "and now?"}))
    assert missing == ("messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: "
                       "toolu_a. Each `tool_use` block must have a corresponding `tool_result` block in the next "
                       "message.")
    text_first = [{"type": "text", "text": "here:"}, RESULT]
    assert (await refused(fake, client, tools=[TOOL], messages=loop({"role": "user", "content": text_first}))
            ).startswith("messages.2: `tool_use` ids were found without `tool_result` blocks immediately after")
    later = loop({"role": "assistant", "content": "hm"}, {"role": "user", "content": [RESULT]})
    assert (await refused(fake, client, tools=[TOOL], messages=later)).startswith("messages.2: `tool_use` ids")
    assert len(fake.violations()) == 3
    assert len(fake.requests()) == 3  # a 400 is not retried


async def test_a_tool_result_must_answer_the_previous_message(fake: FakeUpstream, client) -> None:
    stray = {**RESULT, "tool_use_id": "toolu_nobody"}
    message = await refused(fake, client, tools=[TOOL], messages=loop({"role": "user", "content": [RESULT, stray]}))
    assert message == ("messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_nobody. "
                       "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
    first = await refused(fake, client, tools=[TOOL], messages=[{"role": "user", "content": [RESULT]}])
    assert first.startswith("messages.0.content.0: unexpected `tool_use_id`")


async def test_what_the_api_accepts_around_tool_use(fake: FakeUpstream, client) -> None:
    tools = [TOOL]
    # A final assistant message (a prefill) may end with a tool_use nobody answered yet.
    prefill = await client.messages.create(model=MODEL, max_tokens=1024, tools=tools, messages=loop())
    # Consecutive user messages are merged: the results lead the merged turn.
    merged = loop({"role": "user", "content": [RESULT]}, {"role": "user", "content": "thanks"})
    split = await client.messages.create(model=MODEL, max_tokens=1024, tools=tools, messages=merged)
    assert prefill.content and split.content and fake.violations() == []


async def test_tool_definitions_and_tool_choice(fake: FakeUpstream, client) -> None:
    ask = [ASK]
    assert await refused(fake, client, messages=ask, tools=[{**TOOL, "name": "bad name!"}]) == (
        "tools.0.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'")
    assert await refused(fake, client, messages=ask, tools=[TOOL, TOOL]) == "tools: Tool names must be unique."
    assert await refused(fake, client, messages=ask, tools=[{"name": "x"}]) == "tools.0.custom.input_schema: " \
                                                                               "Field required"
    assert await refused(fake, client, messages=ask, tools=[{"name": "x", "input_schema": {"type": "string"}}]) == (
        "tools.0.custom.input_schema.type: Input should be 'object'")
    assert await refused(fake, client, messages=ask, tools=[TOOL], tool_choice={"type": "tool", "name": "nope"}) == (
        "tool_choice.tool.name: Tool `nope` not found in `tools`.")
    assert (await refused(fake, client, messages=ask, tools=[TOOL], tool_choice={"type": "sometimes"})).startswith(
        "tool_choice: Input tag 'sometimes' found using 'type' does not match any of the expected tags")
    for choice in ({"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "get_time"}):
        await client.messages.create(model=MODEL, max_tokens=1024, messages=ask, tools=[TOOL], tool_choice=choice)
    assert len(fake.violations()) == 6


async def test_thinking_settings(fake: FakeUpstream, client) -> None:
    ask = [ASK]
    assert await refused(fake, client, messages=ask, thinking={"type": "enabled", "budget_tokens": 512}) == (
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    assert (await refused(fake, client, messages=ask, max_tokens=1024,
                          thinking={"type": "enabled", "budget_tokens": 1024})).startswith(
        "`max_tokens` must be greater than `thinking.budget_tokens`.")
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_time"}):
        assert await refused(fake, client, messages=ask, max_tokens=2048, tools=[TOOL], tool_choice=choice,
                             thinking={"type": "enabled", "budget_tokens": 1024}) == (
            "Thinking may not be enabled when tool_choice forces tool use.")


async def test_cache_breakpoints_at_most_four(fake: FakeUpstream, client) -> None:
    tools = [{**TOOL, "name": f"t{i}", "cache_control": CC} for i in range(2)]
    system = [{"type": "text", "text": "be brief", "cache_control": CC}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": CC}]}]
    four = await client.messages.create(model=MODEL, max_tokens=1024, tools=tools, system=system, messages=messages)
    assert four.content
    five = [*system, {"type": "text", "text": "and kind", "cache_control": CC}]
    assert await refused(fake, client, tools=tools, system=five, messages=messages) == (
        "A maximum of 4 blocks with cache_control may be provided. Found 5.")
    # The request's own (automatic) cache_control counts as one.
    assert (await refused(fake, client, tools=tools, system=system, messages=messages,
                          extra_body={"cache_control": CC})).endswith("Found 5.")


async def test_thinking_blocks_cannot_carry_a_breakpoint(fake: FakeUpstream, client) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    first = await client.messages.create(model=MODEL, max_tokens=2048, messages=[ASK], thinking=thinking)
    marked = [{**first.content[0].model_dump(), "cache_control": CC}, *first.content[1:]]
    assert await refused(fake, client, max_tokens=2048, thinking=thinking, messages=[
        ASK, {"role": "assistant", "content": marked}, {"role": "user", "content": "more"}]) == (
        "messages.1.content.0.thinking.cache_control: Extra inputs are not permitted")


async def test_a_1h_breakpoint_may_not_follow_a_5m_one(fake: FakeUpstream, client) -> None:
    system = [{"type": "text", "text": "rules", "cache_control": CC}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {**CC, "ttl": "1h"}}]}]
    assert await refused(fake, client, system=system, messages=messages) == (
        "messages.0.content.0.cache_control.ttl: a ttl='1h' cache_control block must not come after a ttl='5m' "
        "cache_control block. Note that blocks are processed in the following order: `tools`, `system`, `messages`.")
    tools = [{**TOOL, "cache_control": {**CC, "ttl": "5m"}}]
    one_hour_system = [{**system[0], "cache_control": {**CC, "ttl": "1h"}}]
    assert (await refused(fake, client, tools=tools, system=one_hour_system, messages=[ASK])).startswith(
        "system.0.cache_control.ttl: a ttl='1h'")
    fine = await client.messages.create(model=MODEL, max_tokens=1024, system=one_hour_system, messages=[
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": CC}]}])
    assert fine.content


async def test_message_shapes(fake: FakeUpstream, client) -> None:
    assert await refused(fake, client, messages=[{"role": "assistant", "content": "hi"}]) == (
        'messages: first message must use the "user" role')
    assert await refused(fake, client, messages=[{"role": "user", "content": []}]) == (
        "messages.0: all messages must have non-empty content except for the optional final assistant message")
    whitespace = "messages: text content blocks must contain non-whitespace text"
    assert await refused(fake, client, messages=[{"role": "user", "content": " \n\t"}]) == whitespace
    assert await refused(fake, client, messages=[{"role": "user", "content": [
        {"type": "text", "text": "fine"}, {"type": "text", "text": "  "}]}]) == whitespace
    assert await refused(fake, client, messages=[]) == "messages: at least one message is required"
    # Same-role neighbours are merged upstream, and an empty final assistant message is a prefill.
    ok = await client.messages.create(model=MODEL, max_tokens=1024, messages=[
        ASK, {"role": "user", "content": "also"}, {"role": "assistant", "content": ""}])
    assert ok.content


async def test_prompt_too_long_for_a_small_window(fake: FakeUpstream, client) -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    assert fake.set_models({MODEL: {"context_window": 50}}) == {MODEL: {"context_window": 50}}
    total = wire.count_input_tokens(None, messages)
    assert await refused(fake, client, messages=messages) == f"prompt is too long: {total} tokens > 50 maximum"
    assert (await client.messages.create(model="claude-other", max_tokens=10, messages=messages)).content
    fake.reset()
    assert fake.violations() == []
    assert (await client.messages.create(model=MODEL, max_tokens=10, messages=messages)).content


async def test_refusals_consume_no_behaviour(fake: FakeUpstream, client) -> None:
    fake.script(Behaviour(text="scripted"))
    await refused(fake, client, messages=[{"role": "user", "content": " "}])
    message = await client.messages.create(model=MODEL, max_tokens=10, messages=[ASK])
    assert message.content[0].text == "scripted"
