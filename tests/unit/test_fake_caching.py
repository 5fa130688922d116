"""The fake's prompt caching (breakpoints, lookback, TTLs on a fake clock, per-model minimums) and token counts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest

from agent_server.fake_upstream import Behaviour, FakeUpstream, wire
from agent_server.fake_upstream.tokens import canonical, count_input_tokens, tokens_for

MODEL = "claude-sonnet-5-5"  # cache minimum 1,024 tokens
LONG = "lorem ipsum " * 400  # 4,800 characters: 1,200 tokens
CC = {"type": "ephemeral"}
CC_1H = {"type": "ephemeral", "ttl": "1h"}


@pytest.fixture
async def client(fake: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0, timeout=10) as sdk:
        yield sdk


def cached(text: str, control: dict = CC) -> list[dict]:
    return [{"type": "text", "text": text, "cache_control": control}]


def counts(usage) -> tuple[int, int, int, int, int]:
    creation = usage.cache_creation
    return (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens,
            creation.ephemeral_5m_input_tokens, creation.ephemeral_1h_input_tokens)


def test_token_counting_covers_everything_sent() -> None:
    tools = [{"name": "calc", "description": "d", "input_schema": {"type": "object"}, "cache_control": CC}]
    messages = [
        {"role": "user", "content": "abcd" * 10},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t" * 8, "signature": "s" * 99},
                                          {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"x": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "12"}]}]},
    ]
    tool_chars = len(canonical({key: value for key, value in tools[0].items() if key != "cache_control"}))
    chars = tool_chars + len("system") + 40 + 8 + len("calc") + len('{"x":1}') + 2
    assert count_input_tokens("system", messages, tools) == tokens_for(chars)
    assert count_input_tokens("hi there", [{"role": "user", "content": "hello there"}]) == tokens_for(19)
    # A breakpoint never changes a count.
    assert count_input_tokens(cached("hi"), []) == count_input_tokens("hi", [])


async def test_first_call_writes_then_the_same_prefix_reads(fake: FakeUpstream, client) -> None:
    ask = [{"role": "user", "content": "hello there"}]
    total = wire.count_input_tokens(LONG, ask)
    first = await client.messages.create(model=MODEL, max_tokens=10, system=cached(LONG), messages=ask)
    written = tokens_for(len(LONG))
    assert counts(first.usage) == (total - written, 0, written, written, 0)
    async with client.messages.stream(model=MODEL, max_tokens=10, system=cached(LONG), messages=ask) as stream:
        async for event in stream:
            if event.type == "message_start":
                start_usage = event.message.usage
        second = await stream.get_final_message()
    assert counts(start_usage) == counts(second.usage) == (total - written, written, 0, 0, 0)


async def test_a_longer_conversation_reads_the_earlier_prefix_via_lookback(fake: FakeUpstream, client) -> None:
    turn1 = {"role": "user", "content": [{"type": "text", "text": LONG, "cache_control": CC}]}
    first = await client.messages.create(model=MODEL, max_tokens=10, messages=[turn1])
    assert first.usage.cache_creation_input_tokens == tokens_for(len(LONG))
    grown = [
        {"role": "user", "content": [{"type": "text", "text": LONG}]},  # its breakpoint moved on
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": [{"type": "text", "text": "next question", "cache_control": CC}]},
    ]
    second = await client.messages.create(model=MODEL, max_tokens=10, messages=grown)
    read, whole = tokens_for(len(LONG)), tokens_for(len(LONG) + len("noted") + len("next question"))
    assert counts(second.usage) == (wire.count_input_tokens(None, grown) - whole, read, whole - read,
                                    whole - read, 0)
    # A change early in the prompt misses everything.
    changed = [{"role": "user", "content": "changed " + LONG}, *grown[1:]]
    third = await client.messages.create(model=MODEL, max_tokens=10, messages=changed)
    assert third.usage.cache_read_input_tokens == 0 and third.usage.cache_creation_input_tokens > 0


async def test_below_the_minimum_nothing_is_cached(fake: FakeUpstream, client) -> None:
    ask = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        message = await client.messages.create(model=MODEL, max_tokens=10, system=cached("short rules"), messages=ask)
        assert counts(message.usage) == (wire.count_input_tokens("short rules", ask), 0, 0, 0, 0)
    # claude-haiku-4-5 needs 4,096 tokens: LONG (1,200) is not enough there, but is for a lowered minimum.
    haiku = await client.messages.create(model="claude-haiku-4-5", max_tokens=10, system=cached(LONG), messages=ask)
    assert haiku.usage.cache_creation_input_tokens == 0
    fake.set_models({"claude-haiku-4-5": {"cache_minimum": 100}})
    lowered = await client.messages.create(model="claude-haiku-4-5", max_tokens=10, system=cached(LONG), messages=ask)
    assert lowered.usage.cache_creation_input_tokens == tokens_for(len(LONG))


async def test_ttls_expire_on_the_fake_clock(fake: FakeUpstream, client) -> None:
    system = [*cached(LONG, CC_1H), *cached("more " + LONG, CC)]
    ask = [{"role": "user", "content": "hi"}]
    one_hour, both = tokens_for(len(LONG)), tokens_for(len(LONG) * 2 + 5)
    first = await client.messages.create(model=MODEL, max_tokens=10, system=system, messages=ask)
    assert counts(first.usage)[1:] == (0, both, both - one_hour, one_hour)
    assert fake.advance_clock(301) == 301
    later = await client.messages.create(model=MODEL, max_tokens=10, system=system, messages=ask)
    assert counts(later.usage)[1:] == (one_hour, both - one_hour, both - one_hour, 0)  # the 5m entry is gone
    fake.advance_clock(3601)
    much_later = await client.messages.create(model=MODEL, max_tokens=10, system=system, messages=ask)
    assert counts(much_later.usage)[1:] == (0, both, both - one_hour, one_hour)


async def test_automatic_caching_marks_the_last_block(fake: FakeUpstream, client) -> None:
    messages = [{"role": "user", "content": LONG}]
    first = await client.messages.create(model=MODEL, max_tokens=10, messages=messages,
                                         extra_body={"cache_control": CC})
    grown = [*messages, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go on"}]
    second = await client.messages.create(model=MODEL, max_tokens=10, messages=grown,
                                          extra_body={"cache_control": CC})
    assert first.usage.cache_creation_input_tokens == tokens_for(len(LONG))
    assert second.usage.cache_read_input_tokens == tokens_for(len(LONG))
    assert second.usage.cache_creation_input_tokens == tokens_for(len(LONG) + 7) - tokens_for(len(LONG))


async def test_a_scripted_usage_still_wins_and_reset_empties_the_cache(fake: FakeUpstream, client) -> None:
    ask = [{"role": "user", "content": "hi"}]
    await client.messages.create(model=MODEL, max_tokens=10, system=cached(LONG), messages=ask)
    fake.script(Behaviour(usage={"cache_read_input_tokens": 7}))
    scripted = await client.messages.create(model=MODEL, max_tokens=10, system=cached(LONG), messages=ask)
    assert scripted.usage.cache_read_input_tokens == 7
    fake.reset()
    fresh = await client.messages.create(model=MODEL, max_tokens=10, system=cached(LONG), messages=ask)
    assert fresh.usage.cache_read_input_tokens == 0 and fresh.usage.cache_creation_input_tokens > 0


async def test_control_api_refuses_malformed_models_and_clock(fake: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        bad_model = await http.post("/_fake/models", json={MODEL: {"context_window": "big"}})
        bad_field = await http.post("/_fake/models", json={MODEL: {"speed": 3}})
        backwards = await http.post("/_fake/clock", json={"advance": -5})
        missing = await http.post("/_fake/clock", json={})
    assert [r.status_code for r in (bad_model, bad_field, backwards, missing)] == [422] * 4
    assert fake.set_models({MODEL: {"cache_minimum": 10}}) == {MODEL: {"cache_minimum": 10}}
    assert fake.set_models({MODEL: {"context_window": 99}}) == {MODEL: {"cache_minimum": 10, "context_window": 99}}
