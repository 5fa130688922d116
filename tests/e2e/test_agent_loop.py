"""The agent's tool-use loop end to end: `agent-server serve` in a subprocess, real clients (httpx for JSON and SSE,
`websockets` for the WebSocket), the fake upstream, Python tools, an MCP server over stdio (a child of the server)
and one over streamable HTTP (a subprocess of this test), a server tool, thinking; cancel, SIGTERM and kill -9 in
the middle of a loop, each followed by a next message that the fake accepts (``fake.violations()`` stays empty:
every ``tool_use`` has its ``tool_result``); the metrics; the offline stub's demo loop.

Most tests share one server per module (and per database backend). The tools live in ``tests/e2e/mcp_servers.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ALICE, auth, selected_backends
from tests.e2e.conftest import ServerProcess, free_port, metrics_auth, server_env
from tests.e2e.mcp_servers import huge

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MCP_SCRIPT = REPO / "tests" / "e2e" / "mcp_servers.py"
MODULE = "tests.e2e.mcp_servers"
WAIT = 20
END = ("done", "error", "cancelled")
D = Decimal
PRICE_IN, PRICE_OUT, SEARCH_FEE = D("2"), D("10"), D("0.01")  # claude-sonnet-5-5 per MTok; a web search


def python_tools() -> str:
    return f"""
[tools.lookup]
python = "{MODULE}:lookup"

[tools.add]
python = "{MODULE}:add"

[tools.where_sync]
python = "{MODULE}:where_sync"

[tools.where_async]
python = "{MODULE}:where_async"

[tools.boom]
python = "{MODULE}:boom"

[tools.slow]
python = "{MODULE}:slow"

[tools.quick]
python = "{MODULE}:slow"
timeout_seconds = 0.3

[tools.slow_sync]
python = "{MODULE}:slow_sync"

[tools.exits]
python = "{MODULE}:exits_async"

[tools.huge]
python = "{MODULE}:huge"

[tools.blocks]
python = "{MODULE}:blocks"
"""


def mcp_tools(http_port: int) -> str:
    return f"""
[mcp.docs]
command = "{sys.executable}"
args = ["{MCP_SCRIPT}", "stdio"]
env = {{ MCP_SECRET = "${{DOCS_SECRET}}" }}
allow = ["search", "whoami"]

[mcp.web]
url = "http://127.0.0.1:{http_port}/mcp"
headers = {{ Authorization = "Bearer ${{WEB_TOKEN}}" }}
allow = ["search", "hang"]

[server_tools.web_search]
type = "web_search_20250305"
max_uses = 3
"""


# -- the streamable HTTP MCP server ---------------------------------------------------------------------------


class McpHttpServer:
    """``mcp_servers.py http`` on a fixed loopback port, so that it can be killed and started again there."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.mark = workdir / "mcp-hang.mark"
        self.log = workdir / "mcp-http.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> McpHttpServer:
        self.mark.unlink(missing_ok=True)
        env = {**os.environ, "MCP_MARK_FILE": str(self.mark)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(MCP_SCRIPT), "http", "--port", str(self.port)],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # a socket that accepts: the only readiness a subprocess shows
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("the MCP HTTP server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- the module's server ---------------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "shared_backend" in metafunc.fixturenames:
        metafunc.parametrize("shared_backend", selected_backends(metafunc.config), indirect=True, scope="module")


@pytest.fixture(scope="module")
def shared_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def mcp_http(tmp_path_factory) -> Iterator[McpHttpServer]:
    server = McpHttpServer(tmp_path_factory.mktemp("mcp-http")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def shared_server(shared_backend, fake_upstream, mcp_http, tmp_path_factory, request) -> Iterator[ServerProcess]:
    """One server for the module: every kind of tool, thinking allowed (a max_tokens ceiling above 1024)."""
    workdir: Path = tmp_path_factory.mktemp("loop-server")
    if shared_backend == "postgresql":
        postgres = request.getfixturevalue("postgres_server")
        database_url = postgres.create_database(f"loop_{os.getpid()}_{time.monotonic_ns()}")
    else:
        database_url = f"sqlite+aiosqlite:///{workdir / 'data' / 'agent.db'}"
    tools = workdir / "tools.toml"
    tools.write_text(python_tools() + mcp_tools(mcp_http.port), encoding="utf-8")
    env = server_env(database_url, fake_upstream, AGENT_TOOLS_FILE=str(tools), PYTHONPATH=str(REPO),
                     AGENT_MAX_TOKENS_CEILING="8192", AGENT_TOOL_TIMEOUT_SECONDS="20",
                     DOCS_SECRET="docs-secret-from-the-environment", WEB_TOKEN="web-token-0123456789")
    server = ServerProcess(env=env, workdir=workdir).start()
    yield server
    server.stop()


@pytest.fixture
def server(shared_server, fake) -> ServerProcess:
    return shared_server


# -- clients ---------------------------------------------------------------------------------------------------


class Event(NamedTuple):
    id: int | None
    name: str
    data: Any


def _events(buffer: str) -> tuple[list[Event], str]:
    """The complete events at the front of ``buffer`` (with their ``id:``), and what is left of it."""
    events = []
    while "\n\n" in buffer:
        chunk, buffer = buffer.split("\n\n", 1)
        fields = dict(line.split(": ", 1) for line in chunk.split("\n") if line and not line.startswith(":"))
        if "event" in fields:
            events.append(Event(int(fields["id"]) if "id" in fields else None, fields["event"],
                                json.loads(fields["data"])))
    return events, buffer


@contextmanager
def sse(server: ServerProcess, body: dict, path: str = "/agent/stream") -> Iterator[Iterator[Event]]:
    """POST ``body`` and iterate over the events as they arrive."""
    with httpx.Client(base_url=server.base_url, headers=auth(), timeout=WAIT) as client:
        with client.stream("POST", path, json=body) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")

            def events() -> Iterator[Event]:
                buffer = ""
                for text in response.iter_text():
                    found, buffer = _events(buffer + text)
                    yield from found

            yield events()


def read_until(events: Iterator[Event], name: str, seen: list[Event]) -> Event:
    for event in events:
        seen.append(event)
        if event.name == name:
            return event
    raise AssertionError(f"the stream ended before {name!r}: {[e.name for e in seen]}")


def stream(server: ServerProcess, body: dict) -> list[Event]:
    seen: list[Event] = []
    with sse(server, body) as events:
        seen.extend(events)
    return seen


def api(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=auth(), timeout=WAIT)


def post(server: ServerProcess, path: str, body: dict | None = None) -> httpx.Response:
    with api(server) as client:
        return client.post(path, json=body)


def audit(server: ServerProcess, conversation_id: str) -> dict:
    with api(server) as client:
        response = client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


def ws_connect(server: ServerProcess, query: str = "") -> ClientConnection:
    return connect(server.ws_url + query, additional_headers=auth(), proxy=None, open_timeout=WAIT, close_timeout=2)


def recv(ws: ClientConnection) -> dict:
    deadline = time.monotonic() + WAIT
    while True:
        frame = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        if frame["type"] != "ping":
            return frame


def ws_until(ws: ClientConnection, kind: str, seen: list[dict]) -> dict:
    while True:
        frame = recv(ws)
        seen.append(frame)
        if frame["type"] == kind:
            return frame
        assert frame["type"] not in END or kind in END, f"ended before {kind!r}: {frame}"


def last_results(body: dict) -> list[dict]:
    assert body["messages"][-1]["role"] == "user"
    return [block for block in body["messages"][-1]["content"] if block.get("type") == "tool_result"]


def call(name: str, tool_id: str, **tool_input: Any) -> dict:
    return {"name": name, "id": tool_id, "input": tool_input}


def next_message_is_accepted(server: ServerProcess, fake, conversation_id: str) -> dict:  # type: ignore
    """One more message on the conversation, which the fake (refusing what the real API refuses) accepts."""
    fake.script({"text": "Still here."})
    response = post(server, "/agent", {"conversation_id": conversation_id, "message": "And now?"})
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "Still here."
    assert fake.violations() == []
    return fake.bodies()[-1]


def cost(usage: dict, searches: int = 0) -> Decimal:
    return (usage["input_tokens"] * PRICE_IN + usage["output_tokens"] * PRICE_OUT) / D(1_000_000) + \
        searches * SEARCH_FEE


def numbered(ids: list[int | None]) -> None:
    assert ids == list(range(1, len(ids) + 1)), ids


# -- every event and frame, on every surface ------------------------------------------------------------------------


def loop_script(fake, n: str) -> None:  # type: ignore[no-untyped-def]
    """Three steps: thinking, text and two parallel Python tools; both MCP servers and a web search; an answer."""
    fake.script(
        {"thinking": "Two lookups at once.", "tokens": ["Let me ", "check. "],
         "tool_calls": [call("lookup", f"toolu_{n}1", city="Oslo"), call("add", f"toolu_{n}2", a=2, b=40)]},
        {"server_tool_uses": [{"input": {"query": "fjords"}}],
         "tool_calls": [call("docs__search", f"toolu_{n}3", query="fjords"),
                        call("web__search", f"toolu_{n}4", query="ferries")]},
        {"tokens": ["Oslo ", "it is."]},
    )


LOOP_BODY = {"message": "Plan my trip", "max_tokens": 4096, "thinking": {"budget_tokens": 1024}}
# Runs of thinking and of token events shown as one (the model's text comes in pieces).
SHAPE = ["start", "thinking", "token", "tool_use", "tool_use", "step", "tool_result", "tool_result",
         "thinking", "tool_use", "tool_result", "tool_use", "tool_use", "step", "tool_result", "tool_result",
         "thinking", "token", "step", "done"]


def shape(kinds: list[str]) -> list[str]:
    return [k for i, k in enumerate(kinds) if not (k in ("thinking", "token") and i and kinds[i - 1] == k)]


def check_loop(kinds: list[str], data: list[dict], fake, n: str) -> None:  # type: ignore[no-untyped-def]
    """What every surface shows of ``loop_script``'s reply (``kinds`` and ``data`` of its events, in order)."""
    assert shape(kinds) == SHAPE, kinds
    assert fake.violations() == []
    start, done = data[0], data[-1]
    assert set(start) >= {"reply_id", "conversation_id", "model", "context"}
    uses = [d for k, d in zip(kinds, data) if k == "tool_use"]
    assert [(u["name"], u["kind"]) for u in uses] == [
        ("lookup", "python"), ("add", "python"), ("web_search", "server"), ("docs__search", "mcp"),
        ("web__search", "mcp")]
    assert uses[0] == {"id": f"toolu_{n}1", "name": "lookup", "input": {"city": "Oslo"}, "kind": "python"}
    results = {d["tool_use_id"]: d for k, d in zip(kinds, data) if k == "tool_result"}
    assert results[f"toolu_{n}1"]["content"] == "Oslo: 3 results"
    assert results[f"toolu_{n}2"]["content"] == '{"sum":42}'
    assert results[uses[2]["id"]]["is_error"] is False and "example.com" in results[uses[2]["id"]]["content"]
    assert results[f"toolu_{n}3"]["content"].startswith("results for 'fjords' from pid ")
    assert results[f"toolu_{n}4"]["content"].startswith("results for 'ferries' from pid ")
    assert all(not r["is_error"] for r in results.values())
    thinking = "".join(d["text"] for k, d in zip(kinds, data) if k == "thinking")
    assert thinking.startswith("Two lookups at once.")
    steps = [d for k, d in zip(kinds, data) if k == "step"]
    assert [(s["step"], s["stop_reason"]) for s in steps] == [(1, "tool_use"), (2, "tool_use"), (3, "end_turn")]
    assert steps[1]["usage"]["server_tool_uses"] == 1
    assert D(str(steps[1]["cost_usd"])) == cost(steps[1]["usage"], searches=1)
    assert D(str(steps[0]["cost_usd"])) == cost(steps[0]["usage"])
    assert done["status"] == "complete" and done["steps"] == 3 and done["usage"]["server_tool_uses"] == 1
    assert D(str(done["estimated_cost_usd"])) == sum(D(str(s["cost_usd"])) for s in steps)
    sent = fake.bodies()
    assert len(sent) == 3
    assert [r["tool_use_id"] for r in last_results(sent[1])] == [f"toolu_{n}1", f"toolu_{n}2"]
    assert [r["tool_use_id"] for r in last_results(sent[2])] == [f"toolu_{n}3", f"toolu_{n}4"]
    assert all(b["thinking"] == {"type": "enabled", "budget_tokens": 1024} for b in sent)


def test_every_event_over_sse_with_ids_in_order(server, fake) -> None:
    loop_script(fake, "s")
    events = stream(server, LOOP_BODY)
    numbered([e.id for e in events])
    check_loop([e.name for e in events], [e.data for e in events], fake, "s")
    record = audit(server, events[0].data["conversation_id"])
    assert [(r["step"], r["reply_id"]) for r in record["requests"]] == [
        (1, events[0].data["reply_id"]), (2, events[0].data["reply_id"]), (3, events[0].data["reply_id"])]
    runs = {r["tool_use_id"]: r for r in record["tool_runs"]}
    assert {(r["name"], r["kind"]) for r in runs.values()} == {
        ("lookup", "python"), ("add", "python"), ("docs__search", "mcp"), ("web__search", "mcp")}
    assert runs["toolu_s1"]["input"] == {"city": "Oslo"} and runs["toolu_s1"]["output"] == "Oslo: 3 results"
    assert all(r["is_error"] is False and isinstance(r["duration_ms"], int) and r["status"] == "done"
               for r in runs.values())
    assert [b["type"] for b in record["turns"][1]["blocks"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert record["totals"]["server_tool_uses"] == 1
    # A next message with thinking: every step goes back as it came (the fake checks the signatures).
    fake.script({"text": "You are welcome."})
    again = post(server, "/agent", {**LOOP_BODY, "conversation_id": events[0].data["conversation_id"],
                                    "message": "Thanks"})
    assert again.status_code == 200, again.text
    assert fake.violations() == []
    later = fake.bodies()[-1]["messages"]
    assert len(later) == 7
    stored = [json.loads(json.dumps(t["blocks"])) for t in record["turns"][1:]]
    sent = [[{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]] for m in later[1:6]]
    assert sent == stored


def test_every_frame_over_the_websocket_with_seq_in_order(server, fake) -> None:
    loop_script(fake, "w")
    with ws_connect(server) as ws:
        assert recv(ws)["type"] == "session"
        ws.send(json.dumps({"type": "message", **LOOP_BODY}))
        frames: list[dict] = []
        ws_until(ws, "done", frames)
        numbered([f.get("seq") for f in frames])
        check_loop([f["type"] for f in frames], [{k: v for k, v in f.items() if k not in ("type", "seq")}
                                                 for f in frames], fake, "w")
        # tools and tool_choice per message: none offered now, though the history holds tool blocks.
        fake.script({"text": "No tools."})
        ws.send(json.dumps({"type": "message", "message": "Answer without tools", "tools": []}))
        second: list[dict] = []
        ws_until(ws, "done", second)
        numbered([f.get("seq") for f in second])
        assert fake.bodies()[-1]["tool_choice"] == {"type": "none"} and fake.bodies()[-1]["tools"]
        ws.send(json.dumps({"type": "message", "message": "x", "tools": ["no_such_tool"]}))
        error = recv(ws)
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fake.violations() == []


def test_post_agent_returns_every_steps_text_and_the_tool_calls(server, fake) -> None:
    loop_script(fake, "j")
    response = post(server, "/agent", LOOP_BODY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["content"] == "Let me check. Oslo it is."
    assert body["steps"] == 3 and body["status"] == "complete"
    calls = {c["id"]: c for c in body["tool_calls"]}
    assert set(calls) == {"toolu_j1", "toolu_j2", "toolu_j3", "toolu_j4"}
    assert calls["toolu_j1"] == {"id": "toolu_j1", "name": "lookup", "kind": "python", "input": {"city": "Oslo"},
                                 "is_error": False, "content": "Oslo: 3 results",
                                 "duration_ms": calls["toolu_j1"]["duration_ms"]}
    assert calls["toolu_j3"]["kind"] == "mcp" and calls["toolu_j4"]["name"] == "web__search"
    assert fake.violations() == []


def test_failing_tools_give_error_results_and_the_reply_goes_on(server, fake) -> None:
    fake.script({"tool_calls": [call("boom", "toolu_f1", reason="no fuel"), call("quick", "toolu_f2", seconds=30),
                                {"name": "nope", "input": {}, "undeclared": True, "id": "toolu_f3"},
                                call("huge", "toolu_f4", chars=150_000), call("blocks", "toolu_f5"),
                                call("where_sync", "toolu_f6"), call("where_async", "toolu_f7"),
                                call("exits", "toolu_f8")]},
                {"text": "Some failed."})
    events = stream(server, {"message": "Try them all"})
    numbered([e.id for e in events])
    assert events[-1].name == "done" and events[-1].data["status"] == "complete"
    results = {e.data["tool_use_id"]: e.data for e in events if e.name == "tool_result"}
    assert (results["toolu_f1"]["is_error"], results["toolu_f1"]["content"]) == (True, "RuntimeError: no fuel")
    assert results["toolu_f2"]["content"] == "the tool did not finish within 0.3 s"
    assert results["toolu_f3"]["content"] == "unknown tool 'nope'" and results["toolu_f3"]["is_error"]
    assert results["toolu_f4"]["truncated"] is True and len(results["toolu_f4"]["content"]) == 65536
    assert json.loads(results["toolu_f5"]["content"])[0] == {"type": "text", "text": "first block"}
    assert results["toolu_f6"]["content"] == "thread=tool-where_sync loop=False"
    assert results["toolu_f7"]["content"] == "thread=MainThread loop=True"
    assert results["toolu_f8"]["content"] == "SystemExit: 2"  # and the server is still up:
    assert httpx.get(f"{server.base_url}/healthz", timeout=WAIT).status_code == 200
    sent = {r["tool_use_id"]: r for r in last_results(fake.bodies()[1])}
    assert sent["toolu_f4"]["content"] == huge(150_000)[:100_000] + "\n[output cut at 100000 of 150000 characters]"
    assert sent["toolu_f5"]["content"][1]["type"] == "image"
    next_message_is_accepted(server, fake, events[0].data["conversation_id"])


# -- MCP: the streamable HTTP server killed mid-call ----------------------------------------------------------------


def test_an_mcp_server_killed_mid_call_gives_an_error_and_is_reconnected(server, fake, mcp_http) -> None:
    fake.script({"tool_calls": [call("web__hang", "toolu_h", seconds=60)]}, {"text": "The web server died."})
    seen: list[Event] = []
    with sse(server, {"message": "Hang"}) as events:
        read_until(events, "step", seen)
        deadline = time.monotonic() + WAIT
        while not mcp_http.mark.exists():  # the call reached the MCP server (it writes the mark, then waits)
            assert time.monotonic() < deadline, "the call never reached the MCP server"
            time.sleep(0.02)
        mcp_http.kill()
        result = read_until(events, "tool_result", seen)
        done = read_until(events, "done", seen)
    assert result.data["tool_use_id"] == "toolu_h" and result.data["is_error"] is True
    assert result.data["content"].startswith("the MCP server web failed (")
    assert done.data["status"] == "complete" and done.data["steps"] == 2
    mcp_http.start()  # back on the same port: the next reply's call reconnects
    fake.script({"tool_calls": [call("web__search", "toolu_again", query="back")]}, {"text": "Back."})
    response = post(server, "/agent", {"conversation_id": seen[0].data["conversation_id"], "message": "Again"})
    assert response.status_code == 200, response.text
    (again,) = response.json()["tool_calls"]
    assert again["is_error"] is False, again
    assert again["content"].startswith("results for 'back' from pid ")
    assert fake.violations() == []


# -- cancel mid-tool and mid-stream, over POST /replies/{id}/cancel and the WebSocket -------------------------------


MID_TOOL = [{"tokens": ["Waiting."], "tool_calls": [call("slow", "toolu_c1", seconds=60),
                                                   call("lookup", "toolu_c2", city="Pisa")]}]
MID_STREAM = [{"tool_calls": [call("lookup", "toolu_c2", city="Pisa")]}, {"n_tokens": 400, "token_delay": 0.02}]


def check_cancelled(server: ServerProcess, fake, conversation_id: str, phase: str,  # type: ignore
                    next_message=None) -> None:  # type: ignore[no-untyped-def]
    """The audit of the cancelled reply, then a next message (``next_message()``: its request's body)."""
    record = audit(server, conversation_id)
    assert [r["status"] for r in record["replies"]] == ["cancelled"]
    assert all(r["status"] != "running" for r in record["requests"])
    roles = [(t["role"], t["status"]) for t in record["turns"]]
    if phase == "tool":
        assert roles == [("user", "complete"), ("assistant", "complete"), ("user", "complete")]
        results = {b["tool_use_id"]: b for b in record["turns"][2]["blocks"]}
        assert results["toolu_c1"] == {"type": "tool_result", "tool_use_id": "toolu_c1",
                                       "content": "not run: the reply was cancelled", "is_error": True}
        assert results["toolu_c2"]["content"] == "Pisa: 3 results"
    else:
        assert roles == [("user", "complete"), ("assistant", "complete"), ("user", "complete"),
                         ("assistant", "incomplete")]
        assert [r["status"] for r in record["requests"]] == ["ok", "cancelled"]
    body = next_message() if next_message else next_message_is_accepted(server, fake, conversation_id)
    assert fake.violations() == []
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"][0]["tool_use_id"] == ("toolu_c1" if phase == "tool" else "toolu_c2")


@pytest.mark.parametrize("phase", ["tool", "stream"])
def test_cancel_over_http_mid_tool_and_mid_stream(server, fake, phase) -> None:
    fake.script(*(MID_TOOL if phase == "tool" else MID_STREAM))
    seen: list[Event] = []
    with sse(server, {"message": f"Cancel me mid-{phase}"}) as events:
        start = read_until(events, "start", seen)
        if phase == "tool":
            read_until(events, "tool_result", seen)  # lookup is done, slow runs on
        else:
            read_until(events, "step", seen)
            read_until(events, "token", seen)
        cancelled = post(server, f"/replies/{start.data['reply_id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        last = read_until(events, "cancelled", seen)
        assert list(events) == []
    numbered([e.id for e in seen])
    assert last.data["reply_id"] == start.data["reply_id"]
    check_cancelled(server, fake, start.data["conversation_id"], phase)


@pytest.mark.parametrize("phase", ["tool", "stream"])
def test_cancel_over_the_websocket_mid_tool_and_mid_stream(server, fake, phase) -> None:
    fake.script(*(MID_TOOL if phase == "tool" else MID_STREAM))
    with ws_connect(server) as ws:
        assert recv(ws)["type"] == "session"
        ws.send(json.dumps({"type": "message", "message": f"Cancel me mid-{phase}"}))
        frames: list[dict] = []
        start = ws_until(ws, "start", frames)
        if phase == "tool":
            ws_until(ws, "tool_result", frames)
        else:
            ws_until(ws, "step", frames)
            ws_until(ws, "token", frames)
        ws.send(json.dumps({"type": "cancel"}))
        cancelled = ws_until(ws, "cancelled", frames)
        numbered([f["seq"] for f in frames])
        assert cancelled["reply_id"] == start["reply_id"]

        def carry_on() -> dict:  # the same socket carries on: the next message is accepted upstream
            fake.script({"text": "Carry on."})
            ws.send(json.dumps({"type": "message", "message": "Go on"}))
            ws_until(ws, "done", [])
            return fake.bodies()[-1]

        check_cancelled(server, fake, start["conversation_id"], phase, carry_on)


# -- metrics ---------------------------------------------------------------------------------------------------


def test_metrics_count_tool_runs_by_configured_name_and_outcome(server, fake) -> None:
    def runs() -> dict[tuple[str, str], float]:
        text = httpx.get(f"{server.base_url}/metrics", headers=metrics_auth(), timeout=WAIT).text
        found = {}
        for labels, value in re.findall(r"^agent_tool_runs_total\{(.*)\} (\S+)$", text, re.MULTILINE):
            parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            found[(parsed["tool"], parsed["outcome"])] = float(value)
        assert "invented_by_the_model" not in text
        return found

    assert httpx.get(f"{server.base_url}/metrics", headers=auth(ALICE), timeout=WAIT).status_code in (401, 403)
    before = runs()
    fake.script({"tool_calls": [call("lookup", "toolu_m1", city="A"), call("boom", "toolu_m2"),
                                call("quick", "toolu_m3", seconds=30), call("docs__search", "toolu_m4", query="q"),
                                {"name": "invented_by_the_model", "input": {}, "undeclared": True,
                                 "id": "toolu_m5"}]},
                {"text": "Counted."})
    assert post(server, "/agent", {"message": "Count"}).status_code == 200
    after = runs()
    grew = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert grew == {("lookup", "ok"): 1, ("boom", "error"): 1, ("quick", "timeout"): 1, ("docs__search", "ok"): 1,
                    ("unknown", "error"): 1}


# -- SIGTERM and kill -9 in the middle of a loop ----------------------------------------------------------------------


@pytest.fixture
def tools_file(tmp_path) -> Path:
    path = tmp_path / "python-tools.toml"
    path.write_text(python_tools(), encoding="utf-8")
    return path


def test_kill_9_then_sigterm_mid_loop_and_the_conversations_go_on(start_server, e2e_database_url, fake,
                                                                   tools_file) -> None:
    """One database, three servers in turn: the first is killed (-9) mid-loop; the second closes its reply as
    interrupted, carries the conversation on, and gets SIGTERM with two tools running (one finishes within the
    grace, one does not); the third carries that conversation on."""
    env = server_env(e2e_database_url, fake, PYTHONPATH=str(REPO), AGENT_TOOLS_FILE=str(tools_file),
                     AGENT_SHUTDOWN_GRACE_SECONDS="1")
    first = start_server(env)
    fake.script({"tool_calls": [call("lookup", "toolu_k1", city="Riga")]},
                {"tokens": ["Now "], "tool_calls": [call("slow", "toolu_k2", seconds=60)]})
    seen: list[Event] = []
    with sse(first, {"message": "Two steps, then die"}) as events:
        start = read_until(events, "start", seen)
        read_until(events, "step", seen)
        read_until(events, "step", seen)  # step 2 is stored; its tool runs
        first.kill()

    second = start_server(env)
    reply_id, conversation = start.data["reply_id"], start.data["conversation_id"]
    with api(second) as client:
        status = client.get(f"/replies/{reply_id}").json()
        assert status["status"] == "interrupted" and status["steps"] == 2
        replay = _events(client.get(f"/replies/{reply_id}/events").text)[0]
        # A client that saw the events up to the kill and resumes from there is told too.
        resumed = _events(client.get(f"/replies/{reply_id}/events", params={"after": seen[-1].id}).text)[0]
    assert replay[-1].name == "error" and replay[-1].data["error"]["type"] == "interrupted"
    numbered([e.id for e in replay])
    assert [(e.name, e.data["error"]["type"]) for e in resumed] == [("error", "interrupted")]
    assert resumed[0].id > seen[-1].id
    record = audit(second, conversation)
    assert [(t["role"], t["step"], t["status"]) for t in record["turns"]] == [
        ("user", 0, "complete"), ("assistant", 1, "complete"), ("user", 1, "complete"),
        ("assistant", 2, "complete"), ("user", 2, "complete")]
    assert record["turns"][4]["blocks"] == [{"type": "tool_result", "tool_use_id": "toolu_k2",
                                             "content": "not run: the server process stopped", "is_error": True}]
    assert [r["status"] for r in record["requests"]] == ["ok", "ok"]  # every call of the loop is in the ledger
    body = next_message_is_accepted(second, fake, conversation)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant", "user"]

    # SIGTERM with two replies in their tools; the long one is a sync tool (its thread cannot be stopped, and must
    # not hold the process's exit).
    fake.script({"tool_calls": [call("slow_sync", "toolu_long", seconds=60)]})
    fake.script({"tool_calls": [call("slow", "toolu_short", seconds=0.3)]}, {"text": "Made it in time."})
    long_seen: list[Event] = []
    short_seen: list[Event] = []
    with sse(second, {"message": "A long tool"}) as long_events, \
            sse(second, {"message": "A short tool"}) as short_events:
        read_until(long_events, "step", long_seen)
        read_until(short_events, "step", short_seen)
        second.signal(signal.SIGTERM)
        short_last = read_until(short_events, "done", short_seen)
        long_last = read_until(long_events, "error", long_seen)
    assert second.wait(10) == 0
    numbered([e.id for e in long_seen])
    numbered([e.id for e in short_seen])
    assert short_last.data["status"] == "complete"  # finished within the grace
    assert long_last.data["error"]["type"] == "shutdown"  # cut when the grace ran out
    third = start_server(env)
    cut = long_seen[0].data["conversation_id"]
    record = audit(third, cut)
    assert [r["status"] for r in record["replies"]] == ["cancelled"]
    assert record["turns"][2]["blocks"] == [{"type": "tool_result", "tool_use_id": "toolu_long",
                                             "content": "not run: the server shut down", "is_error": True}]
    next_message_is_accepted(third, fake, cut)


# -- the offline stub's demo loop ---------------------------------------------------------------------------------


def test_the_offline_stub_demo_loop(start_server, e2e_database_url) -> None:
    server = start_server(server_env(e2e_database_url, None, AGENT_STUB_TOKEN_DELAY="0"))
    assert httpx.get(f"{server.base_url}/healthz", timeout=WAIT).json()["offline_stub"] is True
    events = stream(server, {"message": "what time is it?"})
    numbered([e.id for e in events])
    assert [(e.data["name"], e.data["kind"]) for e in events if e.name == "tool_use"] == [("current_time", "python")]
    (result,) = [e.data for e in events if e.name == "tool_result"]
    assert not result["is_error"] and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", result["content"])
    text = "".join(e.data["text"] for e in events if e.name == "token")
    assert text.startswith("[offline stub] ") and text.endswith(f"The tool said: {result['content']}")
    assert events[-1].name == "done" and events[-1].data["steps"] == 2
    with ws_connect(server) as ws:
        assert recv(ws)["type"] == "session"
        ws.send(json.dumps({"type": "message", "message": "what is 12*7?"}))
        frames: list[dict] = []
        ws_until(ws, "done", frames)
    numbered([f["seq"] for f in frames])
    (use,) = [f for f in frames if f["type"] == "tool_use"]
    assert (use["name"], use["input"]) == ("calculator", {"expression": "12*7"})
    (answer,) = [f for f in frames if f["type"] == "tool_result"]
    assert answer["content"] == "84"
    assert "".join(f["text"] for f in frames if f["type"] == "token").endswith("The tool said: 84")
