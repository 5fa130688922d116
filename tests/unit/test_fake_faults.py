"""Faults for hardening tests: bodies that are not what they claim, unknown events, usage of any JSON value."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest

from agent_server.fake_upstream import Behaviour, FakeUpstream

MODEL = "claude-sonnet-5-5"
HELLO = [{"role": "user", "content": "hello there"}]
REQUEST = {"model": MODEL, "max_tokens": 100, "messages": HELLO}


@pytest.fixture
async def http(fake: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"x-api-key": "k"}) as client:
        yield client


@pytest.mark.parametrize("stream", [False, True])
async def test_a_raw_body_with_its_exact_content_type(fake: FakeUpstream, http: httpx.AsyncClient,
                                                      stream: bool) -> None:
    fake.script(Behaviour(content_type="text/plain", raw_body="upstream proxy error"))
    response = await http.post("/v1/messages", json={**REQUEST, "stream": stream})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain"
    assert response.text == "upstream proxy error" and response.headers["request-id"].startswith("req_")


async def test_a_raw_body_breaks_the_sdk_parse(fake: FakeUpstream) -> None:
    fake.script(Behaviour(content_type="application/json", raw_body="{not json"))
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
        with pytest.raises(Exception):  # noqa: B017 - whichever error the SDK raises, it cannot parse this
            await client.messages.create(**REQUEST)


@pytest.mark.parametrize("stream", [False, True])
async def test_gzip_garbage(fake: FakeUpstream, http: httpx.AsyncClient, stream: bool) -> None:
    fake.script(Behaviour(gzip_garbage=True))
    async with http.stream("POST", "/v1/messages", json={**REQUEST, "stream": stream}) as response:
        assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert raw and not raw.startswith(b"\x1f\x8b")  # not even the gzip magic number
    fake.script(Behaviour(gzip_garbage=True))
    with pytest.raises(httpx.DecodingError):
        await http.post("/v1/messages", json={**REQUEST, "stream": stream})
    fake.script(Behaviour(gzip_garbage=True))
    async with anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url, max_retries=0) as client:
        with pytest.raises(Exception):  # noqa: B017 - the SDK's own decoding error, whichever it is
            result = await client.messages.create(**REQUEST, stream=stream)
            if stream:
                async for _ in result:
                    pass


async def test_an_unknown_event_with_non_json_data_mid_stream(fake: FakeUpstream, http: httpx.AsyncClient) -> None:
    fake.script(Behaviour(tokens=["a", "b", "c"], unknown_event_after_tokens=2))
    response = await http.post("/v1/messages", json={**REQUEST, "stream": True})
    events = [part for part in response.text.split("\n\n") if part]
    names = [part.split("\n")[0].removeprefix("event: ") for part in events]
    mystery = names.index("mystery_event")
    assert events[mystery] == "event: mystery_event\ndata: not json"
    assert names[mystery - 2:mystery] == ["content_block_delta"] * 2 and names[mystery + 1] == "content_block_delta"
    assert names[-2:] == ["message_delta", "message_stop"]  # it carried on
    fake.wait_for("completed")
    assert fake.streams()[0]["tokens_sent"] == 3


@pytest.mark.parametrize("value", ["12", -5, 10**20, None, 1.5])
async def test_usage_overrides_carry_any_json_value(fake: FakeUpstream, http: httpx.AsyncClient, value) -> None:
    fake.script(Behaviour(usage={"output_tokens": value, "input_tokens": value}, times=2))
    response = await http.post("/v1/messages", json={**REQUEST, "stream": True})
    payloads = [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]
    start = next(p for p in payloads if p["type"] == "message_start")["message"]["usage"]
    delta = next(p for p in payloads if p["type"] == "message_delta")["usage"]
    assert start["output_tokens"] == delta["output_tokens"] == value
    assert start["input_tokens"] == delta["input_tokens"] == value
    message = (await http.post("/v1/messages", json=REQUEST)).json()
    assert message["usage"]["output_tokens"] == value
