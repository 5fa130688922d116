"""POST /agent/stream end to end: `agent-server serve` in a subprocess, the fake upstream, a real HTTP client.

Every fault comes from the fake's script; the events are read with the byte-level parser of ``sse_client``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import BOB, auth, plain_messages
from tests.e2e.conftest import ServerProcess, server_env
from tests.e2e.sse_client import COMMENT, SSEEvent, SSEParser, iter_events

pytestmark = pytest.mark.e2e

MODEL = "claude-haiku-4-5"  # an allowed model (API.md) that is not the default, so echoing it means something
TIMEOUT = httpx.Timeout(30.0)
PING_SECONDS = 0.3


@pytest.fixture(scope="module")
def server(fake_upstream, tmp_path_factory) -> Iterator[ServerProcess]:
    """One `agent-server serve` for the module (a start costs seconds); every test makes its own conversations
    and the function-scoped `fake` fixture still resets the fake before each test.

    Pings every 0.3 s (the keep-alive test) and a fixed retry count (the persistent-overload test).
    """
    workdir = tmp_path_factory.mktemp("sse-server")
    env = server_env(f"sqlite+aiosqlite:///{workdir / 'data' / 'agent.db'}", fake_upstream,
                     AGENT_SSE_PING_SECONDS=str(PING_SECONDS), AGENT_UPSTREAM_MAX_RETRIES="2")
    process = ServerProcess(env=env, workdir=workdir)
    try:
        yield process.start()
    finally:
        process.stop()


def client_for(server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=TIMEOUT)


def post_stream(client: httpx.Client, body: dict, headers: dict | None = None) -> tuple[httpx.Response, list]:
    """The whole stream: the response (headers, status) and its events, comments included."""
    headers = auth() if headers is None else headers
    with client.stream("POST", "/agent/stream", json=body, headers=headers) as response:
        events = list(iter_events(response)) if response.status_code == 200 else []
        if response.status_code != 200:
            response.read()
    return response, events


# Events of API.md Part 2 that a Part 1 client ignores (this file checks Part 1's stream; test_agent_loop.py the rest).
PART_2 = {"step", "thinking", "tool_use", "tool_result", "requires_action"}


def named(events: list[SSEEvent]) -> list[SSEEvent]:
    """The events a Part 1 client reads: no comments, no Part 2 events."""
    return [event for event in events if event.event != COMMENT and event.event not in PART_2]


def texts(events: list[SSEEvent]) -> list[str]:
    return [event.data["text"] for event in events if event.event == "token"]


def conversation(client: httpx.Client, conversation_id: str) -> dict:
    response = client.get(f"/conversations/{conversation_id}", headers=auth())
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_conversation(client: httpx.Client, conversation_id: str, ready: Callable[[dict], bool]) -> dict:
    """Poll the audit until ``ready`` holds: the server gives no signal when it has stored a cancelled reply."""
    deadline = time.monotonic() + 10
    while True:
        audit = conversation(client, conversation_id)
        if ready(audit) or time.monotonic() > deadline:
            return audit
        time.sleep(0.02)


def assert_error_envelope(data: object, error_type: str) -> None:
    assert isinstance(data, dict) and set(data) == {"error"}, data
    assert data["error"]["type"] == error_type, data
    assert isinstance(data["error"]["message"], str) and data["error"]["message"].strip(), data


def assistant_turns(audit: dict) -> list[dict]:
    return [turn for turn in audit["turns"] if turn["role"] == "assistant"]


# -- the parser itself ---------------------------------------------------------------------------------------


def test_parser_handles_every_line_ending_and_any_chunking():
    raw = (
        b": ping\r\n\r\n"
        b"event: token\r\ndata: {\"text\": \"a\\u2028b\"}\r\n\r\n"
        b"event: token\rdata: {\"text\": \"\xe2\x80\xa8 \xe6\xbc\xa2 \xf0\x9f\x8e\x89\"}\r\r"
        b"event: done\ndata: {\"x\":\ndata: 1}\n\n"
        b"event: lost\ndata: {}\n"  # no blank line before the end: never dispatched
    )
    expected = [(COMMENT, "ping"), ("token", {"text": "a\u2028b"}), ("token", {"text": "\u2028 漢 🎉"}),
                ("done", {"x": 1})]
    whole = SSEParser()
    assert [(e.event, e.data) for e in [*whole.feed(raw), *whole.close()]] == expected
    # Byte by byte: a CRLF or a UTF-8 sequence split across reads must not change anything.
    parser = SSEParser()
    events = [event for i in range(len(raw)) for event in parser.feed(raw[i : i + 1])] + parser.close()
    assert [(e.event, e.data) for e in events] == expected


# -- a successful stream -------------------------------------------------------------------------------------


def test_stream_is_start_tokens_done_with_sse_headers(server, fake):
    tokens = ["Hel", "lo", ", ", "world"]
    usage = {"input_tokens": 21, "output_tokens": 4, "cache_read_input_tokens": 5}
    fake.script({"tokens": tokens, "usage": usage, "stop_reason": "max_tokens"})
    with client_for(server) as client:
        headers = {**auth(), "Accept-Encoding": "gzip, deflate, br"}
        response, events = post_stream(client, {"message": "Hi", "model": MODEL}, headers)
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0].strip() == "text/event-stream"
        # no-cache (API.md Part 1) and no-store: the stream carries conversation content.
        assert {d.strip() for d in response.headers["cache-control"].split(",")} == {"no-cache", "no-store"}
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers

        events = named(events)
        names = [event.event for event in events]
        assert names == ["start", "token", "token", "token", "token", "done"], names
        start, done = events[0].data, events[-1].data
        assert isinstance(start["conversation_id"], str) and start["conversation_id"]
        assert start["model"] == MODEL
        assert texts(events) == tokens

        # `done` is the POST /agent response minus `content`: compare with a real one from this server.
        fake.script({"tokens": tokens, "usage": usage})
        plain = client.post("/agent", json={"message": "Again", "conversation_id": start["conversation_id"]},
                            headers=auth())
        assert plain.status_code == 200, plain.text
        assert set(done) == set(plain.json()) - {"content", "tool_calls"}
        assert {"conversation_id", "turn_id", "model", "stop_reason", "input_tokens", "output_tokens", "usage",
                "estimated_cost_usd"} <= set(done)
        assert done["conversation_id"] == start["conversation_id"]
        assert done["model"] == MODEL
        assert done["stop_reason"] == "max_tokens"
        # The streamed usage is the final message's: message_delta repeats input tokens, it does not add them.
        assert (done["input_tokens"], done["output_tokens"]) == (21, 4)
        assert done["usage"] == {"input_tokens": 21, "output_tokens": 4, "cache_creation_input_tokens": 0,
                                 "cache_read_input_tokens": 5, "server_tool_uses": 0}
        assert isinstance(done["estimated_cost_usd"], float) and done["estimated_cost_usd"] > 0

        audit = conversation(client, start["conversation_id"])
        streamed = audit["requests"][0]
        assert streamed["turn_id"] == done["turn_id"]
        assert streamed["cost_usd"] == done["estimated_cost_usd"]
        assert assistant_turns(audit)[0]["id"] == done["turn_id"]


TRICKY_TOKENS = [
    "line one\nline two",
    "\r\n",
    "lone\rCR",
    "\r",
    " back\\slash \\n \"double\" 'single'",
    "\ndata: x\n",
    "event: y\n",
    "\n\n",
    ": not a comment\n",
    "id: 7\nretry: 1\n",
    " ",
    "emoji 🎉👩‍💻🇫🇷",
    " CJK 漢字かなカナ한글",
    " separators\u2028line\u2029para\x85nel\x0bvt\x0cff\x1cfs",
    "\t{\"json\": [1, 2]}</script>",
    "end",
]


def test_tricky_text_arrives_and_is_stored_byte_exact(server, fake):
    fake.script({"tokens": TRICKY_TOKENS})
    message = "Quote me: \"a\\b\"\r\nevent: z\n\ndata: {}\u2028🎉 漢字\rend"
    with client_for(server) as client:
        response, events = post_stream(client, {"message": message})
        assert response.status_code == 200
        events = named(events)
        assert [event.event for event in events][-1] == "done", events
        assert "".join(texts(events)) == "".join(TRICKY_TOKENS)
        assert texts(events) == TRICKY_TOKENS

        audit = conversation(client, events[0].data["conversation_id"])
        assert [(t["role"], t["content"], t["status"]) for t in audit["turns"]] == [
            ("user", message, "complete"),
            ("assistant", "".join(TRICKY_TOKENS), "complete"),
        ]
    assert plain_messages(fake.requests()[-1]["body"]["messages"])[-1]["content"] == message


def test_tokens_are_sent_as_they_come_not_buffered(server, fake):
    fake.script({"n_tokens": 8, "ttft": 0.05, "token_delay": 0.2})  # about 1.45 s of generation
    with client_for(server) as client:
        response, events = post_stream(client, {"message": "Count slowly"})
    assert response.status_code == 200
    events = named(events)
    tokens = [event for event in events if event.event == "token"]
    start, done = events[0], events[-1]
    assert (start.event, done.event, len(tokens)) == ("start", "done", 8), events
    # Seven gaps of 0.2 s lie between the first and the last token: a buffered stream would show none.
    assert tokens[-1].arrived - tokens[0].arrived > 0.7
    assert done.arrived - tokens[0].arrived > 0.7


def test_turn_can_be_read_back_as_soon_as_done_arrives(server, fake):
    fake.script({"tokens": ["Stored ", "before ", "done"], "ttft": 0.1})
    with client_for(server) as client:
        seen: list[str] = []
        with client.stream("POST", "/agent/stream", json={"message": "Hi"}, headers=auth()) as response:
            assert response.status_code == 200
            for event in iter_events(response):
                if event.event == "token":
                    seen.append(event.data["text"])
                if event.event == "done":
                    done = event.data
                    # Still inside the stream, on another connection, with no retry.
                    audit = conversation(client, done["conversation_id"])
                    break
            else:
                pytest.fail("the stream ended without a done event")
    assert "".join(seen) == "Stored before done"
    user, assistant = audit["turns"]
    assert (user["role"], user["content"], user["status"]) == ("user", "Hi", "complete")
    assert (assistant["role"], assistant["status"], assistant["content"]) == ("assistant", "complete", "".join(seen))
    assert assistant["id"] == done["turn_id"]
    (row,) = audit["requests"]
    assert (row["route"], row["status"], row["turn_id"]) == ("stream", "ok", done["turn_id"])
    # The fake waits 0.1 s before the first token; the server measured it from the start of the call.
    assert isinstance(row["ttft_ms"], int) and row["ttft_ms"] >= 90
    assert row["latency_ms"] >= row["ttft_ms"]


# -- failures before the stream starts are plain HTTP errors -------------------------------------------------


def test_failures_before_the_stream_are_plain_http_errors(server, fake):
    with client_for(server) as client:
        foreign = client.post("/agent", json={"message": "Bob's"}, headers=auth(BOB))
        assert foreign.status_code == 200, foreign.text
        upstream_calls = len(fake.requests())
        json_headers = {**auth(), "Content-Type": "application/json"}
        cases = [
            ("no key", {}, {"json": {"message": "Hi"}}, 401, "authentication_error"),
            ("unknown key", auth("not-a-key-of-this-server"), {"json": {"message": "Hi"}}, 401,
             "authentication_error"),
            ("unknown conversation", auth(), {"json": {"message": "Hi", "conversation_id": "conv_nope"}}, 404,
             "not_found_error"),
            ("foreign conversation", auth(),
             {"json": {"message": "Hi", "conversation_id": foreign.json()["conversation_id"]}}, 404,
             "not_found_error"),
            ("no message", auth(), {"json": {"model": MODEL}}, 422, "invalid_request_error"),
            ("empty message", auth(), {"json": {"message": ""}}, 422, "invalid_request_error"),
            ("message not a string", auth(), {"json": {"message": 42}}, 422, "invalid_request_error"),
            ("unknown model", auth(), {"json": {"message": "Hi", "model": "gpt-4"}}, 422, "invalid_request_error"),
            ("max_tokens zero", auth(), {"json": {"message": "Hi", "max_tokens": 0}}, 422, "invalid_request_error"),
            ("not JSON", json_headers, {"content": b"{\"message\": "}, 400, "invalid_request_error"),
        ]
        problems = []
        for name, headers, body, status, error_type in cases:
            response = client.post("/agent/stream", headers=headers, **body)
            content_type = response.headers.get("content-type", "")
            try:
                envelope = response.json()
            except ValueError:
                envelope = None
            if response.status_code != status or not content_type.startswith("application/json"):
                problems.append(f"{name}: {response.status_code} {content_type} {response.text[:200]!r}")
            elif not (isinstance(envelope, dict) and envelope.get("error", {}).get("type") == error_type):
                problems.append(f"{name}: body {response.text[:200]!r}")
        assert not problems, "\n".join(problems)
    assert len(fake.requests()) == upstream_calls, "a refused request reached the upstream"


def test_conflict_while_a_reply_is_in_flight_is_a_plain_409(server, fake):
    with client_for(server) as client:
        first = client.post("/agent", json={"message": "First"}, headers=auth())
        assert first.status_code == 200, first.text
        conversation_id = first.json()["conversation_id"]
        fake.script({"n_tokens": 3, "ttft": 1.5, "token_delay": 0.1})  # room for two refused requests
        body = {"message": "Slow one", "conversation_id": conversation_id}
        with client.stream("POST", "/agent/stream", json=body, headers=auth()) as slow:
            events = iter_events(slow)
            assert next(e for e in events if e.event != COMMENT).event == "start"  # the reply holds the lock
            for route in ("/agent/stream", "/agent"):
                response = client.post(route, json={"message": "Me too", "conversation_id": conversation_id},
                                       headers=auth())
                assert response.status_code == 409, (route, response.status_code, response.text)
                assert response.headers["content-type"].startswith("application/json")
                assert_error_envelope(response.json(), "conflict_error")
            rest = named(list(events))
        assert rest[-1].event == "done", rest
        assert len(fake.requests()) == 2, "a refused request reached the upstream"
        # Once the reply is done the conversation takes messages again.
        after = client.post("/agent", json={"message": "Now", "conversation_id": conversation_id}, headers=auth())
        assert after.status_code == 200, after.text


# -- keep-alive ----------------------------------------------------------------------------------------------


def test_idle_stream_gets_ping_comments(server, fake):
    fake.script({"tokens": ["late", " reply"], "ttft": 4 * PING_SECONDS})
    with client_for(server) as client:
        response, events = post_stream(client, {"message": "Take your time"})
    assert response.status_code == 200
    names = [event.event for event in events]
    assert names[0] == "start" and names[-1] == "done", names
    first_token = names.index("token")
    pings = [event for event in events[:first_token] if event.event == COMMENT]
    assert pings, f"no comment before the first token: {names}"
    assert all(event.data == "ping" for event in pings)



def test_start_goes_out_while_the_model_is_still_thinking(server, fake):
    """``start`` is sent once the upstream has accepted the call, not held back until the first token."""
    fake.script({"tokens": ["eventually"], "ttft": 60})
    with client_for(server) as client:
        body = {"message": "Think hard", "on_disconnect": "cancel"}
        with client.stream("POST", "/agent/stream", json=body, headers=auth()) as response:
            assert response.status_code == 200
            events = iter_events(response)  # kept: a dropped generator would close the response
            first = next(event for event in events if event.event != COMMENT)
            assert first.event == "start"
            streams = fake.streams()
            open_streams = [record for record in streams if record["outcome"] == "open"]
            assert len(open_streams) == 1, streams
            assert open_streams[0]["tokens_sent"] == 0
    # Leaving, with on_disconnect "cancel", stops the upstream call (the fake sees the disconnect).
    fake.wait_for("disconnected")

# -- the client goes away ------------------------------------------------------------------------------------


def test_client_disconnect_stops_upstream_and_keeps_an_incomplete_turn(server, fake):
    with client_for(server) as client:
        first = client.post("/agent", json={"message": "First"}, headers=auth())
        assert first.status_code == 200, first.text
        conversation_id = first.json()["conversation_id"]
        fake.script({"n_tokens": 30, "token_delay": 0.2})
        received: list[str] = []
        # on_disconnect "cancel": Part 1's behaviour (the default, "continue", lets the reply finish: test_resume.py).
        body = {"message": "Tell me a long story", "conversation_id": conversation_id, "on_disconnect": "cancel"}
        with client.stream("POST", "/agent/stream", json=body, headers=auth()) as response:
            for event in iter_events(response):
                if event.event == "token":
                    received.append(event.data["text"])
                    if len(received) == 2:
                        break
        # Leaving the block closed the connection mid-stream.
        fake.wait_for(outcome="disconnected", count=1, timeout=10)
        assert fake.streams()[-1]["tokens_sent"] < 30

        audit = wait_for_conversation(client, conversation_id, lambda a: len(a["requests"]) == 2)
        partial = assistant_turns(audit)[-1]
        assert partial["status"] == "incomplete", audit["turns"]
        assert len(received) == 2 and partial["content"].startswith("".join(received)), (received, partial)
        row = audit["requests"][-1]
        assert (row["route"], row["status"]) == ("stream", "cancelled"), row

        fake.script({"text": "Fine."})
        after = client.post("/agent", json={"message": "Never mind", "conversation_id": conversation_id},
                            headers=auth())
        assert after.status_code == 200, after.text
    assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [
        {"role": "user", "content": "First"},
        {"role": "assistant", "content": first.json()["content"]},
        {"role": "user", "content": "Never mind"},
    ]


# -- upstream failures after the stream started are `error` events -------------------------------------------


def run_failing_stream(server, fake) -> tuple[list[SSEEvent], dict]:
    with client_for(server) as client:
        response, events = post_stream(client, {"message": "Go"})
        assert response.status_code == 200, response.text
        events = named(events)
        assert events[0].event == "start", events
        return events, conversation(client, events[0].data["conversation_id"])


def test_upstream_error_event_mid_stream(server, fake):
    fake.script({"tokens": ["Part", "ial", " never sent"], "error_after_tokens": 2, "error_type": "overloaded_error"})
    events, audit = run_failing_stream(server, fake)
    assert [event.event for event in events] == ["start", "token", "token", "error"], events
    assert_error_envelope(events[-1].data, "overloaded_error")
    (failed,) = assistant_turns(audit)
    assert (failed["status"], failed["content"]) == ("failed", "Partial")
    (row,) = audit["requests"]
    assert (row["status"], row["error_type"]) == ("error", "overloaded_error"), row
    # Text was already shown: the reply is not retried behind the client's back.
    assert len(fake.requests()) == 1


def test_upstream_connection_dropped_mid_stream(server, fake):
    fake.script({"tokens": ["Cut", " off", " here"], "drop_after_tokens": 2})
    events, audit = run_failing_stream(server, fake)
    assert [event.event for event in events] == ["start", "token", "token", "error"], events
    assert_error_envelope(events[-1].data, "upstream_error")
    (failed,) = assistant_turns(audit)
    assert (failed["status"], failed["content"]) == ("failed", "Cut off")
    (row,) = audit["requests"]
    assert (row["status"], row["error_type"]) == ("error", "upstream_error"), row


def test_persistent_overload_before_the_stream_is_an_error_event(server, fake):
    # The SDK makes 1 + AGENT_UPSTREAM_MAX_RETRIES (2, set above) attempts: all three are refused with 529.
    fake.script({"status": 529, "times": 3, "retry_after": "0.01"})
    events, audit = run_failing_stream(server, fake)
    # API.md: only validation, auth, 404 and 409 are plain HTTP errors; this one comes inside the 200 stream.
    assert [event.event for event in events] == ["start", "error"], events
    assert_error_envelope(events[-1].data, "overloaded_error")
    assert all(turn["status"] != "complete" for turn in assistant_turns(audit)), audit["turns"]
    (row,) = audit["requests"]  # the SDK's retries are one reply, one row
    assert (row["status"], row["error_type"]) == ("error", "overloaded_error"), row
    assert row["attempts"] == len(fake.requests()) == 3


def test_overload_before_any_token_is_retried_transparently(server, fake):
    fake.script(
        {"tokens": ["never"], "error_after_tokens": 0, "error_type": "overloaded_error"},
        {"tokens": ["Second ", "time ", "lucky"]},
    )
    with client_for(server) as client:
        response, events = post_stream(client, {"message": "Try"})
        assert response.status_code == 200
        events = named(events)
        assert [event.event for event in events] == ["start", "token", "token", "token", "done"], events
        assert "".join(texts(events)) == "Second time lucky"
        audit = conversation(client, events[0].data["conversation_id"])
    (row,) = audit["requests"]
    assert row["status"] == "ok" and row["attempts"] >= 2, row
    assert assistant_turns(audit)[0]["content"] == "Second time lucky"
    assert len(fake.requests()) == 2
