"""The fake Messages API, driven by the real anthropic SDK over loopback (nothing patched)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator, Callable

import anthropic
import httpx
import httpx2
import pytest

from agent_server.fake_upstream import Behaviour, FakeConfig, FakeUpstream, OfflineStubTransport
from agent_server.fake_upstream import wire
from agent_server.fake_upstream.records import Recorder
from agent_server.fake_upstream.replies import Reply, StreamedReply

MODEL = "claude-sonnet-5-5"
HELLO = [{"role": "user", "content": "hello there"}]


# `fake` (the shared fake upstream, reset for each test) comes from tests/conftest.py.


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., anthropic.AsyncAnthropic]]:
    clients: list[anthropic.AsyncAnthropic] = []

    def make(base_url: str, **options: object) -> anthropic.AsyncAnthropic:
        options = {"api_key": "test-key", "max_retries": 0, "timeout": 10.0, **options}
        clients.append(anthropic.AsyncAnthropic(base_url=base_url, **options))  # type: ignore[arg-type]
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def collect(client: anthropic.AsyncAnthropic, tokens: list[str], messages: list | None = None) -> None:
    """Stream a reply, appending each text chunk to `tokens` as it arrives (kept on failure)."""
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=messages or HELLO) as stream:
        async for text in stream.text_stream:
            tokens.append(text)


# Wire helpers


def test_default_reply_is_a_deterministic_echo_split_into_words() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "say  hi\n"}]},
    ]
    assert wire.default_reply_tokens(messages) == ["Echo: ", "say  ", "hi\n"]
    assert wire.default_reply_tokens(messages, 3) == ["tok0 ", "tok1 ", "tok2 "]
    assert wire.count_input_tokens("sys", messages) == wire.count_input_tokens("sys", messages) >= 1
    assert wire.count_input_tokens(None, []) == 1


def test_default_reply_after_tool_results_and_usage_of_any_json() -> None:
    messages = [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "84"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "no\nsuch  city"}],
         "is_error": True},
    ]}]
    assert "".join(wire.default_reply_tokens(messages)) == "Done. Results: 84; error: no such city"
    usage = wire.build_usage(input_tokens=3, output_tokens=2, cache_5m=4, overrides={"cache_creation": "odd"})
    assert (usage["cache_creation"], usage["cache_creation_input_tokens"]) == ("odd", 4)
    searched = wire.build_usage(input_tokens=1, output_tokens=1, web_search_requests=2)
    assert searched["server_tool_use"] == {"web_search_requests": 2, "web_fetch_requests": 0}


# Normal replies


async def test_non_streamed_create(fake: FakeUpstream, make_client) -> None:
    client = make_client(fake.base_url)
    raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=HELLO)
    message = await raw.parse()
    assert message.content[0].text == "Echo: hello there"
    assert message.model == MODEL and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3
    assert message.usage.input_tokens == wire.count_input_tokens(None, HELLO)
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 0
    assert message._request_id == raw.headers["request-id"] == fake.requests()[0]["id"]
    assert message._request_id.startswith("req_")
    assert [r["stream"] for r in fake.requests()] == [False]


async def test_streamed_tokens_usage_and_request_id(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(n_tokens=5, model="claude-echo-override"))
    client = make_client(fake.base_url)
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
        request_id = stream.request_id
    assert texts == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 "]
    assert final.content[0].text == "".join(texts)
    assert final.model == "claude-echo-override"
    assert final.usage.output_tokens == 5
    # message_delta repeats the input and cache totals; the SDK must not add them twice.
    assert final.usage.input_tokens == wire.count_input_tokens(None, HELLO)
    assert final.usage.cache_creation_input_tokens == final.usage.cache_read_input_tokens == 0
    assert request_id == fake.requests()[0]["id"]
    fake.wait_for("completed")
    [stream_record] = fake.streams()
    assert (stream_record["request_id"], stream_record["outcome"], stream_record["tokens_sent"]) == (
        request_id, "completed", 5)
    assert 0 <= stream_record["head_ms"] <= stream_record["first_delta_ms"]


async def test_cache_usage_override_with_breakdown(fake: FakeUpstream, make_client) -> None:
    usage = {
        "input_tokens": 7,
        "cache_read_input_tokens": 400,
        "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 70},
    }
    fake.script(Behaviour(text="cached", usage=usage, times=2))
    client = make_client(fake.base_url)
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        final = await stream.get_final_message()
    created = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    for message in (final, created):
        assert message.content[0].text == "cached"
        assert message.usage.input_tokens == 7
        assert message.usage.cache_read_input_tokens == 400
        assert message.usage.cache_creation_input_tokens == 100
        assert message.usage.cache_creation.ephemeral_5m_input_tokens == 30
        assert message.usage.cache_creation.ephemeral_1h_input_tokens == 70
        assert message.usage.output_tokens == 1


# Status errors and retries


async def test_overloaded_twice_then_success_is_retried(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(status=529, times=2, retry_after="0.01"))
    client = make_client(fake.base_url, max_retries=2)
    message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert message.content[0].text == "Echo: hello there"
    attempts = fake.requests()
    assert [a["retry_count"] for a in attempts] == [0, 1, 2]
    assert [a["status"] for a in attempts] == [529, 529, 200]
    assert message._request_id == attempts[2]["id"]


async def test_retry_after_zero_header_and_should_retry(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(status=429, retry_after="0"), Behaviour(status=529, should_retry=False))
    client = make_client(fake.base_url, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as caught:
        await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "0"
    assert "x-should-retry" not in caught.value.response.headers
    assert caught.value.request_id == fake.requests()[0]["id"]
    # x-should-retry: false overrides the SDK's own policy, even for 529 with retries left.
    retrying = make_client(fake.base_url, max_retries=2)
    with pytest.raises(anthropic.OverloadedError):
        await retrying.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert len(fake.requests()) == 2


async def test_persistent_500_raises_internal_server_error(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(status=500, times=5, retry_after="0.01"))
    client = make_client(fake.base_url, max_retries=1)
    with pytest.raises(anthropic.InternalServerError) as caught:
        await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert not isinstance(caught.value, anthropic.OverloadedError)
    assert caught.value.type == "api_error" and caught.value.status_code == 500
    assert [a["retry_count"] for a in fake.requests()] == [0, 1]


async def test_bad_request_scripted_and_real(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(status=400, error_message="max_tokens: too large"))
    client = make_client(fake.base_url, max_retries=2)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert caught.value.type == "invalid_request_error"
    assert caught.value.body["error"]["message"] == "max_tokens: too large"
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        response = await http.post("/v1/messages", headers={"x-api-key": "k"}, json={"model": MODEL})
        missing_key = await http.post("/v1/messages", json={"model": MODEL, "messages": []})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["request_id"] == response.headers["request-id"]
    assert missing_key.status_code == 401
    assert len(fake.requests()) == 3  # validation failures are recorded but consume no behaviour


async def test_require_key(make_client) -> None:
    with FakeUpstream(FakeConfig(require_key="right-key")) as fake:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await make_client(fake.base_url, api_key="wrong-key").messages.create(
                model=MODEL, max_tokens=100, messages=HELLO
            )
        assert caught.value.type == "authentication_error"
        good = make_client(fake.base_url, api_key="right-key")
        assert (await good.messages.create(model=MODEL, max_tokens=100, messages=HELLO)).content


# Faults inside a stream


async def test_error_event_mid_stream(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(n_tokens=10, error_after_tokens=3))
    tokens: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        await collect(make_client(fake.base_url, max_retries=2), tokens)
    # The base class, not OverloadedError: only `.type` tells what happened.
    assert type(caught.value) is anthropic.APIStatusError
    assert caught.value.status_code == 200 and caught.value.type == "overloaded_error"
    assert tokens == ["tok0 ", "tok1 ", "tok2 "]
    assert fake.streams()[0]["outcome"] == "error" and len(fake.requests()) == 1


async def test_dropped_connection_mid_stream(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(n_tokens=10, drop_after_tokens=2))
    tokens: list[str] = []
    with pytest.raises(httpx2.RemoteProtocolError):
        await collect(make_client(fake.base_url, max_retries=2), tokens)
    assert tokens == ["tok0 ", "tok1 "]
    dropped = fake.streams()[0]
    assert (dropped["outcome"], dropped["tokens_sent"]) == ("dropped", 2)


async def test_client_leaving_early_is_seen_as_disconnect(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(n_tokens=200, token_delay=0.02))
    client = make_client(fake.base_url)
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        async for text in stream.text_stream:
            if text == "tok1 ":
                break
    result = await asyncio.to_thread(fake.wait_for, "disconnected", 1, 5.0)
    assert result["ok"] is True
    assert 2 <= fake.streams()[0]["tokens_sent"] < 200


async def test_hang_until_client_times_out(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(hang=True, times=2))
    client = make_client(fake.base_url, timeout=0.3)
    with pytest.raises(anthropic.APITimeoutError):
        await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    with pytest.raises(anthropic.APITimeoutError):
        await collect(client, [])
    await asyncio.to_thread(fake.wait_for, "disconnected", 1, 5.0)
    assert len(fake.requests()) == 2


async def test_wait_times_out(fake: FakeUpstream) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(fake.wait_for, "completed", 1, 0.2)
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(fake.wait_for_requests, 1, 0.2)


# Timing and fidelity


async def test_ttft_and_token_delay_are_observed(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(n_tokens=4, ttft=0.3, token_delay=0.06))
    client = make_client(fake.base_url)
    stamps: dict[str, float] = {}
    text_times: list[float] = []
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        async for event in stream:
            if event.type == "message_start":
                stamps["start"] = time.monotonic()
            elif event.type == "text":
                text_times.append(time.monotonic())
    assert len(text_times) == 4
    assert text_times[0] - stamps["start"] >= 0.25  # message_start came at once, text after ttft
    gaps = [later - earlier for earlier, later in zip(text_times, text_times[1:])]
    assert all(gap >= 0.04 for gap in gaps), gaps


@pytest.mark.parametrize("ttft_from", ["accepted", "head-sent"])
async def test_time_to_first_token_runs_from_acceptance_not_from_the_head(ttft_from: str) -> None:
    """A response head that takes long to send (on a shared machine the client under test may hold the core)
    does not delay the first token: like a real model's, the fake's clock starts when it accepts the reply.
    ``head-sent`` keeps the old behaviour, for comparison."""
    ttft, head_hold = 0.2, 0.3
    reply = Reply(
        request_id="req_1", message_id="msg_1", model=MODEL, tokens=["first", " second"],
        usage=wire.build_usage(input_tokens=3, output_tokens=2), stop_reason="end_turn", ttft=ttft,
        token_delay=0.0, behaviour=Behaviour(),
    )
    recorder = Recorder()
    sent: list[tuple[bytes, float]] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(head_hold)  # the condition under test: a head held up longer than the TTFT
            sent.append((b"<head>", time.monotonic()))
        else:
            sent.append((message.get("body", b""), time.monotonic()))

    async def receive() -> dict:
        await asyncio.Event().wait()  # the client never leaves
        return {}

    await StreamedReply(reply, recorder, {"request-id": "req_1"}, ttft_from=ttft_from)({}, receive, send)

    head_at = next(at for body, at in sent if body == b"<head>")
    first_delta_at = next(at for body, at in sent if b"text_delta" in body)
    [record] = recorder.streams
    assert record.outcome == "completed" and record.tokens_sent == 2
    assert record.head_ms is not None and record.head_ms >= head_hold * 1000
    assert record.first_delta_ms is not None
    if ttft_from == "accepted":
        assert first_delta_at - head_at < ttft / 2  # it was due before the head went out
        assert record.first_delta_ms < (head_hold + ttft / 2) * 1000
    else:
        assert first_delta_at - head_at >= ttft * 0.9
        assert record.first_delta_ms >= (head_hold + ttft * 0.9) * 1000


def test_the_fake_refuses_an_unknown_ttft_clock() -> None:
    with pytest.raises(ValueError, match="ttft_from"):
        StreamedReply(None, Recorder(), {}, ttft_from="whenever")  # type: ignore[arg-type]


TRICKY = [
    "line one\nline two",
    "\r\n",
    "back\\slash ",
    'quote " and \'single\' ',
    "data: not an event\n\n",
    "event: error\n",
    "emoji 🦀🎉 ",
    "中文字符 ",
    "sep\u2028para\u2029",
    "\ttab and nul-free end",
]


async def test_tricky_text_round_trips_byte_exact(fake: FakeUpstream, make_client) -> None:
    fake.script(Behaviour(tokens=TRICKY), Behaviour(text="".join(TRICKY)))
    client = make_client(fake.base_url)
    tokens: list[str] = []
    await collect(client, tokens)
    assert tokens == TRICKY
    message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert message.content[0].text.encode() == "".join(TRICKY).encode()


# The offline stub


async def test_offline_stub_through_the_real_sdk() -> None:
    transport = OfflineStubTransport(token_delay=0.01)
    client = anthropic.AsyncAnthropic(
        api_key="offline-stub", http_client=anthropic.DefaultAsyncHttpxClient(transport=transport)
    )
    async with client:
        message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
        assert message.content[0].text.startswith("[offline stub] ")
        assert message.content[0].text.endswith("You said: hello there")
        assert message.model == MODEL and message._request_id.startswith("req_stub_")
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
            chunks = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert chunks[0] == "[offline stub] " and len(chunks) > 5
        assert "".join(chunks) == message.content[0].text == final.content[0].text
        assert final.usage.output_tokens == len(chunks)
        assert final.usage.input_tokens == wire.count_input_tokens(None, HELLO)
        assert stream.request_id.startswith("req_stub_")
        with pytest.raises(anthropic.NotFoundError):
            await client.models.list()


# The command line


async def test_module_runs_as_a_subprocess() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_server.fake_upstream", "--port", "0", "--n-tokens", "3",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        match = re.fullmatch(r"fake-upstream listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        async with anthropic.AsyncAnthropic(api_key="k", base_url=match[1], max_retries=0) as client:
            message = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
        assert message.content[0].text == "tok0 tok1 tok2 "
    finally:
        process.terminate()
        await process.wait()


async def test_module_refuses_a_public_host() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent_server.fake_upstream", "--host", "0.0.0.0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 2 and stdout == b""
    assert b"non-loopback" in stderr
