"""WebSocket /agent/ws end to end: `agent-server serve` in a subprocess, the real `websockets` client,
the fake upstream for every fault, and the audit (`GET /conversations/{id}`) read over HTTP.

Most tests share one server per module (a server start costs seconds); each test makes its own
conversations, so they do not see each other's data. Tests that need other settings, signals or restarts
start their own with ``start_server``.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ALICE, BOB, auth, plain_messages
from tests.e2e.conftest import ServerProcess, server_env

pytestmark = pytest.mark.e2e

MAX_FRAME_BYTES = 4096
PING_SECONDS = 0.3
APP_ORIGIN = "https://app.example"
UPSTREAM_RETRIES = 2
DONE_FIELDS = {"conversation_id", "turn_id", "model", "stop_reason", "input_tokens", "output_tokens", "usage",
               "estimated_cost_usd",
               "reply_id", "status", "steps", "context", "seq"}  # API.md Part 2: additive
END_FRAMES = {"done", "error", "cancelled"}
WAIT = 10  # seconds: an upper bound on any single wait, never a synchronisation delay


@pytest.fixture(scope="module")
def shared_server(fake_upstream, tmp_path_factory) -> Iterator[ServerProcess]:
    """One server for the tests that need no settings of their own.

    Small frame limit and ping interval so those tests run fast; an allowed origin for the Origin test
    (clients that send no Origin, like every other test here, are unaffected)."""
    workdir: Path = tmp_path_factory.mktemp("ws-server")
    env = server_env(
        f"sqlite+aiosqlite:///{workdir / 'data' / 'agent.db'}",
        fake_upstream,
        AGENT_MAX_BODY_BYTES=str(MAX_FRAME_BYTES),
        AGENT_WS_PING_SECONDS=str(PING_SECONDS),
        AGENT_CORS_ORIGINS=APP_ORIGIN,
        AGENT_UPSTREAM_MAX_RETRIES=str(UPSTREAM_RETRIES),
    )
    server = ServerProcess(env=env, workdir=workdir).start()
    yield server
    server.stop()


@pytest.fixture
def server(shared_server, fake) -> ServerProcess:
    """The module's server, with the fake upstream reset for this test."""
    return shared_server


# -- helpers ---------------------------------------------------------------------------------------------


def ws_connect(server: ServerProcess, *, key: str | None = ALICE, query: dict[str, str] | None = None,
               **options) -> ClientConnection:
    url = server.ws_url
    if query:
        url += "?" + urlencode(query)
    headers = {"Authorization": f"Bearer {key}"} if key is not None else None
    return connect(url, additional_headers=headers, proxy=None, open_timeout=WAIT, close_timeout=2, **options)


@contextmanager
def session(server: ServerProcess, **kwargs) -> Iterator[tuple[ClientConnection, dict]]:
    """An open WebSocket and its first frame (the `session` frame)."""
    with ws_connect(server, **kwargs) as ws:
        first = recv(ws)
        assert first["type"] == "session", first
        yield ws, first


# Frames of API.md Part 2 that a Part 1 client ignores (this file checks Part 1's session; test_agent_loop.py the rest).
PART_2 = {"step", "thinking", "tool_use", "tool_result", "requires_action"}


def recv(ws: ClientConnection, *, pings: bool = False) -> dict:
    """The next frame a Part 1 client reads; keep-alive pings are skipped unless asked for (within one overall
    deadline, so that pings cannot keep a test waiting for ever)."""
    deadline = time.monotonic() + WAIT
    while True:
        frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.001)))
        if frame.get("type") in PART_2:
            continue
        if pings or frame.get("type") != "ping":
            return frame


def send(ws: ClientConnection, frame: object) -> None:
    ws.send(frame if isinstance(frame, str) else json.dumps(frame))


def until_end(ws: ClientConnection) -> list[dict]:
    """Frames up to and including the one that ends a reply (done, error or cancelled)."""
    frames = []
    while True:
        frames.append(recv(ws))
        if frames[-1]["type"] in END_FRAMES:
            return frames


def chat(ws: ClientConnection, message: str) -> list[dict]:
    send(ws, {"type": "message", "message": message})
    return until_end(ws)


def text_of(frames: list[dict]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "token")


def audit(server: ServerProcess, conversation_id: str) -> dict:
    """Alice's view of a conversation: GET /conversations/{id}."""
    response = httpx.get(f"{server.base_url}/conversations/{conversation_id}", headers=auth(ALICE), timeout=WAIT)
    assert response.status_code == 200, response.text
    return response.json()


def close_code(ws: ClientConnection) -> int | None:
    """The code of the close that must come next (a keep-alive ping aside): no other frame before it."""
    with pytest.raises(ConnectionClosed) as closed:
        frame = recv(ws)
        pytest.fail(f"expected the server to close, got {frame}")
    return closed.value.rcvd.code if closed.value.rcvd else None


def upstream_messages(fake) -> list[dict]:
    """The messages of the last request the fake upstream received."""
    return plain_messages(fake.requests()[-1]["body"]["messages"])


def slow_tokens(n: int) -> list[str]:
    return [f"w{i} " for i in range(n)]


# -- a session -------------------------------------------------------------------------------------------


def test_new_session_streams_replies_and_keeps_the_conversation(server, fake):
    with session(server) as (ws, first):
        # Part 2 adds turns_before (paging), reply (a reply running on resume) and pending (actions awaited).
        assert first == {"type": "session", "conversation_id": None, "turns": [], "turns_before": None,
                         "reply": None, "pending": None}

        frames = chat(ws, "Hello there")
        start, *tokens, done = frames
        assert start["type"] == "start"
        assert [f["type"] for f in tokens] == ["token"] * len(tokens) and tokens
        assert text_of(frames) == "Echo: Hello there"
        assert done["type"] == "done"
        assert set(done) - {"type"} == DONE_FIELDS
        conversation_id = start["conversation_id"]
        assert done["conversation_id"] == conversation_id

        second = chat(ws, "And again")
        assert (second[0]["type"], second[0]["conversation_id"]) == ("start", conversation_id)
        assert second[-1]["type"] == "done" and second[-1]["conversation_id"] == conversation_id
        assert text_of(second) == "Echo: And again"

    assert upstream_messages(fake) == [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Echo: Hello there"},
        {"role": "user", "content": "And again"},
    ]
    stored = audit(server, conversation_id)
    assert [(t["role"], t["content"], t["status"]) for t in stored["turns"]] == [
        ("user", "Hello there", "complete"), ("assistant", "Echo: Hello there", "complete"),
        ("user", "And again", "complete"), ("assistant", "Echo: And again", "complete"),
    ]
    # The done frame reports what was recorded for its turn.
    row = next(r for r in stored["requests"] if r["turn_id"] == done["turn_id"])
    assert (row["route"], row["status"], row["model"]) == ("ws", "ok", done["model"])
    assert (row["input_tokens"], row["output_tokens"]) == (done["input_tokens"], done["output_tokens"])
    assert done["usage"]["input_tokens"] == done["input_tokens"] > 0
    assert done["usage"]["output_tokens"] == done["output_tokens"] > 0
    assert row["cost_usd"] == done["estimated_cost_usd"]


def test_message_frame_without_type_is_accepted(server):
    with session(server) as (ws, _):
        send(ws, {"message": "No type here"})
        frames = until_end(ws)
    assert frames[0]["type"] == "start"
    assert frames[-1]["type"] == "done"
    assert text_of(frames) == "Echo: No type here"


# -- auth ------------------------------------------------------------------------------------------------


def test_token_in_query_string_works_and_is_never_logged(server):
    with session(server, key=None, query={"token": ALICE}) as (ws, _):
        frames = chat(ws, "Via query")
    assert frames[-1]["type"] == "done"
    assert text_of(frames) == "Echo: Via query"

    wrong = "query-token-that-is-wrong-0123"
    with ws_connect(server, key=None, query={"token": wrong}) as ws:
        assert close_code(ws) == 4401

    log = server.log()
    assert "/agent/ws" in log  # the handshakes were logged, so the check below looks at them
    assert ALICE not in log
    assert wrong not in log


@pytest.mark.parametrize("key", [None, "not-a-key-of-this-server"], ids=["missing", "wrong"])
def test_bad_key_is_closed_with_4401(server, fake, key):
    with ws_connect(server, key=key) as ws:
        assert close_code(ws) == 4401
    assert fake.requests() == []


# -- resume ----------------------------------------------------------------------------------------------


def test_resume_sends_stored_turns_and_continues(server, fake):
    with session(server) as (ws, _):
        first = chat(ws, "Remember me")
    conversation_id = first[0]["conversation_id"]

    with session(server, query={"conversation_id": conversation_id}) as (ws, resumed):
        assert resumed["conversation_id"] == conversation_id
        assert resumed["turns"] == audit(server, conversation_id)["turns"]
        assert [(t["role"], t["content"]) for t in resumed["turns"]] == [
            ("user", "Remember me"), ("assistant", "Echo: Remember me")]
        frames = chat(ws, "Still there?")
    assert frames[0]["conversation_id"] == conversation_id
    assert frames[-1]["type"] == "done"
    assert upstream_messages(fake) == [
        {"role": "user", "content": "Remember me"},
        {"role": "assistant", "content": "Echo: Remember me"},
        {"role": "user", "content": "Still there?"},
    ]


def test_resume_unknown_conversation_is_an_error_then_4404(server):
    with ws_connect(server, query={"conversation_id": "conv_doesnotexist"}) as ws:
        frame = recv(ws)
        assert frame["type"] == "error"
        assert frame["error"]["type"] == "not_found_error"
        assert close_code(ws) == 4404


def test_resume_someone_elses_conversation_looks_unknown(server, fake):
    with session(server, key=ALICE) as (ws, _):
        conversation_id = chat(ws, "Private")[0]["conversation_id"]
    with ws_connect(server, key=BOB, query={"conversation_id": conversation_id}) as ws:
        frame = recv(ws)
        assert frame["type"] == "error"
        assert frame["error"]["type"] == "not_found_error"
        assert "Private" not in json.dumps(frame)
        assert close_code(ws) == 4404
    assert len(fake.requests()) == 1


# -- malformed frames ------------------------------------------------------------------------------------


MALFORMED = {
    "not JSON": "{this is not json",
    "JSON array": "[1, 2, 3]",
    "unknown type": {"type": "shout", "message": "hi"},
    "missing message": {"type": "message"},
    "message not a string": {"type": "message", "message": 42},
    "max_tokens not an int": {"message": "hi", "max_tokens": "ten"},
    "unknown model": {"message": "hi", "model": "claude-no-such-model"},
}


def test_malformed_frames_get_an_error_and_the_session_stays_open(server, fake):
    with session(server) as (ws, _):
        for name, frame in MALFORMED.items():
            send(ws, frame)
            reply = recv(ws)
            assert reply["type"] == "error", name
            assert reply["error"]["type"] == "invalid_request_error", (name, reply)
            assert reply["error"]["message"], name
        frames = chat(ws, "Valid at last")
    assert frames[-1]["type"] == "done"
    assert text_of(frames) == "Echo: Valid at last"
    assert len(fake.requests()) == 1  # no malformed frame reached the upstream


def test_message_while_replying_is_a_conflict_and_the_reply_finishes(server, fake):
    tokens = slow_tokens(10)
    fake.script({"tokens": tokens, "token_delay": 0.1})
    with session(server) as (ws, _):
        send(ws, {"message": "First"})
        assert recv(ws)["type"] == "start"
        send(ws, {"message": "Too soon"})
        # The conflict frame comes among the first reply's tokens; read on until that reply ends.
        frames = until_end(ws)
        if frames[-1]["type"] == "error" and frames[-1]["error"]["type"] == "conflict_error":
            frames += until_end(ws)
    errors = [f["error"]["type"] for f in frames if f["type"] == "error"]
    assert errors == ["conflict_error"]
    assert frames[-1]["type"] == "done"
    assert text_of(frames) == "".join(tokens)
    assert len(fake.requests()) == 1


# -- cancel and disconnect -------------------------------------------------------------------------------


def assert_stopped_turn(stored: dict, turn_id: str, seen: str, full: str) -> None:
    """The interrupted reply is kept as `incomplete` with (at least) what the client saw, and its
    request row is `cancelled`."""
    turn = next(t for t in stored["turns"] if t["id"] == turn_id)
    assert turn["role"] == "assistant" and turn["status"] == "incomplete"
    assert turn["content"].startswith(seen) and full.startswith(turn["content"])
    assert len(turn["content"]) < len(full)
    row = next(r for r in stored["requests"] if r["turn_id"] == turn_id)
    assert row["status"] == "cancelled"


def test_cancel_mid_reply(server, fake):
    tokens = slow_tokens(20)
    fake.script({"tokens": tokens, "token_delay": 0.1})
    with session(server) as (ws, _):
        send(ws, {"message": "Talk slowly"})
        start = recv(ws)
        seen = [recv(ws), recv(ws)]
        assert [f["type"] for f in seen] == ["token", "token"]
        send(ws, {"type": "cancel"})
        rest = until_end(ws)
        cancelled = rest[-1]
        assert cancelled["type"] == "cancelled"
        assert {"type", "conversation_id", "turn_id"} <= set(cancelled)  # Part 2 adds reply_id and seq
        assert cancelled["conversation_id"] == start["conversation_id"]
        fake.wait_for(outcome="disconnected", timeout=WAIT)  # the upstream call was stopped

        received = text_of(seen + rest)
        assert_stopped_turn(audit(server, start["conversation_id"]), cancelled["turn_id"], received,
                            "".join(tokens))

        after = chat(ws, "Next one")
    assert after[-1]["type"] == "done"
    assert after[0]["conversation_id"] == start["conversation_id"]
    assert text_of(after) == "Echo: Next one"
    # The cancelled exchange is not history.
    assert upstream_messages(fake) == [{"role": "user", "content": "Next one"}]


def test_client_disconnect_mid_reply_keeps_the_partial_turn(server, fake):
    tokens = slow_tokens(20)
    fake.script({"tokens": tokens, "token_delay": 0.1})
    with session(server) as (ws, _):
        # on_disconnect "cancel" keeps Part 1's behaviour (the default lets the reply finish: test_resume.py).
        send(ws, {"message": "Going away", "on_disconnect": "cancel"})
        start = recv(ws)
        seen = [recv(ws), recv(ws)]
    fake.wait_for(outcome="disconnected", timeout=WAIT)

    # The server stores the partial turn after it has closed the upstream stream, so the fake's
    # `disconnected` can be seen a moment before the write commits; no event of the server's tells a
    # departed client when that happened, so read the audit again until it shows the turn (at most 5 s).
    deadline = time.monotonic() + 5
    while True:
        stored = audit(server, start["conversation_id"])
        assistant = [t for t in stored["turns"] if t["role"] == "assistant"]
        if assistant or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(assistant) == 1, stored
    assert_stopped_turn(stored, assistant[0]["id"], text_of(seen), "".join(tokens))


# -- limits and keep-alive -------------------------------------------------------------------------------


def test_frame_over_the_size_limit_closes_with_1009(server, fake):
    with session(server) as (ws, _):
        send(ws, {"message": "x" * (MAX_FRAME_BYTES + 1)})
        assert close_code(ws) == 1009
    assert fake.requests() == []


def test_idle_session_gets_pings(server):
    with session(server) as (ws, _):
        assert recv(ws, pings=True) == {"type": "ping"}
        assert recv(ws, pings=True) == {"type": "ping"}
        frames = chat(ws, "Still alive")  # pings do not disturb the session
    assert frames[-1]["type"] == "done"


# -- upstream failures -----------------------------------------------------------------------------------


def test_upstream_error_mid_reply_stores_the_partial_turn_as_failed(server, fake):
    tokens = slow_tokens(6)
    fake.script({"tokens": tokens, "error_after_tokens": 2})
    with session(server) as (ws, _):
        frames = chat(ws, "Break please")
        error = frames[-1]
        assert error["type"] == "error"
        assert error["error"]["type"] == "overloaded_error"
        after = chat(ws, "Better now?")
    assert after[-1]["type"] == "done"

    stored = audit(server, frames[0]["conversation_id"])
    failed = [t for t in stored["turns"] if t["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["role"] == "assistant"
    assert failed[0]["content"] == text_of(frames) == "".join(tokens[:2])
    row = next(r for r in stored["requests"] if r["turn_id"] == failed[0]["id"])
    assert (row["status"], row["error_type"]) == ("error", "overloaded_error")
    assert upstream_messages(fake) == [{"role": "user", "content": "Better now?"}]


def test_persistent_529_is_an_overloaded_error_frame(server, fake):
    # Every attempt the SDK makes is refused; a short Retry-After keeps its back-off brief.
    fake.script({"status": 529, "retry_after": "0.05", "times": UPSTREAM_RETRIES + 1})
    with session(server) as (ws, _):
        frames = chat(ws, "Anyone there?")
    assert [f["type"] for f in frames] == ["start", "error"]
    assert frames[-1]["error"]["type"] == "overloaded_error"
    assert len(fake.requests()) == UPSTREAM_RETRIES + 1
    rows = audit(server, frames[0]["conversation_id"])["requests"]
    assert [(r["status"], r["error_type"]) for r in rows] == [("error", "overloaded_error")]


def test_rate_limit_is_an_error_frame_with_retry_after(start_server, e2e_database_url, fake):
    server = start_server(server_env(e2e_database_url, fake, AGENT_RATE_LIMIT="2/minute"))
    with session(server) as (ws, _):
        assert chat(ws, "one")[-1]["type"] == "done"
        assert chat(ws, "two")[-1]["type"] == "done"
        send(ws, {"message": "three"})
        limited = recv(ws)
        assert limited["type"] == "error"
        assert limited["error"]["type"] == "rate_limit_error"
        retry_after = limited["error"]["retry_after"]
        assert isinstance(retry_after, int) and retry_after >= 1
        # Still open: the next frame is answered, not dropped.
        send(ws, "not json")
        assert recv(ws)["error"]["type"] == "invalid_request_error"
    assert len(fake.requests()) == 2
    # The limit is per client key.
    with session(server, key=BOB) as (ws, _):
        assert chat(ws, "bob's turn")[-1]["type"] == "done"


# -- origin ----------------------------------------------------------------------------------------------


def test_origin_must_be_allowed(server):
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, origin="https://evil.example")
    assert refused.value.response.status_code == 403

    with session(server, origin=APP_ORIGIN) as (_, first):
        assert first["conversation_id"] is None
    with session(server) as (_, first):  # no Origin: not a browser
        assert first["conversation_id"] is None


# -- durable history across processes --------------------------------------------------------------------


def test_history_survives_sigkill_and_is_shared_by_workers(start_server, e2e_database_url, fake):
    env = server_env(e2e_database_url, fake)
    first = start_server(env)
    with session(first) as (ws, _):
        conversation_id = chat(ws, "Before the crash")[0]["conversation_id"]
    first.kill()

    # A new server, with two worker processes, on the same database.
    second = start_server(env, args=("--workers", "2"))
    expected = [("user", "Before the crash"), ("assistant", "Echo: Before the crash")]
    # Each session on a new connection: whichever worker accepts it must see the whole history. (Which
    # worker served which is not observable from outside; with several connections both normally do.)
    for n in range(4):
        with session(second, query={"conversation_id": conversation_id}) as (ws, resumed):
            assert [(t["role"], t["content"]) for t in resumed["turns"]] == expected
            frames = chat(ws, f"Continued {n}")
        assert frames[0]["conversation_id"] == conversation_id
        assert text_of(frames) == f"Echo: Continued {n}"
        history = [(m["role"], m["content"]) for m in upstream_messages(fake)]
        assert history == [*expected, ("user", f"Continued {n}")]
        expected += [("user", f"Continued {n}"), ("assistant", f"Echo: Continued {n}")]

    stored = audit(second, conversation_id)
    assert [(t["role"], t["content"]) for t in stored["turns"]] == expected
    assert all(t["status"] == "complete" for t in stored["turns"])
    assert [t["seq"] for t in stored["turns"]] == list(range(1, len(expected) + 1))


# -- graceful shutdown -----------------------------------------------------------------------------------


def test_sigterm_drains_replies(start_server, e2e_database_url, fake):
    """A reply longer than the grace period ends with a `shutdown` frame and is stored as `incomplete`;
    on the restarted server, a reply that fits in the grace period still ends with `done`."""
    env = server_env(e2e_database_url, fake, AGENT_SHUTDOWN_GRACE_SECONDS="1")
    server = start_server(env)
    tokens = slow_tokens(20)
    fake.script({"tokens": tokens, "token_delay": 0.5})
    with session(server) as (ws, _):
        send(ws, {"message": "Take your time"})
        start = recv(ws)
        frames = [recv(ws)]
        assert frames[0]["type"] == "token"
        server.signal(signal.SIGTERM)
        frames += until_end(ws)
        assert frames[-1]["type"] == "error"
        assert frames[-1]["error"]["type"] == "shutdown"
        close_code(ws)  # the shutdown frame is the last one before the close
    assert server.wait(timeout=WAIT) == 0

    # The restarted server (same database) gets a grace period that the next reply fits in.
    restarted = start_server({**env, "AGENT_SHUTDOWN_GRACE_SECONDS": "5"})
    stored = audit(restarted, start["conversation_id"])
    assistant = [t for t in stored["turns"] if t["role"] == "assistant"]
    assert len(assistant) == 1
    assert assistant[0]["status"] == "incomplete"
    assert assistant[0]["content"].startswith(text_of(frames))
    assert "".join(tokens).startswith(assistant[0]["content"])

    short = slow_tokens(4)
    fake.script({"tokens": short, "token_delay": 0.2})
    with session(restarted) as (ws, _):
        send(ws, {"message": "Quick one"})
        assert recv(ws)["type"] == "start"
        assert recv(ws)["type"] == "token"
        restarted.signal(signal.SIGTERM)
        frames = until_end(ws)
        assert frames[-1]["type"] == "done"
    assert text_of(frames) == "".join(short[1:])
    assert restarted.wait(timeout=WAIT) == 0
