"""POST /agent through the real app, the real SDK and the fake upstream: replies, history, every error."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from decimal import Decimal

import httpx
import pytest

from agent_server.fake_upstream import Behaviour
from tests.conftest import ALICE, BOB, UPSTREAM_KEY, app_client, auth, make_settings, plain_messages, plain_text

D = Decimal
# reference/anthropic-sdk-2.md, USD per million tokens: (input, output, 5m write, 1h write, cache read).
PRICES = {
    "claude-sonnet-5-5": (D("2"), D("10"), D("2.50"), D("4"), D("0.20")),
    "claude-haiku-4-5": (D("1"), D("5"), D("1.25"), D("2"), D("0.10")),
}
DEFAULT_MODEL = "claude-sonnet-5-5"  # API.md: AGENT_DEFAULT_MODEL default
MAX_TOKENS = 1024  # API.md: AGENT_MAX_TOKENS default, the default and the ceiling

RESPONSE_KEYS = {
    "conversation_id", "turn_id", "content", "model", "stop_reason", "input_tokens", "output_tokens", "usage",
    "estimated_cost_usd",
    # version 2 (API.md Part 2): additive
    "reply_id", "status", "steps", "context", "tool_calls",
}
USAGE_KEYS = {"input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
              "server_tool_uses"}
LEAKS = ("Traceback", 'File "', "SELECT ", "INSERT ", "UPDATE ", "sqlalchemy", "aiosqlite", UPSTREAM_KEY, ALICE, BOB)


def cost(model: str, *, inp=0, out=0, write_5m=0, write_1h=0, read=0) -> Decimal:
    p_in, p_out, p_5m, p_1h, p_read = PRICES[model]
    return (inp * p_in + out * p_out + write_5m * p_5m + write_1h * p_1h + read * p_read) / D(1_000_000)


def exact(response: httpx.Response) -> dict:
    """The JSON body with numbers as exact decimals."""
    return json.loads(response.text, parse_float=Decimal)


def assert_error(response: httpx.Response, status: int, error_type: str, *, request_id: bool = True) -> str:
    """The exact envelope, nothing that should stay inside; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip()
    for leak in LEAKS:
        assert leak not in response.text, leak
    if request_id:
        assert response.headers.get("x-request-id")
    return message


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


async def audit(client: httpx.AsyncClient, conversation_id: str, secret: str = ALICE) -> dict:
    response = await client.get(f"/conversations/{conversation_id}", headers=auth(secret))
    assert response.status_code == 200, response.text
    return exact(response)


async def conversation_count(client: httpx.AsyncClient) -> int:
    response = await client.get("/conversations", params={"limit": 200})
    assert response.status_code == 200
    return len(response.json()["conversations"])


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next(line.removeprefix("event: ") for line in lines if line.startswith("event: "))
        data = json.loads("".join(line.removeprefix("data: ") for line in lines if line.startswith("data: ")))
        events.append((name, data))
    return events


async def check_each(cases, check) -> None:
    """Run ``check`` on every case against one app, then report every case that failed (not just the first)."""
    problems = []
    for case in cases:
        try:
            await check(case)
        except AssertionError as exc:
            problems.append(f"{case!r}: {exc}")
    assert not problems, "\n".join(problems)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def collect_logs() -> Collect:
    """Warnings and errors of the app's loggers (which do not propagate to the root once the app started)."""
    handler = Collect()
    logging.getLogger("agent_server").addHandler(handler)
    return handler


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the happy path --------------------------------------------------------------------------------


async def test_reply_with_every_field_usage_and_exact_cost(client, fake) -> None:
    usage = {
        "input_tokens": 12,
        "output_tokens": 40,
        "cache_read_input_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 20},
    }
    fake.script(Behaviour(text="Hello there, friend.", usage=usage))
    response = await client.post("/agent", json={"message": "Hi"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = exact(response)
    assert set(body) == RESPONSE_KEYS
    assert body["content"] == "Hello there, friend."
    assert body["model"] == DEFAULT_MODEL
    assert body["stop_reason"] == "end_turn"
    assert (body["input_tokens"], body["output_tokens"]) == (12, 40)
    assert body["usage"] == {
        "input_tokens": 12, "output_tokens": 40, "cache_creation_input_tokens": 50, "cache_read_input_tokens": 100,
        "server_tool_uses": 0,
    }
    assert body["estimated_cost_usd"] == cost(DEFAULT_MODEL, inp=12, out=40, write_5m=30, write_1h=20, read=100)
    assert body["estimated_cost_usd"] == D("0.000599")
    assert isinstance(body["conversation_id"], str) and body["conversation_id"]
    assert isinstance(body["turn_id"], str) and body["turn_id"]
    sent = fake.requests()[-1]["body"]
    assert plain_messages(sent["messages"]) == [user("Hi")]
    assert sent["model"] == DEFAULT_MODEL
    assert sent["max_tokens"] == MAX_TOKENS
    assert "system" not in sent


@pytest.mark.parametrize("route", ["/agent", "/agent/stream"])
async def test_the_upstream_gets_the_message_exactly_as_json(client, fake, route) -> None:
    tricky = 'quote " back\\slash \r\n line\u2028sep 🦀 中文 \x00 end'
    response = await client.post(route, json={"message": tricky, "system": "Sé breve."})
    assert response.status_code == 200, response.text
    [sent] = fake.requests()
    assert sent["content_type"] == "application/json"
    assert plain_messages(sent["body"]["messages"]) == [user(tricky)]
    assert plain_text(sent["body"]["system"]) == "Sé breve."
    # Every route streams from the upstream (a whole reply is the same stream, collected).
    assert sent["stream"] is True


async def test_the_api_md_example_cost(client, fake) -> None:
    fake.script(Behaviour(text="x", usage={"input_tokens": 12, "output_tokens": 40}))
    body = exact(await client.post("/agent", json={"message": "Hi"}))
    assert body["estimated_cost_usd"] == D("0.000424")
    assert body["usage"]["cache_creation_input_tokens"] == body["usage"]["cache_read_input_tokens"] == 0


async def test_request_row_records_the_upstream_call(client, fake) -> None:
    usage = {"input_tokens": 7, "output_tokens": 3, "cache_creation": {"ephemeral_1h_input_tokens": 11}}
    fake.script(Behaviour(text="ok!", usage=usage, stop_reason="max_tokens"))
    body = (await client.post("/agent", json={"message": "Hi", "max_tokens": 3})).json()
    conversation = await audit(client, body["conversation_id"])
    [row] = conversation["requests"]
    assert row["route"] == "agent"
    assert row["status"] == "ok"
    assert row["error_type"] is None
    assert row["model"] == DEFAULT_MODEL
    assert row["upstream_request_id"] == fake.requests()[-1]["id"]
    assert row["attempts"] == 1
    assert row["turn_id"] == body["turn_id"]
    assert row["stop_reason"] == body["stop_reason"] == "max_tokens"
    assert (row["input_tokens"], row["output_tokens"]) == (7, 3)
    assert (row["cache_creation_input_tokens"], row["cache_read_input_tokens"]) == (11, 0)
    assert row["cost_usd"] == cost(DEFAULT_MODEL, inp=7, out=3, write_1h=11)
    assert isinstance(row["latency_ms"], int) and row["latency_ms"] >= 0
    assert fake.requests()[-1]["body"]["max_tokens"] == 3
    turns = conversation["turns"]
    assert [(t["seq"], t["role"], t["content"], t["status"]) for t in turns] == [
        (1, "user", "Hi", "complete"), (2, "assistant", "ok!", "complete"),
    ]
    assert turns[1]["id"] == body["turn_id"]


async def test_sdk_retries_are_one_row_with_their_attempts(client, fake) -> None:
    fake.script(Behaviour(status=500, retry_after="0.01"), Behaviour(text="second time lucky"))
    response = await client.post("/agent", json={"message": "Hi"})
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "second time lucky"
    attempts = fake.requests()
    assert [a["status"] for a in attempts] == [500, 200]
    [row] = (await audit(client, response.json()["conversation_id"]))["requests"]
    assert row["attempts"] == 2
    assert row["status"] == "ok"
    assert row["upstream_request_id"] == attempts[1]["id"]


# -- history ---------------------------------------------------------------------------------------


async def test_continuation_sends_the_completed_exchanges(client, fake) -> None:
    conversation_id = None
    history: list[dict] = []
    for i in range(5):  # after 0, 1, 2, 3 and 4 exchanges
        fake.script(Behaviour(text=f"answer {i}"))
        payload = {"message": f"question {i}"}
        if conversation_id is not None:
            payload["conversation_id"] = conversation_id
        response = await client.post("/agent", json=payload)
        assert response.status_code == 200, response.text
        if conversation_id is None:
            conversation_id = response.json()["conversation_id"]
        assert response.json()["conversation_id"] == conversation_id
        assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [*history, user(f"question {i}")]
        history += [user(f"question {i}"), assistant(f"answer {i}")]
    assert await conversation_count(client) == 1
    stored = (await audit(client, conversation_id))["turns"]
    assert [t["seq"] for t in stored] == list(range(1, 11))


async def test_a_failed_exchange_is_not_sent_as_history(client, fake) -> None:
    fake.script(Behaviour(text="A1"))
    first = (await client.post("/agent", json={"message": "Q1"})).json()
    conversation_id = first["conversation_id"]

    # Enough failures to exhaust the SDK's retries (1 + AGENT_UPSTREAM_MAX_RETRIES=2).
    fake.script(Behaviour(status=500, times=3, retry_after="0.01"))
    failed = await client.post("/agent", json={"message": "Q2", "conversation_id": conversation_id})
    assert_error(failed, 502, "upstream_error")
    assert len(fake.requests()) == 1 + 3

    fake.script(Behaviour(text="A3"))
    third = await client.post("/agent", json={"message": "Q3", "conversation_id": conversation_id})
    assert third.status_code == 200, third.text
    assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [user("Q1"), assistant("A1"), user("Q3")]

    fake.script(Behaviour(text="A4"))
    await client.post("/agent", json={"message": "Q4", "conversation_id": conversation_id})
    assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [
        user("Q1"), assistant("A1"), user("Q3"), assistant("A3"), user("Q4"),
    ]


async def test_failed_call_stores_an_error_row_and_no_turn_without_text(client, fake) -> None:
    fake.script(Behaviour(status=500, times=3, retry_after="0.01"))
    response = await client.post("/agent", json={"message": "Q1"})
    assert_error(response, 502, "upstream_error")
    listing = (await client.get("/conversations")).json()["conversations"]
    assert len(listing) == 1
    conversation = await audit(client, listing[0]["id"])
    # The user's message is kept; no assistant turn, since no text arrived.
    assert [(t["role"], t["status"]) for t in conversation["turns"]] == [("user", "complete")]
    [row] = conversation["requests"]
    assert row["status"] == "error"
    assert row["error_type"] == "upstream_error"
    assert row["turn_id"] is None
    assert row["attempts"] == 3
    assert row["upstream_request_id"] == fake.requests()[-1]["id"]


async def test_system_prompt_is_stored_and_sent(client, fake) -> None:
    response = await client.post("/agent", json={"message": "Hi", "system": "Answer in French."})
    assert response.status_code == 200, response.text
    conversation_id = response.json()["conversation_id"]
    assert plain_text(fake.requests()[-1]["body"]["system"]) == "Answer in French."
    assert (await audit(client, conversation_id))["system"] == "Answer in French."

    # Continuations send the stored prompt, whether the client repeats it or not.
    again = await client.post("/agent", json={"message": "Again", "conversation_id": conversation_id})
    assert again.status_code == 200
    assert plain_text(fake.requests()[-1]["body"]["system"]) == "Answer in French."
    same = await client.post(
        "/agent", json={"message": "Same", "conversation_id": conversation_id, "system": "Answer in French."}
    )
    assert same.status_code == 200
    assert plain_text(fake.requests()[-1]["body"]["system"]) == "Answer in French."


async def test_a_different_system_prompt_on_a_continuation_is_refused(client, fake) -> None:
    conversation_id = (await client.post("/agent", json={"message": "Hi", "system": "Be brief."})).json()[
        "conversation_id"
    ]
    calls = len(fake.requests())
    response = await client.post(
        "/agent", json={"message": "Now", "conversation_id": conversation_id, "system": "Be verbose."}
    )
    assert_error(response, 422, "invalid_request_error")
    assert len(fake.requests()) == calls
    conversation = await audit(client, conversation_id)
    assert conversation["system"] == "Be brief."
    assert len(conversation["turns"]) == 2  # the refused message was not stored


async def test_model_override_for_one_reply(client, fake) -> None:
    fake.script(Behaviour(text="a", usage={"input_tokens": 100, "output_tokens": 10}))
    conversation_id = (await client.post("/agent", json={"message": "Hi"})).json()["conversation_id"]

    fake.script(Behaviour(text="b", usage={"input_tokens": 100, "output_tokens": 10}))
    override = await client.post(
        "/agent", json={"message": "Cheaper", "conversation_id": conversation_id, "model": "claude-haiku-4-5"}
    )
    assert override.status_code == 200, override.text
    assert fake.requests()[-1]["body"]["model"] == "claude-haiku-4-5"
    assert exact(override)["model"] == "claude-haiku-4-5"
    assert exact(override)["estimated_cost_usd"] == cost("claude-haiku-4-5", inp=100, out=10)

    back = await client.post("/agent", json={"message": "Default", "conversation_id": conversation_id})
    assert fake.requests()[-1]["body"]["model"] == DEFAULT_MODEL
    assert back.json()["model"] == DEFAULT_MODEL

    conversation = await audit(client, conversation_id)
    assert conversation["model"] == DEFAULT_MODEL
    assert [r["model"] for r in conversation["requests"]] == [DEFAULT_MODEL, "claude-haiku-4-5", DEFAULT_MODEL]
    assert conversation["requests"][0]["cost_usd"] == cost(DEFAULT_MODEL, inp=100, out=10)
    assert conversation["requests"][1]["cost_usd"] == cost("claude-haiku-4-5", inp=100, out=10)


async def test_new_conversation_with_a_model(client, fake) -> None:
    response = await client.post("/agent", json={"message": "Hi", "model": "claude-haiku-4-5"})
    assert response.status_code == 200
    assert fake.requests()[-1]["body"]["model"] == "claude-haiku-4-5"
    conversation_id = response.json()["conversation_id"]
    assert (await audit(client, conversation_id))["model"] == "claude-haiku-4-5"
    await client.post("/agent", json={"message": "More", "conversation_id": conversation_id})
    assert fake.requests()[-1]["body"]["model"] == "claude-haiku-4-5"


async def test_max_tokens_up_to_the_ceiling_is_sent(client, fake) -> None:
    response = await client.post("/agent", json={"message": "Hi", "max_tokens": MAX_TOKENS})
    assert response.status_code == 200
    assert fake.requests()[-1]["body"]["max_tokens"] == MAX_TOKENS


async def test_a_large_max_tokens_on_a_whole_reply_is_sent(database_url, fake) -> None:
    """The SDK's messages.create refuses max_tokens above ~21,000 without streaming (a guard against
    connections idle for over 10 minutes) with a ValueError when the client's timeout is the SDK default,
    10 minutes, which is what an operator who allows long replies sets. The server bounds every call with
    its own deadline, so a raised ceiling must work on POST /agent too, not end in a 500."""
    large = 64_000
    settings = make_settings(database_url, fake, AGENT_MAX_TOKENS_CEILING=large, AGENT_UPSTREAM_TIMEOUT_SECONDS=600)
    async with app_client(settings) as http:
        response = await http.post("/agent", json={"message": "Hi", "max_tokens": large}, headers=auth())
    assert response.status_code == 200, response.text
    assert fake.requests()[-1]["body"]["max_tokens"] == large


# -- client errors ---------------------------------------------------------------------------------


async def test_body_that_is_not_json(client, fake) -> None:
    async def check(content: bytes) -> None:
        response = await client.post("/agent", content=content, headers={"content-type": "application/json"})
        assert_error(response, 400, "invalid_request_error")

    await check_each([b"{not json", b"", b"\xff\xfe\x00", b'{"message": "Hi"', b"NaNa", b"{'message': 'Hi'}"], check)
    assert fake.requests() == []
    assert await conversation_count(client) == 0


async def test_missing_client_key(client, fake) -> None:
    request = client.build_request("POST", "/agent", json={"message": "Hi"})
    del request.headers["authorization"]
    assert_error(await client.send(request), 401, "authentication_error")
    assert fake.requests() == []


async def test_unknown_client_key(client, fake) -> None:
    async def check(header: str) -> None:
        response = await client.post("/agent", json={"message": "Hi"}, headers={"Authorization": header})
        assert_error(response, 401, "authentication_error")

    await check_each(
        [f"Bearer {ALICE}x", "Bearer not-a-key-0123456789", f"Basic {ALICE}", "Bearer ", ALICE, f"Bearer {ALICE[:-1]}"],
        check,
    )
    assert fake.requests() == []
    assert await conversation_count(client) == 0


async def test_unknown_conversation(client, fake) -> None:
    response = await client.post("/agent", json={"message": "Hi", "conversation_id": "conv_doesnotexist"})
    assert_error(response, 404, "not_found_error")
    assert fake.requests() == []


async def test_unknown_conversation_id_is_not_echoed(client, fake) -> None:
    response = await client.post("/agent", json={"message": "Hi", "conversation_id": "<script>alert(1)</script>"})
    assert_error(response, 404, "not_found_error")
    assert "<script>" not in response.text


async def test_another_keys_conversation_is_not_found(client, fake) -> None:
    fake.script(Behaviour(text="bob's answer"))
    bobs = await client.post("/agent", json={"message": "Bob here"}, headers=auth(BOB))
    assert bobs.status_code == 200
    conversation_id = bobs.json()["conversation_id"]

    response = await client.post("/agent", json={"message": "Alice here", "conversation_id": conversation_id})
    missing = await client.post("/agent", json={"message": "Alice here", "conversation_id": "conv_nosuchthing"})
    # Never 403: a foreign conversation looks exactly like a missing one.
    assert_error(response, 404, "not_found_error")
    assert_error(missing, 404, "not_found_error")
    assert response.json()["error"]["message"].replace(conversation_id, "X") == missing.json()["error"][
        "message"
    ].replace("conv_nosuchthing", "X")
    assert len(fake.requests()) == 1
    turns = (await audit(client, conversation_id, secret=BOB))["turns"]
    assert [t["content"] for t in turns] == ["Bob here", "bob's answer"]


async def test_concurrent_reply_on_one_conversation_conflicts(client, fake) -> None:
    conversation_id = (await client.post("/agent", json={"message": "first"})).json()["conversation_id"]
    fake.script(Behaviour(text="slow answer", ttft=1.0))
    seen = len(fake.requests())
    slow = asyncio.create_task(client.post("/agent", json={"message": "slow", "conversation_id": conversation_id}))
    # The slow reply holds the lock once its upstream call has arrived.
    await asyncio.to_thread(fake.wait_for_requests, seen + 1)
    second = await client.post("/agent", json={"message": "second", "conversation_id": conversation_id})
    first = await slow
    assert first.status_code == 200, first.text
    assert first.json()["content"] == "slow answer"
    assert_error(second, 409, "conflict_error")
    assert len(fake.requests()) == seen + 1
    # The refused message left nothing behind, and the lock is free again.
    assert [t["content"] for t in (await audit(client, conversation_id))["turns"]][-2:] == ["slow", "slow answer"]
    after = await client.post("/agent", json={"message": "third", "conversation_id": conversation_id})
    assert after.status_code == 200, after.text


@pytest.fixture
async def small_body_client(database_url, fake):
    async with app_client(make_settings(database_url, fake, AGENT_MAX_BODY_BYTES=1024)) as http:
        http.headers.update(auth())
        yield http


def body_of_size(size: int) -> bytes:
    raw = json.dumps({"message": "x" * (size - len(json.dumps({"message": ""})))}).encode()
    assert len(raw) == size
    return raw


async def test_body_over_the_limit_with_content_length(small_body_client, fake) -> None:
    response = await small_body_client.post("/agent", content=body_of_size(1025),
                                            headers={"content-type": "application/json"})
    assert_error(response, 413, "request_too_large")
    assert fake.requests() == []
    assert await conversation_count(small_body_client) == 0


async def test_body_at_the_limit_is_accepted(small_body_client, fake) -> None:
    response = await small_body_client.post("/agent", content=body_of_size(1024),
                                            headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


async def test_chunked_body_over_the_limit_without_content_length(small_body_client, fake) -> None:
    sent = []

    async def chunks():
        for piece in (b'{"message": "', *([b"x" * 256] * 8), b'"}'):
            sent.append(piece)
            yield piece

    request = small_body_client.build_request(
        "POST", "/agent", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in request.headers
    response = await small_body_client.send(request)
    assert_error(response, 413, "request_too_large")
    assert fake.requests() == []


async def test_chunked_body_under_the_limit_is_accepted(small_body_client, fake) -> None:
    async def chunks():
        yield b'{"message": '
        yield b'"chunked hello"}'

    response = await small_body_client.post("/agent", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [user("chunked hello")]


WRONG_SHAPES = [
    {},
    {"message": ""},
    {"message": "   \n\t "},
    {"message": None},
    {"message": 5},
    {"message": ["Hi"]},
    {"message": "Hi", "max_tokens": "5"},
    {"message": "Hi", "max_tokens": 5.0},
    {"message": "Hi", "max_tokens": True},
    {"message": "Hi", "max_tokens": 0},
    {"message": "Hi", "max_tokens": -1},
    {"message": "Hi", "max_tokens": MAX_TOKENS + 1},
    {"message": "Hi", "model": "claude-imaginary-9"},
    {"message": "Hi", "model": 5},
    {"message": "Hi", "model": ""},
    {"message": "Hi", "conversation_id": 5},
    {"message": "Hi", "system": 5},
    {"message": "Hi", "temperature": 0.5},
    [{"message": "Hi"}],
    "Hi",
    None,
]


async def test_wrong_shape_is_422(client, fake) -> None:
    async def check(payload) -> None:
        response = await client.post(
            "/agent", content=json.dumps(payload), headers={"content-type": "application/json"}
        )
        assert_error(response, 422, "invalid_request_error")

    await check_each(WRONG_SHAPES, check)
    assert fake.requests() == []
    assert await conversation_count(client) == 0


async def test_422_names_the_field_without_echoing_the_message(client, fake) -> None:
    response = await client.post("/agent", json={"message": "secret words", "max_tokens": "lots"})
    message = assert_error(response, 422, "invalid_request_error")
    assert "max_tokens" in message
    assert "secret words" not in message


async def test_rate_limit_is_429_with_retry_after(database_url, fake) -> None:
    async with app_client(make_settings(database_url, fake, AGENT_RATE_LIMIT="2/minute")) as http:
        http.headers.update(auth())
        for _ in range(2):
            assert (await http.post("/agent", json={"message": "Hi"})).status_code == 200
        response = await http.post("/agent", json={"message": "Hi"})
        assert_error(response, 429, "rate_limit_error")
        assert int(response.headers["retry-after"]) >= 1
        assert len(fake.requests()) == 2
        # Per key: bob still has his own allowance.
        assert (await http.post("/agent", json={"message": "Hi"}, headers=auth(BOB))).status_code == 200


# -- upstream errors -------------------------------------------------------------------------------


async def test_upstream_rejects_the_request(client, fake) -> None:
    fake.script(Behaviour(status=400, error_message="prompt is too long: 250000 tokens > 200000 maximum"))
    response = await client.post("/agent", json={"message": "Hi"})
    assert_error(response, 400, "invalid_request_error")
    assert len(fake.requests()) == 1  # not retried
    listing = (await client.get("/conversations")).json()["conversations"]
    [row] = (await audit(client, listing[0]["id"]))["requests"]
    assert (row["status"], row["error_type"]) == ("error", "invalid_request_error")


async def test_upstream_refuses_the_servers_key(client, fake) -> None:
    fake.script(Behaviour(status=401))
    response = await client.post("/agent", json={"message": "Hi"})
    assert_error(response, 502, "upstream_error")
    assert len(fake.requests()) == 1
    listing = (await client.get("/conversations")).json()["conversations"]
    [row] = (await audit(client, listing[0]["id"]))["requests"]
    assert (row["status"], row["error_type"]) == ("error", "upstream_error")


async def test_persistent_upstream_500(client, fake) -> None:
    fake.script(Behaviour(status=500, times=3, retry_after="0.01"))
    response = await client.post("/agent", json={"message": "Hi"})
    assert_error(response, 502, "upstream_error")
    assert [r["status"] for r in fake.requests()] == [500, 500, 500]


async def test_persistent_upstream_529_is_overloaded_with_retry_after(client, fake) -> None:
    fake.script(Behaviour(status=529, times=3, retry_after="0.01"))
    response = await client.post("/agent", json={"message": "Hi"})
    assert_error(response, 503, "overloaded_error")
    assert [r["status"] for r in fake.requests()] == [529, 529, 529]
    # The upstream said 0.01 s: the header says at least 1.
    assert response.headers["retry-after"] == "1"
    listing = (await client.get("/conversations")).json()["conversations"]
    [row] = (await audit(client, listing[0]["id"]))["requests"]
    assert (row["status"], row["error_type"], row["attempts"]) == ("error", "overloaded_error", 3)


@pytest.fixture
async def no_retry_client(database_url, fake):
    async with app_client(make_settings(database_url, fake, AGENT_UPSTREAM_MAX_RETRIES=0)) as http:
        http.headers.update(auth())
        yield http


async def test_overloaded_passes_on_the_upstreams_retry_after(no_retry_client, fake) -> None:
    for status, retry_after in ((529, "7"), (429, "12")):
        fake.script(Behaviour(status=status, retry_after=retry_after))
        response = await no_retry_client.post("/agent", json={"message": "Hi"})
        assert_error(response, 503, "overloaded_error")
        assert response.headers["retry-after"] == retry_after, status


async def test_overloaded_without_upstream_retry_after_still_says_when(no_retry_client, fake) -> None:
    fake.script(Behaviour(status=529))
    response = await no_retry_client.post("/agent", json={"message": "Hi"})
    assert_error(response, 503, "overloaded_error")
    assert int(response.headers["retry-after"]) >= 1


async def test_upstream_that_hangs_times_out(database_url, fake) -> None:
    settings = make_settings(database_url, fake, AGENT_UPSTREAM_TIMEOUT_SECONDS=0.5)
    async with app_client(settings) as http:
        http.headers.update(auth())
        fake.script(Behaviour(hang=True, times=5))
        started = asyncio.get_running_loop().time()
        response = await http.post("/agent", json={"message": "Hi"})
        elapsed = asyncio.get_running_loop().time() - started
        assert_error(response, 504, "timeout_error")
        # The deadline covers the SDK's retries too.
        assert elapsed < 5
        listing = (await http.get("/conversations")).json()["conversations"]
        [row] = (await audit(http, listing[0]["id"]))["requests"]
        assert (row["status"], row["error_type"]) == ("error", "timeout_error")


async def test_upstream_unreachable(database_url) -> None:
    settings = make_settings(
        database_url, None, ANTHROPIC_API_KEY=UPSTREAM_KEY, ANTHROPIC_BASE_URL=f"http://127.0.0.1:{closed_port()}",
        AGENT_UPSTREAM_MAX_RETRIES=0,
    )
    async with app_client(settings) as http:
        http.headers.update(auth())
        response = await http.post("/agent", json={"message": "Hi"})
        assert_error(response, 502, "upstream_error")
        listing = (await http.get("/conversations")).json()["conversations"]
        [row] = (await audit(http, listing[0]["id"]))["requests"]
        assert (row["status"], row["error_type"], row["upstream_request_id"]) == ("error", "upstream_error", None)


async def test_a_bug_is_500_with_the_request_id(client, fake, monkeypatch) -> None:
    from agent_server.http import frames

    def broken(outcome):
        raise RuntimeError(f"boom: SELECT * FROM conversations -- {UPSTREAM_KEY}")

    monkeypatch.setattr(frames, "agent_response", broken)
    records = collect_logs()
    transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=auth()) as http:
            response = await http.post("/agent", json={"message": "Hi"})
    finally:
        logging.getLogger("agent_server").removeHandler(records)
    message = assert_error(response, 500, "api_error", request_id=False)
    assert "boom" not in response.text
    # The traceback went to the log, under an id that the client's message names.
    logged = [r for r in records.records if r.levelno >= logging.ERROR and r.exc_info]
    logged_ids = {token for r in logged for token in re.findall(r"[\w-]*\d[\w-]*", r.getMessage()) if len(token) >= 6}
    assert any(token in message for token in logged_ids), (message, [r.getMessage() for r in logged])
    # The id the bug was logged under is in the message, and it is the one the client sees in the header.
    request_id = response.headers.get("x-request-id")
    assert request_id, f"the 500 response carries no X-Request-ID header (message: {message!r})"
    assert request_id in message


# -- failures mid-stream (SSE) ---------------------------------------------------------------------


async def test_mid_stream_error_keeps_the_text_as_a_failed_turn(client, fake) -> None:
    fake.script(Behaviour(tokens=["Hello ", "wor", "ld"], error_after_tokens=2, error_type="api_error"))
    response = await client.post("/agent/stream", json={"message": "Hi"})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["start", "token", "token", "error"]
    assert [data["text"] for name, data in events if name == "token"] == ["Hello ", "wor"]
    error = events[-1][1]
    assert list(error) == ["error"] and set(error["error"]) == {"type", "message"}
    assert error["error"]["type"] == "upstream_error"
    for leak in LEAKS:
        assert leak not in response.text

    conversation_id = events[0][1]["conversation_id"]
    conversation = await audit(client, conversation_id)
    assert [(t["role"], t["content"], t["status"]) for t in conversation["turns"]] == [
        ("user", "Hi", "complete"), ("assistant", "Hello wor", "failed"),
    ]
    [row] = conversation["requests"]
    assert (row["route"], row["status"], row["error_type"]) == ("stream", "error", "upstream_error")
    assert row["turn_id"] == conversation["turns"][1]["id"]
    assert row["upstream_request_id"] == fake.requests()[-1]["id"]

    # The failed exchange is not history.
    await client.post("/agent", json={"message": "Again", "conversation_id": conversation_id})
    assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [user("Again")]


async def test_stream_error_before_any_text_stores_no_turn(client, fake) -> None:
    fake.script(Behaviour(tokens=["never"], error_after_tokens=0, error_type="api_error"))
    response = await client.post("/agent/stream", json={"message": "Hi"})
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["start", "error"]
    conversation = await audit(client, events[0][1]["conversation_id"])
    assert [t["role"] for t in conversation["turns"]] == ["user"]
    [row] = conversation["requests"]
    assert (row["status"], row["turn_id"]) == ("error", None)


async def test_dropped_connection_mid_stream_keeps_the_text(client, fake) -> None:
    fake.script(Behaviour(tokens=["one ", "two ", "three"], drop_after_tokens=2))
    response = await client.post("/agent/stream", json={"message": "Hi"})
    events = sse_events(response.text)
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "upstream_error"
    conversation = await audit(client, events[0][1]["conversation_id"])
    assert [(t["content"], t["status"]) for t in conversation["turns"]][1] == ("one two ", "failed")
    assert conversation["requests"][0]["status"] == "error"



async def test_stream_that_ends_before_message_stop_is_a_failure_not_a_reply(client, fake) -> None:
    """A body that ends cleanly but early (a proxy cutting it short) must not pass for a finished reply."""
    usage = {"input_tokens": 9, "output_tokens": 3}
    fake.script(Behaviour(tokens=["one ", "two ", "three"], end_after_tokens=2, usage=usage))
    response = await client.post("/agent/stream", json={"message": "Hi"})
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["start", "token", "token", "error"]
    assert events[-1][1]["error"]["type"] == "upstream_error"
    conversation = await audit(client, events[0][1]["conversation_id"])
    assert [(t["content"], t["status"]) for t in conversation["turns"]][1] == ("one two ", "failed")
    [row] = conversation["requests"]
    assert (row["status"], row["stop_reason"]) == ("error", None)
    assert row["input_tokens"] == 9  # from message_start: still accounted for

# -- load ------------------------------------------------------------------------------------------


async def test_sixty_concurrent_new_conversations(database_url, fake) -> None:
    settings = make_settings(
        database_url, fake, AGENT_RATE_LIMIT="1000/minute", AGENT_MAX_CONCURRENT_REPLIES=100
    )
    async with app_client(settings) as http:
        http.headers.update(auth())
        handler = collect_logs()
        try:
            responses = await asyncio.gather(
                *(http.post("/agent", json={"message": f"hello {i}"}) for i in range(60))
            )
        finally:
            logging.getLogger("agent_server").removeHandler(handler)
        records = handler.records
        assert [r.status_code for r in responses] == [200] * 60, [r.text for r in responses if r.status_code != 200]
        assert sorted(r.json()["content"] for r in responses) == sorted(f"Echo: hello {i}" for i in range(60))
        ids = {r.json()["conversation_id"] for r in responses}
        assert len(ids) == 60
        listing = (await http.get("/conversations", params={"limit": 200})).json()
        assert {c["id"] for c in listing["conversations"]} == ids
        logged = "\n".join(
            record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
            for record in records
        )
        assert "database is locked" not in logged
        assert not [r for r in records if r.levelno >= logging.ERROR], logged
