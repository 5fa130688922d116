"""Replies outlive their connection, end to end (API.md): real `agent-server serve` processes, real connections
dropped mid-reply and resumed, on the process that runs the reply and on another one.

Per database, one deployment for the module: on SQLite one `serve --workers 2` on one file (its workers talk through
the table channel); on PostgreSQL two `serve` processes on two ports sharing one database. Which process serves a
connection is read from /proc (the server side of the connection's socket), so a test can keep connecting until it
lands on the process it wants — the one running the reply, or another. kill -9 gets a server of its own.

A resumed client must get exactly the missing events: ids going on from the one it last saw, no gap, no
duplicate, and the text it assembled equal to the stored turn.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ALICE, auth, selected_backends
from tests.e2e.conftest import ServerProcess, server_env

pytestmark = pytest.mark.e2e

TOOLS_FILE = Path(__file__).resolve().parents[2] / "tools.example.toml"
WAIT = 15.0
TIMEOUT = httpx.Timeout(WAIT)
END = {"done", "error", "cancelled"}
_NAMES = itertools.count(1)


# -- which process serves a connection -------------------------------------------------------------------


def _socket_inode(server_port: int, client_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                return fields[9]
    return None


def _tree(pid: int) -> list[int]:
    """``pid`` and its children (uvicorn's workers are children of its supervisor)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(child) for child in children)]


def serving_pid(server: ServerProcess, client_port: int) -> int:
    """The process of ``server`` that holds the server side of the connection from ``client_port``."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        inode = _socket_inode(server.port, client_port)
        if inode is not None:
            target = f"socket:[{inode}]"
            assert server.proc is not None
            for pid in _tree(server.proc.pid):
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                            return pid
                    except OSError:
                        continue
        time.sleep(0.01)  # the accept may not have happened yet: /proc is all there is to look at
    raise AssertionError(f"no process of the server holds the connection from port {client_port}")


def response_pid(server: ServerProcess, response: httpx.Response) -> int:
    return serving_pid(server, response.extensions["network_stream"].get_extra_info("client_addr")[1])


# -- the deployment --------------------------------------------------------------------------------------


@dataclass
class Deployment:
    backend: str
    servers: list[ServerProcess]
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, server: ServerProcess) -> httpx.Client:
        client = httpx.Client(base_url=server.base_url, timeout=TIMEOUT, headers=auth())
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


def start_on_a_free_port(env: dict[str, str], workdir: Path, args: tuple[str, ...] = ()) -> ServerProcess:
    """A server on a port chosen just before it starts; once more on another port when that one was taken
    meanwhile (other test sessions on this machine pick free ports too)."""
    for attempt in range(2):
        server = ServerProcess(env=env, workdir=workdir, args=args)
        try:
            return server.start()
        except RuntimeError:
            server.stop()
            if attempt or "address already in use" not in server.log().lower():
                raise
    raise AssertionError("unreachable")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", selected_backends(metafunc.config), indirect=True, scope="module")


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def deployment(backend, fake_upstream, tmp_path_factory, request) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp(f"resume-{backend}")
    extra = {"AGENT_TOOLS_FILE": str(TOOLS_FILE)}
    servers: list[ServerProcess] = []
    if backend == "sqlite":
        env = server_env(f"sqlite+aiosqlite:///{workdir / 'data' / 'agent.db'}", fake_upstream, **extra)
        starts, database = [("--workers", "2")], None
    else:
        postgres = request.getfixturevalue("postgres_server")
        database = f"resume_{os.getpid()}_{next(_NAMES)}"
        env = server_env(postgres.create_database(database), fake_upstream, **extra)
        starts = [(), ()]
    try:
        for args in starts:  # one after the other: the first migrates the database
            servers.append(start_on_a_free_port(env, workdir, args))
        yield Deployment(backend, servers)
    finally:
        for server in servers:
            server.stop()
        if database is not None:
            request.getfixturevalue("postgres_server").drop_database(database)


@pytest.fixture
def cluster(deployment, fake) -> Iterator[Deployment]:
    yield deployment
    deployment.close()
    assert fake.violations() == []


# -- SSE -------------------------------------------------------------------------------------------------


def sse_events(response: httpx.Response) -> Iterator[tuple[int, str, dict]]:
    """``(id, event, data)`` as they arrive; comments (pings) are skipped; every event must carry an id."""
    buffer = b""
    for chunk in response.iter_bytes():
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                          if line and not line.startswith(":"))
            if fields:
                yield int(fields["id"]), fields["event"], json.loads(fields["data"])


def read_until(events: Iterator[tuple[int, str, dict]], stop) -> list[tuple[int, str, dict]]:  # type: ignore[no-untyped-def]
    """Events up to and including the first for which ``stop(event, so_far)`` holds (or the last one)."""
    seen = []
    for event in events:
        seen.append(event)
        if stop(event, seen) or event[1] in END:
            break
    return seen


def tokens_seen(n: int):  # type: ignore[no-untyped-def]
    return lambda event, seen: sum(1 for _, name, _ in seen if name == "token") >= n


def start_stream(deployment: Deployment, server: ServerProcess, body: dict, stop):  # type: ignore[no-untyped-def]
    """POST /agent/stream, read until ``stop``, then drop the connection: (events seen, pid that runs the reply)."""
    client = deployment.client(server)
    with client.stream("POST", "/agent/stream", json=body) as response:
        assert response.status_code == 200, response.read()
        pid = response_pid(server, response)
        seen = read_until(sse_events(response), stop)
    client.close()  # the connection goes: the reply does not (on_disconnect: continue)
    return seen, pid


def resume(deployment: Deployment, reply_id: str, *, on: str, runner: int, after: int, how: str = "header",
           stop=None):  # type: ignore[no-untyped-def]
    """GET /replies/{id}/events after ``after``, on a connection served by the runner (``on="same"``) or by
    another process (``on="other"``): connect again until one lands where asked (a wrong one is closed unread)."""
    headers = {"Last-Event-ID": str(after)} if how == "header" else {}
    params = {"after": after} if how == "query" else {}
    for _attempt in range(200):
        for server in deployment.servers:
            client = deployment.client(server)
            with client.stream("GET", f"/replies/{reply_id}/events", headers=headers, params=params) as response:
                assert response.status_code == 200, response.read()
                pid = response_pid(server, response)
                if (pid == runner) == (on == "same"):
                    events = read_until(sse_events(response), stop or (lambda event, seen: False))
                    client.close()
                    return events, pid
            client.close()
    raise AssertionError(f"no connection landed on the {on} process")


def assert_continues(first: list, *rest: list) -> None:
    """Each part's ids go on from the previous part's last one, by one, with no gap or duplicate."""
    ids = [seq for part in (first, *rest) for seq, _, _ in part]
    assert ids == list(range(1, len(ids) + 1)), ids


def text_of(*parts: list) -> str:
    return "".join(data["text"] for part in parts for _, name, data in part if name == "token")


def audit(client: httpx.Client, conversation_id: str) -> dict:
    response = client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()


def slow(n: int, delay: float = 0.02) -> dict:
    return {"n_tokens": n, "token_delay": delay}


# -- the tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("on", ["same", "other"])
def test_an_sse_client_dropped_mid_reply_resumes_with_exactly_the_missing_events(cluster, fake, on) -> None:
    """Dropped twice: resumed with Last-Event-ID, then with ?after=, on the process running the reply or
    another one; the reply ran on meanwhile (on_disconnect: continue)."""
    fake.script(slow(90))
    server = cluster.servers[0]
    first, runner = start_stream(cluster, server, {"message": "Tell me a long story"}, tokens_seen(8))
    start = first[0][2]
    reply_id, conversation_id = start["reply_id"], start["conversation_id"]
    assert first[0][1] == "start" and first[-1][1] == "token"

    second, pid = resume(cluster, reply_id, on=on, runner=runner, after=first[-1][0], stop=tokens_seen(20))
    assert (pid == runner) == (on == "same") and second[-1][1] == "token", second[-3:]
    third, _ = resume(cluster, reply_id, on=on, runner=runner, after=second[-1][0], how="query")
    assert third[-1][1] == "done" and third[-1][2]["status"] == "complete"
    assert_continues(first, second, third)

    stored = audit(cluster.client(server), conversation_id)["turns"][-1]
    assert stored["status"] == "complete" and stored["id"] == third[-1][2]["turn_id"]
    assert text_of(first, second, third) == stored["content"] == "".join(f"tok{i} " for i in range(90))


def ws_ask(deployment: Deployment, message: str, tokens: int) -> tuple[list[dict], int]:
    """A message over a WebSocket, read until ``tokens`` tokens came, then the socket closed: (frames, runner)."""
    server = deployment.servers[0]
    with ws_connect(server.ws_url) as ws:
        runner = serving_pid(server, ws.local_address[1])
        assert frame(ws)["type"] == "session"
        ws.send(json.dumps({"type": "message", "message": message}))
        first = frames_until(ws, lambda f, seen: sum(1 for x in seen if x["type"] == "token") >= tokens)
    return first, runner


@pytest.mark.parametrize("on", ["same", "other"])
def test_a_websocket_client_resumes_after_n(cluster, fake, on) -> None:
    """``?conversation_id=ID&after=N``: the session frame names the running reply, then its frames after N."""
    fake.script(slow(80))
    first, runner = ws_ask(cluster, "A long one, over the socket", 10)
    conversation_id, reply_id = first[0]["conversation_id"], first[0]["reply_id"]
    query = urlencode({"conversation_id": conversation_id, "after": first[-1]["seq"]})
    with ws_where(cluster, runner, query, on=on) as ws:
        session = frame(ws)
        assert session["type"] == "session" and session["conversation_id"] == conversation_id
        reply = session["reply"]
        assert (reply["reply_id"], reply["status"]) == (reply_id, "running")
        assert reply["last_seq"] >= 1  # how far it got (from the stored events on a process that does not run it)
        rest = frames_until(ws, lambda f, seen: False)
    seqs = [f["seq"] for f in first + rest]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert rest[-1]["type"] == "done" and rest[-1]["reply_id"] == reply_id
    stored = audit(cluster.client(cluster.servers[0]), conversation_id)["turns"][-1]
    assert "".join(f["text"] for f in first + rest if f["type"] == "token") == stored["content"]
    assert stored["content"] == "".join(f"tok{i} " for i in range(80))


def test_a_websocket_resumed_on_another_process_cancels_the_reply(cluster, fake) -> None:
    fake.script(slow(1000))
    first, runner = ws_ask(cluster, "Stop me from elsewhere", 3)
    conversation_id = first[0]["conversation_id"]
    with ws_where(cluster, runner, urlencode({"conversation_id": conversation_id, "after": first[-1]["seq"]}),
                  on="other") as ws:
        assert frame(ws)["reply"]["status"] == "running"
        ws.send(json.dumps({"type": "cancel"}))
        rest = frames_until(ws, lambda f, seen: False)
    assert rest[-1]["type"] == "cancelled" and rest[-1]["reply_id"] == first[0]["reply_id"]
    fake.wait_for(outcome="disconnected", timeout=WAIT)
    turn = audit(cluster.client(cluster.servers[0]), conversation_id)["turns"][-1]
    assert turn["status"] == "incomplete"


def test_a_background_reply_polled_on_another_process(cluster, fake) -> None:
    fake.script(slow(20))
    servers = cluster.servers
    client = cluster.client(servers[0])
    response = client.post("/agent", json={"message": "In the background", "background": True})
    assert response.status_code == 202, response.text
    started = response.json()
    assert started["status"] == "running"
    poller = cluster.client(servers[-1])
    deadline = time.monotonic() + WAIT
    while (status := poller.get(f"/replies/{started['reply_id']}").json())["status"] == "running":
        assert time.monotonic() < deadline, status
        time.sleep(0.05)  # polling is how a background reply is followed
    assert status["status"] == "complete" and status["steps"] == 1
    turn = audit(poller, started["conversation_id"])["turns"][-1]
    assert status["turn_id"] == turn["id"] and turn["content"] == "".join(f"tok{i} " for i in range(20))


def test_cancel_from_another_process_stops_the_reply_within_a_second(cluster, fake) -> None:
    fake.script(slow(1000))
    server = cluster.servers[0]
    client = cluster.client(server)
    with client.stream("POST", "/agent/stream", json={"message": "Go on for ever"}) as response:
        runner = response_pid(server, response)
        events = sse_events(response)
        seen = read_until(events, tokens_seen(3))
        reply_id = seen[0][2]["reply_id"]
        canceller, asked = None, None
        for _attempt in range(200):
            target = cluster.servers[_attempt % len(cluster.servers)]
            candidate = cluster.client(target)
            probe = candidate.get("/healthz")
            if response_pid(target, probe) != runner:
                canceller = candidate
                break
            candidate.close()
        assert canceller is not None, "no connection landed on another process"
        asked = time.monotonic()
        cancelled = canceller.post(f"/replies/{reply_id}/cancel")
        took = time.monotonic() - asked
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled" and took < 1.0, took
        rest = read_until(events, lambda event, so_far: False)
    assert rest[-1][1] == "cancelled" and rest[-1][2]["reply_id"] == reply_id
    assert_continues(seen, rest)
    fake.wait_for(outcome="disconnected", timeout=WAIT)
    again = canceller.post(f"/replies/{reply_id}/cancel")  # idempotent
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    turn = audit(canceller, seen[0][2]["conversation_id"])["turns"][-1]
    assert turn["status"] == "incomplete" and turn["content"] == text_of(seen, rest)


@pytest.mark.parametrize("on_disconnect", ["cancel", "continue"])
def test_on_disconnect_cancel_stops_the_reply_and_continue_lets_it_finish(cluster, fake, on_disconnect) -> None:
    fake.script(slow(60))
    server = cluster.servers[0]
    seen, _ = start_stream(cluster, server, {"message": "Leave early", "on_disconnect": on_disconnect},
                           tokens_seen(5))
    reply_id, conversation_id = seen[0][2]["reply_id"], seen[0][2]["conversation_id"]
    client = cluster.client(server)
    # The reply's end, however it comes: its events say when (no polling, no sleeping).
    rest = read_until(sse_events_of(client, reply_id, seen[-1][0]), lambda event, so_far: False)
    assert_continues(seen, rest)
    status = client.get(f"/replies/{reply_id}").json()
    turn = audit(client, conversation_id)["turns"][-1]
    if on_disconnect == "cancel":
        fake.wait_for(outcome="disconnected", timeout=WAIT)
        assert rest[-1][1] == "cancelled" and status["status"] == "cancelled"
        assert turn["status"] == "incomplete" and text_of(seen, rest) != "".join(f"tok{i} " for i in range(60))
        assert text_of(seen, rest).startswith("tok0 tok1 tok2 tok3 tok4 ")
    else:
        assert rest[-1][1] == "done" and status["status"] == "complete"
        assert turn["status"] == "complete" and text_of(seen, rest) == "".join(f"tok{i} " for i in range(60))
        assert [s["outcome"] for s in fake.streams()] == ["completed"]
    assert turn["content"] == text_of(seen, rest)


def sse_events_of(client: httpx.Client, reply_id: str, after: int) -> Iterator[tuple[int, str, dict]]:
    with client.stream("GET", f"/replies/{reply_id}/events", headers={"Last-Event-ID": str(after)}) as response:
        assert response.status_code == 200
        yield from sse_events(response)


def test_a_tool_loop_resumed_between_steps(cluster, fake) -> None:
    """Dropped right after a step's tool result, resumed on another process: the next step's events, all of them."""
    fake.script({"text": "Let me work it out.", "tool_calls": [{"name": "calculator", "input": {"expression": "6*7"}}]},
                {"tokens": [f"w{i} " for i in range(30)], "token_delay": 0.02})
    server = cluster.servers[0]
    first, runner = start_stream(cluster, server, {"message": "What is six times seven?"},
                                 lambda event, seen: event[1] == "tool_result")
    assert [name for _, name, _ in first] == ["start", "token", "tool_use", "step", "tool_result"]
    assert first[-1][2]["content"] == "42" and first[-1][2]["is_error"] is False
    reply_id = first[0][2]["reply_id"]
    rest, _ = resume(cluster, reply_id, on="other", runner=runner, after=first[-1][0])
    assert_continues(first, rest)
    names = [name for _, name, _ in rest]
    assert names == ["token"] * 30 + ["step", "done"]
    assert rest[-2][2]["step"] == 2 and rest[-1][2]["steps"] == 2 and rest[-1][2]["status"] == "complete"
    turns = audit(cluster.client(server), first[0][2]["conversation_id"])["turns"]
    assert [(t["role"], t["step"]) for t in turns] == [("user", 0), ("assistant", 1), ("user", 1), ("assistant", 2)]
    assert turns[-1]["content"] == text_of(rest) and turns[1]["content"] == text_of(first)
    assert len(fake.requests()) == 2


def test_two_serve_processes_on_one_sqlite_file_resume_and_cancel_across(start_server, tmp_path, fake) -> None:
    """Not workers of one `serve` but two `serve` commands on one file (a rolling restart overlaps them, say):
    with AGENT_WORKERS=2 they talk through the table channel like workers do."""
    env = server_env(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'shared.db'}", fake, AGENT_WORKERS="2")
    a, b = start_server(env), start_server(env)
    deployment = Deployment("sqlite", [a, b])
    try:
        fake.script(slow(40), slow(1000))
        first, runner = start_stream(deployment, a, {"message": "Across processes"}, tokens_seen(5))
        rest, pid = resume(deployment, first[0][2]["reply_id"], on="other", runner=runner, after=first[-1][0])
        assert pid == b.proc.pid and rest[-1][1] == "done"
        assert_continues(first, rest)
        assert text_of(first, rest) == "".join(f"tok{i} " for i in range(40))

        client_a = deployment.client(a)
        with client_a.stream("POST", "/agent/stream", json={"message": "Cancel me from b"}) as response:
            events = sse_events(response)
            seen = read_until(events, tokens_seen(2))
            asked = time.monotonic()
            cancelled = deployment.client(b).post(f"/replies/{seen[0][2]['reply_id']}/cancel")
            assert cancelled.json()["status"] == "cancelled" and time.monotonic() - asked < 1.0
            assert read_until(events, lambda event, so_far: False)[-1][1] == "cancelled"
    finally:
        deployment.close()
    assert fake.violations() == []


# -- kill -9 ---------------------------------------------------------------------------------------------


def test_kill_9_mid_reply_then_restart_shows_it_interrupted_everywhere(e2e_database_url, start_server, fake) -> None:
    env = server_env(e2e_database_url, fake)
    server = start_server(env)
    fake.script({}, slow(400))
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT, headers=auth()) as client:
        first = client.post("/agent", json={"message": "Before the crash"})
        assert first.status_code == 200, first.text
        conversation_id = first.json()["conversation_id"]
        with client.stream("POST", "/agent/stream",
                           json={"conversation_id": conversation_id, "message": "Crash in the middle"}) as response:
            seen = read_until(sse_events(response), tokens_seen(25))
            server.kill()
    reply_id = seen[0][2]["reply_id"]
    fake.wait_for(outcome="disconnected", timeout=WAIT)

    restarted = start_server(env)  # its start-up notices the dead process's reply
    with httpx.Client(base_url=restarted.base_url, timeout=TIMEOUT, headers=auth()) as client:
        status = client.get(f"/replies/{reply_id}").json()
        assert status["status"] == "interrupted" and status["finished_at"] is not None
        replay = list(sse_events_of(client, reply_id, 0))
        assert [seq for seq, _, _ in replay] == list(range(1, len(replay) + 1))
        assert replay[-1][1] == "error" and replay[-1][2]["error"]["type"] == "interrupted"
        assert status["last_seq"] == replay[-1][0]
        # The client that saw events live resumes from where it was: the end comes after what it saw.
        resumed = list(sse_events_of(client, reply_id, seen[-1][0]))
        assert resumed[-1][1] == "error" and resumed[-1][2]["error"]["type"] == "interrupted"
        assert [seq for seq, _, _ in resumed] == list(range(seen[-1][0] + 1, seen[-1][0] + 1 + len(resumed)))

        stored = audit(client, conversation_id)
        partial = stored["turns"][-1]
        assert (partial["role"], partial["status"], partial["reply_id"]) == ("assistant", "incomplete", reply_id)
        assert partial["content"] == text_of(replay) and partial["content"].startswith("tok0 tok1 ")
        assert status["turn_id"] == partial["id"]
        call = next(r for r in stored["requests"] if r["reply_id"] == reply_id)
        assert (call["status"], call["error_type"]) == ("cancelled", "interrupted")
        # Its usage so far went to storage with the events the replay shows (tokens among them): the input
        # tokens message_start reported, their cost, and the request id are in the ledger, and charged.
        assert call["input_tokens"] > 0 and call["cost_usd"] > 0 and call["upstream_request_id"]
        spent = client.get("/usage").json()["totals"]["cost_usd"]
        assert Decimal(str(spent)) == sum(Decimal(str(r["cost_usd"])) for r in stored["requests"])
        # The calls before it keep their usage and cost.
        before = next(r for r in stored["requests"] if r["reply_id"] == first.json()["reply_id"])
        assert (before["status"], before["input_tokens"] > 0, before["cost_usd"] is not None) == ("ok", True, True)

        fake.script({})
        after = client.post("/agent", json={"conversation_id": conversation_id, "message": "After the crash"})
        assert after.status_code == 200, after.text
        assert after.json()["content"] == "Echo: After the crash"
    assert fake.violations() == []


# -- WebSocket helpers -----------------------------------------------------------------------------------


@contextmanager
def ws_where(deployment: Deployment, runner: int, query: str, *, on: str) -> Iterator[ClientConnection]:
    """A WebSocket served by the runner (``on="same"``) or another process (``"other"``): connect again until one
    is (the others are closed before they read anything)."""
    for attempt in range(200):
        target = deployment.servers[attempt % len(deployment.servers)]
        with ws_connect(f"{target.ws_url}?{query}") as ws:
            if (serving_pid(target, ws.local_address[1]) == runner) == (on == "same"):
                yield ws
                return
    raise AssertionError(f"no WebSocket landed on the {on} process")


def ws_connect(url: str) -> ClientConnection:
    return connect(url, additional_headers={"Authorization": f"Bearer {ALICE}"}, proxy=None, open_timeout=WAIT,
                   close_timeout=2)


def frame(ws: ClientConnection) -> dict:
    deadline = time.monotonic() + WAIT
    while True:
        data = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.001)))
        if data.get("type") != "ping":
            return data


def frames_until(ws: ClientConnection, stop) -> list[dict]:  # type: ignore[no-untyped-def]
    seen: list[dict] = []
    while True:
        seen.append(frame(ws))
        if seen[-1]["type"] in END or stop(seen[-1], seen):
            return seen
