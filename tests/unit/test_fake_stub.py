"""The offline stub's tool loop and rules, through the real SDK and the stub's in-process transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import pytest
from anthropic.types import TextBlock, ToolUseBlock

from agent_server.fake_upstream import OfflineStubTransport
from agent_server.fake_upstream.stub_brain import find_expression

MODEL = "claude-sonnet-5-5"
TOOLS = [
    {"name": "current_time", "description": "The time now", "input_schema": {"type": "object"}},
    {"name": "calculator", "description": "Arithmetic", "input_schema": {
        "type": "object", "properties": {"expression": {"type": "string"}}}},
    {"name": "save_note", "description": "Keep a note", "input_schema": {
        "type": "object", "properties": {"text": {"type": "string"}}}},
]


@pytest.fixture
async def client() -> AsyncIterator[anthropic.AsyncAnthropic]:
    transport = OfflineStubTransport(token_delay=0)
    async with anthropic.AsyncAnthropic(
        api_key="offline-stub", max_retries=0, http_client=anthropic.DefaultAsyncHttpxClient(transport=transport)
    ) as sdk:
        yield sdk


def answer(message, text: str) -> dict:
    [use] = [block for block in message.content if block.type == "tool_use"]
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": text}]}


async def test_the_stub_asks_for_the_time_then_reports_it(client) -> None:
    ask = [{"role": "user", "content": "What time is it?"}]
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=ask, tools=TOOLS) as stream:
        texts = [text async for text in stream.text_stream]
        first = await stream.get_final_message()
    text, use = first.content
    assert isinstance(text, TextBlock) and isinstance(use, ToolUseBlock)
    assert texts[0] == "[offline stub] " and text.text.startswith("[offline stub] ")
    assert (use.name, use.input, first.stop_reason) == ("current_time", {}, "tool_use")
    history = [*ask, {"role": "assistant", "content": first.content}, answer(first, "2026-11-05 09:30 UTC")]
    final = await client.messages.create(model=MODEL, max_tokens=100, messages=history, tools=TOOLS)
    assert final.content[0].text == "[offline stub] The tool said: 2026-11-05 09:30 UTC"
    assert final.stop_reason == "end_turn"


@pytest.mark.parametrize(("said", "tool", "tool_input"), [
    ("what is 12*7", "calculator", {"expression": "12*7"}),
    ("what is 12 times 7, i.e. 12 x 7?", "calculator", {"expression": "12 x 7"}),
    ("please calculate (2 + 3) / 4 for me", "calculator", {"expression": "(2 + 3) / 4"}),
    ("Save a note: buy milk", "save_note", {"text": "Save a note: buy milk"}),
])
async def test_the_stub_calls_the_tool_that_fits(client, said: str, tool: str, tool_input: dict) -> None:
    message = await client.messages.create(model=MODEL, max_tokens=100, tools=TOOLS,
                                           messages=[{"role": "user", "content": said}])
    assert message.content[0].text.startswith("[offline stub] ")
    assert (message.content[1].name, message.content[1].input) == (tool, tool_input)


async def test_without_a_fitting_tool_the_stub_answers_canned(client) -> None:
    ask = [{"role": "user", "content": "What time is it?"}]
    plain = await client.messages.create(model=MODEL, max_tokens=100, messages=ask)
    other_tools = await client.messages.create(model=MODEL, max_tokens=100, messages=ask, tools=TOOLS[1:])
    for message in (plain, other_tools):
        assert [block.type for block in message.content] == ["text"] and message.stop_reason == "end_turn"
        assert message.content[0].text.startswith("[offline stub] No ANTHROPIC_API_KEY is set")


async def test_the_stub_obeys_the_same_rules(client) -> None:
    ask = [{"role": "user", "content": "What time is it?"}]
    first = await client.messages.create(model=MODEL, max_tokens=100, messages=ask, tools=TOOLS)
    bricked = [*ask, {"role": "assistant", "content": first.content}, {"role": "user", "content": "hello?"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model=MODEL, max_tokens=100, messages=bricked, tools=TOOLS)
    assert "`tool_use` ids were found without `tool_result` blocks immediately after" in caught.value.message
    assert caught.value.request_id.startswith("req_stub_")
    with pytest.raises(anthropic.BadRequestError) as no_tools:
        await client.messages.create(model=MODEL, max_tokens=100, messages=[
            *ask, {"role": "assistant", "content": first.content}, answer(first, "now")])
    assert no_tools.value.body["error"]["message"] == (
        "Requests which include `tool_use` or `tool_result` blocks must define tools.")


async def test_the_stub_thinks_when_asked_and_its_signatures_survive_a_restart() -> None:
    ask = [{"role": "user", "content": "What time is it?"}]
    thinking = {"type": "enabled", "budget_tokens": 1024}

    def new_client() -> anthropic.AsyncAnthropic:
        transport = OfflineStubTransport(token_delay=0)
        return anthropic.AsyncAnthropic(api_key="x", http_client=anthropic.DefaultAsyncHttpxClient(transport=transport))

    async with new_client() as before:
        first = await before.messages.create(model=MODEL, max_tokens=2048, messages=ask, tools=TOOLS,
                                             thinking=thinking)
    assert first.content[0].type == "thinking"
    async with new_client() as after:
        final = await after.messages.create(model=MODEL, max_tokens=2048, tools=TOOLS, thinking=thinking, messages=[
            *ask, {"role": "assistant", "content": first.content}, answer(first, "noon")])
    assert final.content[-1].text == "[offline stub] The tool said: noon"


def test_expressions_found_in_text() -> None:
    assert find_expression("what is 12*7?") == "12*7"
    assert find_expression("calculate 2+2") == "2+2"
    assert find_expression("1.5 * -2 - 3") == "1.5 * -2 - 3"
    assert find_expression("I have 3 cats") is None
