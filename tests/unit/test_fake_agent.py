"""The fake's scripted agent behaviour (tool calls, thinking, server tools, pause_turn) through the real SDK."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest
from anthropic.types import (
    Message,
    RawMessageStreamEvent,
    RedactedThinkingBlock,
    ServerToolUseBlock,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    WebSearchToolResultBlock,
)
from pydantic import TypeAdapter

from agent_server.fake_upstream import Behaviour, FakeUpstream, wire
from agent_server.fake_upstream.planning import DEFAULT_THINKING

MODEL = "claude-sonnet-5-5"
TOOLS = [
    {"name": "get_weather", "description": "Weather in a city", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    {"name": "calculator", "description": "Evaluate arithmetic", "input_schema": {"type": "object"}},
]
WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
ASK = [{"role": "user", "content": "What is the weather in Paris, and 12*7?"}]
THINKING = {"type": "enabled", "budget_tokens": 1024}
PARALLEL = [
    {"name": "get_weather", "input": {"city": "Paris, ünïcode \"quoted\""}, "id": "toolu_weather1"},
    {"name": "calculator", "input": {"expression": "12*7", "nested": {"list": [1, 2.5, None, True]}}},
]


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0, timeout=10) as sdk:
        yield sdk


def assert_blocks(content: list, *kinds: type) -> None:
    """The SDK parses each block into its type (a streamed text block into a subclass of TextBlock)."""
    assert len(content) == len(kinds) and all(isinstance(block, kind) for block, kind in zip(content, kinds)), content


def results_for(message, text: str = "ok") -> dict:
    return {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": block.id, "content": f"{text} {block.name}"}
        for block in message.content if block.type == "tool_use"]}


async def test_parallel_tool_calls_streamed(fake: FakeUpstream, client) -> None:
    fake.script(Behaviour(text="Let me look.", tool_calls=PARALLEL))
    starts, fragments = [], {}
    async with client.messages.stream(model=MODEL, max_tokens=1024, messages=ASK, tools=TOOLS) as stream:
        async for event in stream:
            if event.type == "content_block_start":
                starts.append(event.content_block)
            elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                fragments.setdefault(event.index, []).append(event.delta.partial_json)
        final = await stream.get_final_message()
    assert_blocks(final.content, TextBlock, ToolUseBlock, ToolUseBlock)
    assert final.stop_reason == "tool_use" and final.content[0].text == "Let me look."
    weather, calc = final.content[1:]
    assert (weather.id, weather.name, weather.input) == ("toolu_weather1", "get_weather", PARALLEL[0]["input"])
    assert calc.id.startswith("toolu_") and calc.name == "calculator" and calc.input == PARALLEL[1]["input"]
    assert [start.input for start in starts[1:]] == [{}, {}]  # a tool_use block starts empty
    assert sorted(fragments) == [1, 2] and all(len(pieces) >= 2 for pieces in fragments.values())
    assert "".join(fragments[1]) == wire.dumps(PARALLEL[0]["input"])
    # The raw event stream of create(stream=True) carries the same.
    fake.script(Behaviour(tool_calls=PARALLEL))
    raw = await client.messages.create(model=MODEL, max_tokens=1024, messages=ASK, tools=TOOLS, stream=True)
    pieces: dict[int, str] = {}
    async for event in raw:
        if event.type == "content_block_delta":
            pieces[event.index] = pieces.get(event.index, "") + event.delta.partial_json
        elif event.type == "message_delta":
            assert event.delta.stop_reason == "tool_use"
    assert [json.loads(pieces[index]) for index in sorted(pieces)] == [call["input"] for call in PARALLEL]


async def test_parallel_tool_calls_non_streamed_and_the_default_final_answer(fake: FakeUpstream, client) -> None:
    fake.script(Behaviour(tool_calls=PARALLEL))
    message = await client.messages.create(model=MODEL, max_tokens=1024, messages=ASK, tools=TOOLS)
    assert_blocks(message.content, ToolUseBlock, ToolUseBlock)  # no text unless scripted
    assert [block.input for block in message.content] == [call["input"] for call in PARALLEL]
    assert message.stop_reason == "tool_use"
    json_cost = sum(math.ceil(len(wire.dumps(call["input"])) / 4) for call in PARALLEL)
    assert message.usage.output_tokens == json_cost
    history = [*ASK, {"role": "assistant", "content": message.content}, results_for(message, "sunny")]
    answer = await client.messages.create(model=MODEL, max_tokens=1024, messages=history, tools=TOOLS)
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == "Done. Results: sunny get_weather; sunny calculator"
    assert fake.violations() == []


async def test_a_script_naming_an_undeclared_tool_is_refused(fake: FakeUpstream, client) -> None:
    fake.script(Behaviour(tool_calls=[{"name": "launch_rocket"}]),
                Behaviour(tool_calls=[{"name": "launch_rocket", "undeclared": True}]))
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model=MODEL, max_tokens=1024, messages=ASK, tools=TOOLS)
    assert "`launch_rocket`" in caught.value.message and "undeclared" in caught.value.message
    assert fake.requests()[0]["status"] == 400 and "launch_rocket" in fake.violations()[0]["message"]
    message = await client.messages.create(model=MODEL, max_tokens=1024, messages=ASK, tools=TOOLS)
    assert message.content[0].name == "launch_rocket"  # a model asking for a tool nobody declared


async def test_thinking_streams_signed_and_round_trips(fake: FakeUpstream, client) -> None:
    fake.script(Behaviour(thinking="First weather, then maths.", redacted_thinking=True, tool_calls=PARALLEL[:1]))
    deltas = []
    async with client.messages.stream(model=MODEL, max_tokens=4096, messages=ASK, tools=TOOLS,
                                      thinking=THINKING) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                deltas.append(event.delta.type)
        final = await stream.get_final_message()
    thinking, redacted, tool = final.content
    assert isinstance(thinking, ThinkingBlock) and thinking.thinking == "First weather, then maths."
    assert isinstance(redacted, RedactedThinkingBlock) and redacted.data and isinstance(tool, ToolUseBlock)
    assert thinking.signature and deltas.count("signature_delta") == 1 and deltas.count("thinking_delta") >= 2
    assert deltas.index("signature_delta") > max(i for i, kind in enumerate(deltas) if kind == "thinking_delta")
    history = [*ASK, {"role": "assistant", "content": final.content}, results_for(final)]
    answer = await client.messages.create(model=MODEL, max_tokens=4096, messages=history, tools=TOOLS,
                                          thinking=THINKING)
    assert answer.content[0].type == "thinking" and answer.content[-1].text.startswith("Done. Results:")

    altered = [{**thinking.model_dump(), "thinking": "Something else."}, redacted, tool]
    forged_data = [thinking, {"type": "redacted_thinking", "data": "Zm9yZ2Vk"}, tool]
    forged_signature = [{**thinking.model_dump(), "signature": "c2lnbmVk"}, redacted, tool]
    for content, message in [
        (altered, "messages.1.content.0: Invalid `signature` in `thinking` block"),
        (forged_signature, "messages.1.content.0: Invalid `signature` in `thinking` block"),
        (forged_data, "messages.1.content.1: Invalid `data` in `redacted_thinking` block"),
    ]:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(model=MODEL, max_tokens=4096, tools=TOOLS, thinking=THINKING,
                                         messages=[*ASK, {"role": "assistant", "content": content}, results_for(final)])
        assert caught.value.body["error"]["message"] == message
    assert [v["message"] for v in fake.violations()][-1] == "messages.1.content.1: Invalid `data` in " \
                                                            "`redacted_thinking` block"


async def test_enabled_thinking_gets_a_default_thinking_block(fake: FakeUpstream, client) -> None:
    message = await client.messages.create(model=MODEL, max_tokens=2048, messages=ASK, thinking=THINKING)
    thinking, text = message.content
    assert (thinking.type, thinking.thinking) == ("thinking", DEFAULT_THINKING) and thinking.signature
    assert text.text == "Echo: " + ASK[0]["content"]
    assert message.usage.output_tokens == len(wire.split_tokens(DEFAULT_THINKING)) + len(wire.split_tokens(text.text))
    plain = await client.messages.create(model=MODEL, max_tokens=2048, messages=ASK)
    assert [block.type for block in plain.content] == ["text"]


async def test_an_unfinished_tool_loop_must_keep_its_thinking(fake: FakeUpstream, client) -> None:
    fake.script(Behaviour(tool_calls=PARALLEL[:1]))
    first = await client.messages.create(model=MODEL, max_tokens=2048, messages=ASK, tools=TOOLS, thinking=THINKING)
    stripped = [block for block in first.content if block.type != "thinking"]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model=MODEL, max_tokens=2048, tools=TOOLS, thinking=THINKING, messages=[
            *ASK, {"role": "assistant", "content": stripped}, results_for(first)])
    assert caught.value.body["error"]["message"].startswith(
        "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When "
        "`thinking` is enabled, a final `assistant` message must start with a thinking block")
    kept = await client.messages.create(model=MODEL, max_tokens=2048, tools=TOOLS, thinking=THINKING, messages=[
        *ASK, {"role": "assistant", "content": first.content}, results_for(first)])
    assert kept.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True])
async def test_web_search_server_tool(fake: FakeUpstream, client, stream: bool) -> None:
    searches = [{"name": "web_search", "input": {"query": "paris weather"}},
                {"name": "web_search", "input": {"query": "12 times 7"}}]
    fake.script(Behaviour(server_tool_uses=searches, text="It is sunny; 84."))
    request = dict(model=MODEL, max_tokens=1024, messages=ASK, tools=[*TOOLS, WEB_SEARCH])
    if stream:
        async with client.messages.stream(**request) as live:
            message = await live.get_final_message()
    else:
        message = await client.messages.create(**request)
    assert_blocks(message.content, ServerToolUseBlock, WebSearchToolResultBlock, ServerToolUseBlock,
                  WebSearchToolResultBlock, TextBlock)
    use, result = message.content[:2]
    assert use.id.startswith("srvtoolu_") and use.input == {"query": "paris weather"} and use.name == "web_search"
    assert result.tool_use_id == use.id and 1 <= len(result.content) <= 2
    assert all(item.type == "web_search_result" and item.url and item.encrypted_content for item in result.content)
    assert message.usage.server_tool_use.web_search_requests == 2
    assert message.stop_reason == "end_turn"


async def test_web_search_needs_the_server_tool_declared(fake: FakeUpstream, client) -> None:
    fake.script(Behaviour(server_tool_uses=[{"input": {"query": "x"}}]))
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model=MODEL, max_tokens=1024, messages=ASK, tools=TOOLS)
    assert "web_search_*" in caught.value.message and len(fake.violations()) == 1


async def test_pause_turn_then_the_resent_turn_continues(fake: FakeUpstream, client) -> None:
    fake.script(Behaviour(server_tool_uses=[{"input": {"query": "long research"}}], text="Still searching.",
                          stop_reason="pause_turn"),
                Behaviour(text="Here is what I found."))
    tools = [WEB_SEARCH]
    paused = await client.messages.create(model=MODEL, max_tokens=1024, messages=ASK, tools=tools)
    assert paused.stop_reason == "pause_turn"
    resumed = await client.messages.create(model=MODEL, max_tokens=1024, tools=tools, messages=[
        *ASK, {"role": "assistant", "content": paused.content}])
    assert resumed.content[0].text == "Here is what I found." and resumed.stop_reason == "end_turn"
    sent = fake.requests()[1]["body"]["messages"][1]["content"]
    assert [block["type"] for block in sent] == ["server_tool_use", "web_search_tool_result", "text"]
    assert fake.violations() == []


async def test_every_shape_validates_strictly_against_the_sdk_types(fake: FakeUpstream) -> None:
    """The SDK parses leniently (`construct`); here each event and message must pass its types' validation."""
    behaviour = Behaviour(thinking="Plan it.", redacted_thinking=True, text="Here.", tool_calls=PARALLEL,
                          server_tool_uses=[{"input": {"query": "paris"}}])
    fake.script(behaviour, behaviour)
    request = {"model": MODEL, "max_tokens": 2048, "messages": ASK, "tools": [*TOOLS, WEB_SEARCH],
               "thinking": THINKING}
    events = TypeAdapter(RawMessageStreamEvent)
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"x-api-key": "k"}) as http:
        streamed = await http.post("/v1/messages", json={**request, "stream": True})
        whole = await http.post("/v1/messages", json=request)
    parsed = [events.validate_python(json.loads(line[6:])) for line in streamed.text.splitlines()
              if line.startswith("data: ")]
    assert parsed[0].type == "message_start" and parsed[-1].type == "message_stop"
    message = Message.model_validate(whole.json())
    assert [block.type for block in message.content] == [
        "thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result", "text", "tool_use", "tool_use"]
    assert message.usage.server_tool_use.web_search_requests == 1
