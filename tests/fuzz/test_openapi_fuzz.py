"""Fuzzing: schemathesis drives every operation of ``/openapi.json`` against the real app, and hypothesis
throws random frames at a live WebSocket session.

Both are bounded (examples per operation, one module-scoped server) so they also run in the main suite;
CI runs them on their own with ``-m fuzz``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi as schemathesis_asgi
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from agent_server.app import AgentServerApp
from agent_server.db.migrations import upgrade_to_head
from agent_server.http.openapi import build_spec
from tests.conftest import auth, make_settings
from tests.e2e.conftest import ServerProcess, server_env

pytestmark = pytest.mark.fuzz

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
# Collected from the description itself, so a new route is fuzzed without touching this file.
OPERATIONS = [(method.upper(), path) for path, item in build_spec()["paths"].items() for method in item]


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory, fake_upstream) -> Iterator[AgentServerApp]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'agent.db'}"
    upgrade_to_head(url)
    fake_upstream.reset()
    yield AgentServerApp(make_settings(url, fake_upstream))
    schemathesis_asgi.shutdown_lifespans()  # schemathesis started the app's lifespan; end it with the module


@pytest.fixture(scope="module")
def api_schema(fuzzed_app):
    """What the running app serves at /openapi.json (schemathesis starts the app's lifespan to fetch it)."""
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


def assert_envelope(response) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("type"), str) and isinstance(error.get("message"), str), body


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_operation_keeps_its_contract(api_schema, method, path):
    operation = api_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    seen: set[int] = set()

    @given(case=cases)
    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def exercise(case):
        response = case.call_and_validate(headers=auth(), checks=CHECKS)
        seen.add(response.status_code)
        if response.status_code >= 300:
            assert_envelope(response)

    exercise()
    assert seen, "no request was made"


# -- WebSocket frames, against a live server --------------------------------------------------------------

WS_MAX_BYTES = 200_000  # AGENT_MAX_BODY_BYTES of the fuzzed server: room for 100k levels of nesting

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
# Objects built from the protocol's own keys come close to valid frames, so validation gets exercised too.
near_frames = st.dictionaries(
    st.sampled_from(["type", "message", "model", "max_tokens", "conversation_id"]),
    json_values | st.sampled_from(["message", "cancel", "hi", "claude-sonnet-5-5"]),
    max_size=4,
)
frames = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=3000),
    json_values.map(json.dumps),
    json_values.map(lambda value: json.dumps(value).encode()),  # JSON in a binary frame
    near_frames.map(json.dumps),
)


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory, fake_upstream) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("ws-fuzz")
    env = server_env(f"sqlite+aiosqlite:///{workdir / 'agent.db'}", fake_upstream,
                     AGENT_MAX_BODY_BYTES=str(WS_MAX_BYTES))
    server = ServerProcess(env=env, workdir=workdir)
    try:
        yield server.start()
    finally:
        server.stop()


def classify(frame: str | bytes) -> str:
    """What the protocol promises for ``frame``: "too big" (close 1009), "error" (an error frame), "maybe
    a reply" (a message frame that may be valid), or "quiet" (cancel and keep-alives, which get no frame)."""
    size = len(frame.encode() if isinstance(frame, str) else frame)
    if size > WS_MAX_BYTES:
        return "too big"
    try:
        data = json.loads(frame.decode("utf-8") if isinstance(frame, bytes) else frame)  # UTF-8 only
    except (ValueError, RecursionError):
        return "error"
    if not isinstance(data, dict):
        return "error"
    kind = data.get("type", "message")
    if kind in ("cancel", "ping", "pong"):
        return "quiet"
    return "maybe a reply" if kind == "message" and "message" in data else "error"


def receive_json(ws) -> dict:
    while True:
        frame = json.loads(ws.recv(timeout=10))
        if frame["type"] != "ping":
            return frame


def assert_error_frame(frame: dict) -> None:
    assert frame["type"] == "error", frame
    assert isinstance(frame["error"]["type"], str) and isinstance(frame["error"]["message"], str), frame


def exercise_frame(server: ServerProcess, frame: str | bytes) -> None:
    expected = classify(frame)
    event(expected)  # shown by --hypothesis-show-statistics
    with ws_connect(server.ws_url, additional_headers=auth(), max_size=None, open_timeout=10) as ws:
        assert receive_json(ws)["type"] == "session"
        ws.send(frame)
        if expected == "too big":
            with pytest.raises(ConnectionClosed) as closed:
                receive_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009, closed.value
            return
        if expected != "quiet":
            first = receive_json(ws)
            if expected == "maybe a reply" and first["type"] == "start":
                while first["type"] not in ("done", "error"):
                    first = receive_json(ws)
                if first["type"] == "done":
                    first = None
            if first is not None:
                assert_error_frame(first)
        # The session is still open and still reading frames.
        ws.send("{")
        assert_error_frame(receive_json(ws))


@given(frame=frames)
@example(frame=b"\xff\xfe\xfd")
@example(frame="[" * 100_000)
@example(frame="{\"a\":" * 100_000)
@example(frame=json.dumps({"message": "hi", "max_tokens": 1}).replace("1", "[" * 50_000, 1))
@example(frame="[" * 500 + "]" * 500)
@example(frame=json.dumps({"type": "message", "message": ["x"] * 10}))
@example(frame="x" * WS_MAX_BYTES)
@example(frame="x" * (WS_MAX_BYTES - 1))
@example(frame="x" * (WS_MAX_BYTES + 1))
@example(frame=b"x" * (WS_MAX_BYTES + 1))
@example(frame="\u00e9" * (WS_MAX_BYTES // 2 + 1))  # under the limit in characters, over it in bytes
@example(frame=json.dumps({"type": "message", "message": "x" * WS_MAX_BYTES}))
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_websocket_survives_hostile_frames(ws_server, frame):
    exercise_frame(ws_server, frame)


def test_a_burst_of_bad_frames_spends_the_sessions_budget_and_closes_it_with_1008(ws_server):
    """Malformed frames cost the server work: a session gets a budget of them (a burst, then about one a
    second), each answered with an error frame, and past it the session is closed with 1008. Others go on."""
    with ws_connect(ws_server.ws_url, additional_headers=auth(), max_size=None, open_timeout=10) as ws:
        assert receive_json(ws)["type"] == "session"
        for n in range(200):
            try:
                ws.send(f"bad frame {n}")
            except ConnectionClosed:
                break
        answered = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                assert_error_frame(receive_json(ws))
                answered += 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, closed.value
        assert 20 <= answered < 60, answered
    with ws_connect(ws_server.ws_url, additional_headers=auth(), max_size=None, open_timeout=10) as other:
        assert receive_json(other)["type"] == "session"
        other.send("{")
        assert_error_frame(receive_json(other))


def test_the_server_is_healthy_after_the_websocket_fuzz(ws_server):
    """Runs after the fuzz in this module (pytest keeps file order): nothing crashed, a normal message works."""
    assert ws_server.proc.poll() is None, ws_server.log()[-3000:]
    assert httpx.get(f"{ws_server.base_url}/healthz", timeout=5).status_code == 200
    with ws_connect(ws_server.ws_url, additional_headers=auth(), open_timeout=10) as ws:
        assert receive_json(ws)["type"] == "session"
        ws.send(json.dumps({"type": "message", "message": "still alive?"}))
        kinds = []
        while not kinds or kinds[-1] not in ("done", "error"):
            kinds.append(receive_json(ws)["type"])
        assert kinds[0] == "start" and kinds[-1] == "done", kinds
    problems = [line for line in ws_server.log().splitlines() if '"level": "error"' in line or "Traceback" in line]
    assert not problems, "\n".join(problems[:20])
