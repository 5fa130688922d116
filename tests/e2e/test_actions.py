"""Actions end to end (API.md "Actions: approvals and client tools"): `agent-server serve` in a subprocess, the
fake upstream, and each transport a client uses — JSON, Server-Sent Events, WebSocket frames.

The tools are the repository's ``tools.example.toml``: ``calculator`` (plain), ``save_note`` (needs approval),
``get_timezone`` (a client tool). One server per database for the module; the restart test has its own. Every
request the fake received must obey the API's tool_use/tool_result rules.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ALICE, BOB, auth, selected_backends
from tests.e2e.conftest import ServerProcess, server_env
from tests.e2e.test_resume import start_on_a_free_port

pytestmark = pytest.mark.e2e

TOOLS_FILE = Path(__file__).resolve().parents[2] / "tools.example.toml"
WAIT = 15.0
END = {"done", "error", "cancelled"}
NEW_MESSAGE_INSTEAD = "not run: the user sent a new message instead"
_NAMES = itertools.count(1)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", selected_backends(metafunc.config), indirect=True, scope="module")


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def database_for(backend: str, workdir: Path, request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(URL, PostgreSQL database name to drop afterwards or None) of an empty database of ``backend``."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{workdir / 'data' / 'agent.db'}", None
    name = f"actions_{os.getpid()}_{next(_NAMES)}"
    return request.getfixturevalue("postgres_server").create_database(name), name


@pytest.fixture(scope="module")
def shared_server(backend, fake_upstream, tmp_path_factory, request) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp(f"actions-{backend}")
    url, database = database_for(backend, workdir, request)
    server = start_on_a_free_port(server_env(url, fake_upstream, AGENT_TOOLS_FILE=str(TOOLS_FILE)), workdir)
    try:
        yield server
    finally:
        server.stop()
        if database is not None:
            request.getfixturevalue("postgres_server").drop_database(database)


@pytest.fixture
def server(shared_server, fake) -> Iterator[ServerProcess]:
    yield shared_server
    assert fake.violations() == []


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=WAIT, headers=auth()) as client:
        yield client


# -- helpers ---------------------------------------------------------------------------------------------


def note(text: str) -> dict:
    return {"name": "save_note", "input": {"text": text}}


def timezone() -> dict:
    return {"name": "get_timezone", "input": {}}


def sums(expression: str) -> dict:
    return {"name": "calculator", "input": {"expression": expression}}


def asks(*calls: dict) -> dict:
    """The model's step: a little text, then ``calls``."""
    return {"text": "One moment.", "tool_calls": list(calls)}


def sse(client: httpx.Client, body: dict) -> list[tuple[int, str, dict]]:
    """POST /agent/stream: every ``(id, event, data)``, comments skipped."""
    with client.stream("POST", "/agent/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        text = response.read().decode()
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    assert [seq for seq, _, _ in out] == list(range(1, len(out) + 1))
    return out


def names(events: list) -> list[str]:
    return [event[1] if isinstance(event, tuple) else event["type"] for event in events]


def ws_connect(server: ServerProcess, key: str = ALICE, **query: str) -> ClientConnection:
    url = server.ws_url + (f"?{urlencode(query)}" if query else "")
    return connect(url, additional_headers={"Authorization": f"Bearer {key}"}, proxy=None, open_timeout=WAIT,
                   close_timeout=2)


@contextmanager
def session(server: ServerProcess, key: str = ALICE, **query: str) -> Iterator[tuple[ClientConnection, dict]]:
    with ws_connect(server, key, **query) as ws:
        first = recv(ws)
        assert first["type"] == "session", first
        yield ws, first


def recv(ws: ClientConnection) -> dict:
    deadline = time.monotonic() + WAIT
    while True:
        frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.001)))
        if frame.get("type") != "ping":
            return frame


def send(ws: ClientConnection, frame: dict) -> None:
    ws.send(json.dumps(frame))


def until_end(ws: ClientConnection) -> list[dict]:
    frames = [recv(ws)]
    while frames[-1]["type"] not in END:
        frames.append(recv(ws))
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # every frame of a reply carries its number
    return frames


def expect_error(ws: ClientConnection, *words: str) -> dict:
    frame = recv(ws)
    assert frame["type"] == "error" and "seq" not in frame, frame
    assert frame["error"]["type"] == "invalid_request_error", frame
    for word in words:
        assert word in frame["error"]["message"], frame
    return frame


def last_messages(fake) -> list[dict]:
    return fake.requests()[-1]["body"]["messages"]


def results_sent(fake) -> dict[str, dict]:
    """The tool_result blocks of the last request's last user message(s), by tool_use_id."""
    out = {}
    for message in last_messages(fake)[2:]:
        for block in message["content"]:
            if block.get("type") == "tool_result":
                out[block["tool_use_id"]] = block
    return out


def text(block: dict) -> str:
    content = block["content"]
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


def audit(client: httpx.Client, conversation_id: str) -> dict:
    response = client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()


# -- SSE -------------------------------------------------------------------------------------------------


def test_sse_question_and_approval(http, fake) -> None:
    fake.script(asks(note("from the stream")))
    first = sse(http, {"message": "Note this down"})
    assert names(first) == ["start", "token", "tool_use", "step", "requires_action", "done"]
    tool_use, pending = first[2][2], first[4][2]["pending"]
    assert (tool_use["name"], tool_use["input"]) == ("save_note", {"text": "from the stream"})
    assert pending == [{"tool_use_id": tool_use["id"], "name": "save_note", "input": {"text": "from the stream"},
                        "kind": "approval"}]
    done = first[-1][2]
    assert (done["status"], done["pending"]) == ("requires_action", pending)
    conversation_id = done["conversation_id"]

    second = sse(http, {"conversation_id": conversation_id,
                        "approvals": [{"tool_use_id": tool_use["id"], "approved": True}]})
    assert names(second)[:2] == ["start", "tool_result"] and names(second)[-2:] == ["step", "done"]
    result = second[1][2]
    assert (result["tool_use_id"], result["is_error"]) == (tool_use["id"], False)
    assert result["content"].startswith("saved note ")
    assert second[-1][2]["status"] == "complete" and second[0][2]["reply_id"] != done["reply_id"]
    assert text(results_sent(fake)[tool_use["id"]]) == result["content"]


def test_sse_denial_with_a_reason_and_a_client_result(http, fake) -> None:
    fake.script(asks(note("secret"), timezone()))
    first = sse(http, {"message": "Note and locate"})
    approval, client_tool = (p["tool_use_id"] for p in first[-1][2]["pending"])
    second = sse(http, {"conversation_id": first[0][2]["conversation_id"],
                        "approvals": [{"tool_use_id": approval, "approved": False, "reason": "too private"}],
                        "tool_results": [{"tool_use_id": client_tool, "content": "Europe/Paris"}]})
    results = {data["tool_use_id"]: data for _, name, data in second[1:3] if name == "tool_result"}
    assert results[approval]["is_error"] is True and "too private" in results[approval]["content"]
    assert (results[client_tool]["is_error"], results[client_tool]["content"]) == (False, "Europe/Paris")
    sent = results_sent(fake)
    assert sent[approval]["is_error"] is True and "too private" in text(sent[approval])
    assert text(sent[client_tool]) == "Europe/Paris" and not sent[client_tool].get("is_error")


# -- WebSocket -------------------------------------------------------------------------------------------


def test_ws_approve_deny_and_client_tool_by_frames(server, http, fake) -> None:
    with session(server) as (ws, _):
        fake.script(asks(note("ws note")))
        send(ws, {"type": "message", "message": "Save a note"})
        first = until_end(ws)
        assert names(first)[-2:] == ["requires_action", "done"] and first[-1]["status"] == "requires_action"
        [pending] = first[-1]["pending"]
        conversation_id = first[0]["conversation_id"]
        send(ws, {"type": "approval", "tool_use_id": pending["tool_use_id"], "approved": True})
        approved = until_end(ws)
        assert names(approved)[:2] == ["start", "tool_result"] and approved[-1]["status"] == "complete"
        assert approved[0]["reply_id"] != first[0]["reply_id"]
        assert approved[1]["content"].startswith("saved note ") and approved[1]["is_error"] is False

        fake.script(asks(note("no thanks")))
        send(ws, {"type": "message", "message": "Another note"})
        tool_use_id = until_end(ws)[-1]["pending"][0]["tool_use_id"]
        send(ws, {"type": "approval", "tool_use_id": tool_use_id, "approved": False, "reason": "not this one"})
        denied = until_end(ws)
        assert denied[1]["type"] == "tool_result" and denied[1]["is_error"] is True
        assert "not this one" in denied[1]["content"]
        assert "not this one" in text(results_sent(fake)[tool_use_id])

        fake.script(asks(timezone()))
        send(ws, {"type": "message", "message": "Where am I?"})
        tool_use_id = until_end(ws)[-1]["pending"][0]["tool_use_id"]
        send(ws, {"type": "tool_result", "tool_use_id": tool_use_id, "content": "America/Lima"})
        answered = until_end(ws)
        assert (answered[1]["tool_use_id"], answered[1]["content"]) == (tool_use_id, "America/Lima")
        assert "".join(f["text"] for f in answered if f["type"] == "token") == "Done. Results: America/Lima"
    runs = audit(http, conversation_id)["tool_runs"]
    assert [(r["name"], r["decision"], r["decided_by"]) for r in runs] == [
        ("save_note", "approved", "alice"), ("save_note", "denied", "alice"), ("get_timezone", "answered", "alice")]
    assert runs[1]["reason"] == "not this one" and all(r["decided_at"] for r in runs)


def test_ws_a_plain_tool_runs_before_the_pause_and_results_go_in_the_models_order(server, fake) -> None:
    with session(server) as (ws, _):
        fake.script(asks(timezone(), sums("2 ** 10"), note("order")))
        send(ws, {"type": "message", "message": "Three at once"})
        first = until_end(ws)
        kinds = names(first)
        assert kinds.index("tool_result") < kinds.index("requires_action")
        ran = next(f for f in first if f["type"] == "tool_result")
        assert ran["content"] == "1024"
        asked = [f["id"] for f in first if f["type"] == "tool_use"]
        pending = {p["tool_use_id"]: p["kind"] for p in first[-1]["pending"]}
        assert pending == {asked[0]: "client_tool", asked[2]: "approval"}
        # The answers in the other order than asked: the results still go in the model's.
        send(ws, {"type": "approval", "tool_use_id": asked[2], "approved": True})
        send(ws, {"type": "tool_result", "tool_use_id": asked[0], "content": "Africa/Cairo"})
        second = until_end(ws)
        assert second[-1]["status"] == "complete"
    messages = last_messages(fake)
    assert [b["tool_use_id"] for b in messages[2]["content"]] == asked
    assert [text(b) for b in messages[2]["content"]][:2] == ["Africa/Cairo", "1024"]


def test_ws_answers_sent_as_soon_as_requires_action_arrives(server, fake) -> None:
    """A client that answers on ``requires_action``, before the paused reply's ``done``: the answers wait for it."""
    with session(server) as (ws, _):
        fake.script(asks(timezone()))
        send(ws, {"type": "message", "message": "Quick"})
        frames = [recv(ws)]
        while frames[-1]["type"] != "requires_action":
            frames.append(recv(ws))
        tool_use_id = frames[-1]["pending"][0]["tool_use_id"]
        send(ws, {"type": "tool_result", "tool_use_id": tool_use_id, "content": "UTC"})
        done = recv(ws)
        assert (done["type"], done["status"]) == ("done", "requires_action")
        second = until_end(ws)
        assert names(second)[:2] == ["start", "tool_result"] and second[-1]["status"] == "complete"


def test_ws_bad_answers_get_error_frames_and_the_session_goes_on(server, fake) -> None:
    with session(server) as (ws, _):
        fake.script(asks(note("bad answers"), timezone()))
        send(ws, {"type": "message", "message": "Two pending"})
        first = until_end(ws)
        approval, client_tool = (p["tool_use_id"] for p in first[-1]["pending"])
        send(ws, {"type": "approval", "tool_use_id": "toolu_nobody", "approved": True})
        expect_error(ws, "unknown")
        send(ws, {"type": "approval", "tool_use_id": client_tool, "approved": True})
        expect_error(ws, "tool_result")
        send(ws, {"type": "tool_result", "tool_use_id": approval, "content": "yes"})
        expect_error(ws, "approval")
        send(ws, {"type": "approval", "tool_use_id": approval})  # no decision
        expect_error(ws)
        send(ws, {"type": "approval", "tool_use_id": approval, "approved": True})
        send(ws, {"type": "approval", "tool_use_id": approval, "approved": False})
        expect_error(ws, "already answered")
        assert len(fake.requests()) == 1  # nothing of that went upstream
        send(ws, {"type": "tool_result", "tool_use_id": client_tool, "content": "UTC"})
        second = until_end(ws)
        assert second[-1]["status"] == "complete"
        assert {f["tool_use_id"]: f["is_error"] for f in second if f["type"] == "tool_result"} == {
            approval: False, client_tool: False}
        # Both answered: answering again is an error frame too.
        send(ws, {"type": "approval", "tool_use_id": approval, "approved": True})
        expect_error(ws, "already answered")


def test_ws_a_new_message_while_pending(server, http, fake) -> None:
    with session(server) as (ws, _):
        fake.script(asks(note("never")))
        send(ws, {"type": "message", "message": "Save it"})
        first = until_end(ws)
        tool_use_id = first[-1]["pending"][0]["tool_use_id"]
        send(ws, {"type": "message", "message": "Forget it, just chat"})
        second = until_end(ws)
        assert second[-1]["status"] == "complete"
        assert second[1]["type"] == "tool_result" and second[1]["content"] == NEW_MESSAGE_INSTEAD
        sent = results_sent(fake)[tool_use_id]
        assert sent["is_error"] is True and text(sent) == NEW_MESSAGE_INSTEAD
        assert last_messages(fake)[-1]["content"][-1]["text"] == "Forget it, just chat"
        send(ws, {"type": "approval", "tool_use_id": tool_use_id, "approved": True})  # it is gone
        expect_error(ws)
    [run] = audit(http, first[0]["conversation_id"])["tool_runs"]
    assert (run["decision"], run["decided_by"]) == ("superseded", "alice")


# -- across routes, keys and restarts --------------------------------------------------------------------


def test_the_answer_on_another_route_than_the_question(server, http, fake) -> None:
    # Asked on the WebSocket, answered with POST /agent.
    with session(server) as (ws, _):
        fake.script(asks(note("cross route")))
        send(ws, {"type": "message", "message": "Over the socket"})
        first = until_end(ws)
    tool_use_id = first[-1]["pending"][0]["tool_use_id"]
    response = http.post("/agent", json={"conversation_id": first[0]["conversation_id"],
                                         "approvals": [{"tool_use_id": tool_use_id, "approved": True}]})
    assert response.status_code == 200, response.text
    assert response.json()["tool_calls"][0]["content"].startswith("saved note ")

    # Asked on the stream, answered over a WebSocket that resumes the conversation: its session frame has them.
    fake.script(asks(timezone()))
    asked = sse(http, {"message": "Over the stream"})
    conversation_id = asked[0][2]["conversation_id"]
    pending = asked[-1][2]["pending"]
    with session(server, conversation_id=conversation_id) as (ws, first_frame):
        assert first_frame["pending"] == pending and first_frame["reply"] is None
        send(ws, {"type": "tool_result", "tool_use_id": pending[0]["tool_use_id"], "content": "Asia/Seoul"})
        answered = until_end(ws)
    assert answered[-1]["status"] == "complete" and answered[1]["content"] == "Asia/Seoul"
    routes = [r["route"] for r in audit(http, conversation_id)["requests"]]
    assert routes == ["stream", "ws"]


def test_another_key_cannot_see_or_answer(server, http, fake) -> None:
    fake.script(asks(note("alice's")))
    asked = sse(http, {"message": "Mine"})
    conversation_id = asked[0][2]["conversation_id"]
    tool_use_id = asked[-1][2]["pending"][0]["tool_use_id"]
    with ws_connect(server, BOB, conversation_id=conversation_id) as ws:
        frame = recv(ws)
        assert frame["type"] == "error" and frame["error"]["type"] == "not_found_error"
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    with session(server, BOB) as (ws, _):  # bob's own session knows of no such action
        send(ws, {"type": "approval", "tool_use_id": tool_use_id, "approved": True})
        expect_error(ws)
    response = http.post("/agent", headers=auth(BOB), json={
        "conversation_id": conversation_id, "approvals": [{"tool_use_id": tool_use_id, "approved": True}]})
    assert response.status_code == 404
    response = http.post("/agent", json={"conversation_id": conversation_id,
                                         "approvals": [{"tool_use_id": tool_use_id, "approved": True}]})
    assert response.status_code == 200, response.text


def test_the_server_restarted_between_the_question_and_the_answer(e2e_database_url, start_server, fake) -> None:
    env = server_env(e2e_database_url, fake, AGENT_TOOLS_FILE=str(TOOLS_FILE))
    first_server = start_server(env)
    fake.script(asks(note("survives"), timezone()))
    with httpx.Client(base_url=first_server.base_url, timeout=WAIT, headers=auth()) as client:
        asked = sse(client, {"message": "Before the restart"})
    first_server.stop()
    pending = asked[-1][2]["pending"]
    conversation_id = asked[0][2]["conversation_id"]

    second_server = start_server(env)
    with session(second_server, conversation_id=conversation_id) as (ws, first_frame):
        assert first_frame["pending"] == pending
        send(ws, {"type": "approval", "tool_use_id": pending[0]["tool_use_id"], "approved": True})
        send(ws, {"type": "tool_result", "tool_use_id": pending[1]["tool_use_id"], "content": "Europe/Oslo"})
        answered = until_end(ws)
    assert answered[-1]["status"] == "complete"
    sent = results_sent(fake)
    assert text(sent[pending[0]["tool_use_id"]]).startswith("saved note ")
    assert text(sent[pending[1]["tool_use_id"]]) == "Europe/Oslo"
    with httpx.Client(base_url=second_server.base_url, timeout=WAIT, headers=auth()) as client:
        stored = audit(client, conversation_id)
    paused = next(r for r in stored["replies"] if r["id"] == asked[0][2]["reply_id"])
    assert paused["status"] == "requires_action" and paused["waited_ms"] > 0
    assert fake.violations() == []
