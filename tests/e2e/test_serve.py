"""The server as an operator runs it: `agent-server serve|migrate` and `uvicorn` as real processes.

kill -9, SIGTERM with replies in flight, start-up refusals, the offline stub and several workers on one
SQLite file. Faults come from the fake upstream's script; waits are on the stream, the fake or the process.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import auth, plain_messages
from tests.e2e.conftest import free_port, metrics_auth, server_env
from tests.e2e.sse_client import COMMENT, SSEEvent, iter_events

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _command(script: str, module: str) -> list[str]:
    """The installed console script, as an operator runs it (``python -m`` when there is none)."""
    return [str(BIN / script)] if (BIN / script).exists() else [sys.executable, "-m", module]


AGENT_SERVER = _command("agent-server", "agent_server")
UVICORN = _command("uvicorn", "uvicorn")


def run(command: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """Run to completion; (exit code, stdout and stderr together)."""
    result = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=timeout)
    return result.returncode, result.stdout


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def client_for(server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=30, headers=auth())


def say(client: httpx.Client, message: str, conversation_id: str | None = None) -> dict:
    body = {"message": message}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    response = client.post("/agent", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def conversation(client: httpx.Client, conversation_id: str) -> dict:
    response = client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()


def named(events: list[SSEEvent]) -> list[SSEEvent]:
    """Part 1's events (no comments, no Part 2 ``step``/tool events)."""
    return [event for event in events if event.event != COMMENT
            and event.event not in ("step", "thinking", "tool_use", "tool_result", "requires_action")]


def token_text(events: list[SSEEvent]) -> str:
    return "".join(event.data["text"] for event in events if event.event == "token")


def upstream_history(fake) -> list[tuple[str, str]]:
    """(role, text) of the messages the fake received in its last request."""
    return [(m["role"], m["content"]) for m in plain_messages(fake.requests()[-1]["body"]["messages"])]


# -- kill -9 -------------------------------------------------------------------------------------------------


def test_kill_9_keeps_every_committed_turn_and_frees_the_reply_lock(server, start_server, e2e_database_url, fake):
    with client_for(server) as client:
        one = say(client, "One")
        conversation_id = one["conversation_id"]
        fake.script({"tokens": ["Two ", "streamed"]})
        body = {"message": "Two", "conversation_id": conversation_id}
        with client.stream("POST", "/agent/stream", json=body) as response:
            events = named(list(iter_events(response)))
        assert events[-1].event == "done", events
        three = say(client, "Three", conversation_id)
        committed = conversation(client, conversation_id)

        # A slow reply in flight when the process dies: it holds the conversation's reply lock.
        fake.script({"n_tokens": 50, "token_delay": 0.2})
        body = {"message": "Slow", "conversation_id": conversation_id}
        with client.stream("POST", "/agent/stream", json=body) as response:
            stream = iter_events(response)
            next(event for event in stream if event.event == "token")
            server.kill()
            with pytest.raises(httpx.TransportError):  # the body ends without its last chunk
                for event in stream:
                    assert event.event in ("token", COMMENT), event
    fake.wait_for(outcome="disconnected", timeout=10)  # the upstream call died with the process

    restarted = start_server(server_env(e2e_database_url, fake))
    with client_for(restarted) as client:
        audit = conversation(client, conversation_id)
        assert audit["turns"][: len(committed["turns"])] == committed["turns"]
        assert audit["requests"][: len(committed["requests"])] == committed["requests"]
        assert [(t["role"], t["content"], t["status"]) for t in committed["turns"]] == [
            ("user", "One", "complete"), ("assistant", one["content"], "complete"),
            ("user", "Two", "complete"), ("assistant", "Two streamed", "complete"),
            ("user", "Three", "complete"), ("assistant", three["content"], "complete"),
        ]
        # The dead process was on this machine: its lock is free at once, not after the 30 s expiry.
        response = client.post("/agent", json={"message": "Four", "conversation_id": conversation_id})
        assert response.status_code == 200, response.text
    # Only complete exchanges go upstream: the interrupted "Slow" has no reply and is left out.
    assert upstream_history(fake) == [
        ("user", "One"), ("assistant", one["content"]),
        ("user", "Two"), ("assistant", "Two streamed"),
        ("user", "Three"), ("assistant", three["content"]),
        ("user", "Four"),
    ]


# -- SIGTERM -------------------------------------------------------------------------------------------------


def stream_across_sigterm(server, body: dict) -> list[SSEEvent]:
    """Start a streamed reply, send SIGTERM once its first token arrived, read on until the server ends it."""
    with client_for(server) as client:
        with client.stream("POST", "/agent/stream", json=body) as response:
            assert response.status_code == 200, response.read()
            stream = iter_events(response)
            events = []
            for event in stream:
                events.append(event)
                if event.event == "token":
                    break
            server.signal(signal.SIGTERM)
            events.extend(stream)
    return named(events)


def test_sigterm_drains_replies_in_flight(start_server, e2e_database_url, fake):
    # A 1 s grace period and a 10 s reply: interrupted with a final `shutdown` event, kept as incomplete.
    server = start_server(server_env(e2e_database_url, fake, AGENT_SHUTDOWN_GRACE_SECONDS="1"))
    fake.script({"n_tokens": 20, "token_delay": 0.5})
    events = stream_across_sigterm(server, {"message": "Long story"})
    assert events[0].event == "start" and events[-1].event == "error", [e.event for e in events]
    assert events[-1].data["error"]["type"] == "shutdown", events[-1]
    assert {e.event for e in events[1:-1]} == {"token"}
    seen = token_text(events)
    assert server.wait(timeout=20) == 0, server.log()
    fake.wait_for(outcome="disconnected", timeout=10)  # the upstream call was stopped, not left running

    # After a restart: the partial turn holds exactly what the client saw.
    restarted = start_server(server_env(e2e_database_url, fake, AGENT_SHUTDOWN_GRACE_SECONDS="10"))
    with client_for(restarted) as client:
        audit = conversation(client, events[0].data["conversation_id"])
    assistant = [t for t in audit["turns"] if t["role"] == "assistant"]
    assert [(t["status"], t["content"]) for t in assistant] == [("incomplete", seen)]
    assert [r["status"] for r in audit["requests"]] == ["cancelled"]

    # A 10 s grace period and a 1 s reply: it finishes normally, then the process exits cleanly.
    fake.script({"n_tokens": 5, "token_delay": 0.2})
    events = stream_across_sigterm(restarted, {"message": "Short one"})
    assert [e.event for e in events] == ["start", *["token"] * 5, "done"], events
    assert restarted.wait(timeout=20) == 0, restarted.log()


# -- the offline stub and the start-up refusals ---------------------------------------------------------------


def test_offline_stub_without_an_upstream_key(start_server, e2e_database_url, fake):
    server = start_server(server_env(e2e_database_url, None, AGENT_STUB_TOKEN_DELAY="0"))
    with client_for(server) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["offline_stub"] is True, health.text
        reply = say(client, "Anyone there?")
    assert "[offline stub]" in reply["content"]
    assert "OFFLINE STUB" in server.log()
    assert fake.requests() == []


def test_public_host_without_upstream_key_is_refused(tmp_path, e2e_database_url):
    code, output = run([*AGENT_SERVER, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                       env=server_env(e2e_database_url, None), cwd=tmp_path)
    assert code != 0
    assert len(lines(output)) == 1 and "ANTHROPIC_API_KEY" in output, output


def test_public_host_without_client_keys_needs_allow_anonymous(tmp_path, start_server, e2e_database_url, fake):
    env = server_env(e2e_database_url, fake, AGENT_API_KEYS="")
    code, output = run([*AGENT_SERVER, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
                       env=env, cwd=tmp_path)
    assert code != 0
    assert len(lines(output)) == 1 and "AGENT_API_KEYS" in output, output

    # Allowed explicitly: it starts (briefly on 0.0.0.0, the only non-loopback bind of the suite) and serves anyone.
    server = start_server({**env, "AGENT_ALLOW_ANONYMOUS": "1"}, args=("--host", "0.0.0.0"))
    response = httpx.post(f"{server.base_url}/agent", json={"message": "Hi"}, timeout=30)
    assert response.status_code == 200, response.text
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=20) == 0, server.log()


# -- the schema ----------------------------------------------------------------------------------------------


def test_migrate_from_an_unrelated_directory_creates_the_schema(tmp_path, fake):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    database = tmp_path / "deploy" / "state" / "agent.db"
    code, output = run([*AGENT_SERVER, "migrate"], env=server_env(f"sqlite+aiosqlite:///{database}", fake),
                       cwd=elsewhere)
    assert code == 0, output
    assert "Traceback" not in output
    head = ScriptDirectory(str(REPOSITORY / "migrations")).get_current_head()
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"conversations", "turns", "requests"} <= tables
    assert list(elsewhere.iterdir()) == [], "migrate wrote into its working directory"


def test_unmigrated_database_is_refused_with_a_one_line_reason(tmp_path, fake):
    commands = {
        "serve --no-migrate": [*AGENT_SERVER, "serve", "--no-migrate", "--port", str(free_port())],
        "uvicorn": [*UVICORN, "agent_server.app:app", "--host", "127.0.0.1", "--port", str(free_port())],
    }
    processes = {}
    for name, command in commands.items():  # both at once: each spends seconds importing the app
        url = f"sqlite+aiosqlite:///{tmp_path / name.replace(' ', '_') / 'agent.db'}"
        processes[name] = subprocess.Popen(command, env=server_env(url, fake), cwd=tmp_path,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    problems = []
    for name, process in processes.items():
        output, _ = process.communicate(timeout=60)
        reasons = [line for line in lines(output) if "migrate" in line]
        if process.returncode == 0 or "Traceback" in output or len(reasons) != 1:
            problems.append(f"{name}: exit {process.returncode}, {len(reasons)} line(s) naming migrate:\n{output}")
    assert not problems, "\n".join(problems)


# -- several workers -----------------------------------------------------------------------------------------


def worker_processes(supervisor_pid: int) -> list[int]:
    """Child processes of the supervisor, minus multiprocessing's resource tracker."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == supervisor_pid and b"resource_tracker" not in command:
            children.append(int(entry.name))
    return children


def test_two_workers_share_one_database(start_server, e2e_database_url, fake):
    server = start_server(server_env(e2e_database_url, fake), args=("--workers", "2"))
    assert len(worker_processes(server.proc.pid)) == 2

    def fresh_connection(body: dict) -> httpx.Response:  # no keep-alive: each request may land on either worker
        return httpx.post(f"{server.base_url}/agent", json=body, headers=auth(), timeout=30)

    with ThreadPoolExecutor(max_workers=10) as pool:
        parallel = list(pool.map(fresh_connection, [{"message": f"Parallel {i}"} for i in range(10)]))
    assert [r.status_code for r in parallel] == [200] * 10, [r.text for r in parallel if r.status_code != 200]
    assert len({r.json()["conversation_id"] for r in parallel}) == 10

    first = fresh_connection({"message": "Turn 0"})
    assert first.status_code == 200, first.text
    conversation_id = first.json()["conversation_id"]
    replies = [first.json()["content"]]
    for i in range(1, 10):
        response = fresh_connection({"message": f"Turn {i}", "conversation_id": conversation_id})
        assert response.status_code == 200, (i, response.text)
        assert response.json()["conversation_id"] == conversation_id
        replies.append(response.json()["content"])
    # The last call carried the whole conversation, whichever worker wrote each earlier turn.
    history = [turn for i in range(9) for turn in (("user", f"Turn {i}"), ("assistant", replies[i]))]
    assert upstream_history(fake) == [*history, ("user", "Turn 9")]
    with client_for(server) as client:
        audit = conversation(client, conversation_id)
    assert [(t["role"], t["content"], t["status"]) for t in audit["turns"]] == [
        (role, text, "complete") for role, text in [*history, ("user", "Turn 9"), ("assistant", replies[9])]
    ]


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition (None when it is not there)."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return None


def replies_counted_by_each_worker(folder: Path) -> dict[int, float]:
    """Worker pid -> the upstream calls it counted, read from its own file in the shared metrics folder."""
    counted = {}
    for path in folder.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for family in MultiProcessCollector.merge([str(path)]):
            for found in family.samples:
                if found.name == "agent_upstream_calls_total":
                    counted[pid] = counted.get(pid, 0) + found.value
    return counted


def leave_a_stale_count(folder: Path, pid: int, replies: float) -> None:
    """What a worker of an earlier run left in the metrics folder: ``replies`` upstream calls."""
    folder.mkdir(parents=True, exist_ok=True)
    stale = MmapedDict(str(folder / f"counter_{pid}.db"))
    key = mmap_key("agent_upstream_calls", "agent_upstream_calls_total", ("route", "model", "status"),
                   ("agent", "claude-sonnet-5-5", "ok"), "Replies asked of the upstream, by route, model and outcome")
    stale.write_value(key, replies, 0.0)
    stale.close()


def test_a_scrape_adds_up_every_workers_metrics_also_after_one_dies(start_server, e2e_database_url, fake, tmp_path):
    folder = tmp_path / "metrics"
    leave_a_stale_count(folder, pid=4_000_000, replies=1000)  # above any live pid: an earlier run's, wiped at start
    server = start_server(server_env(e2e_database_url, fake, PROMETHEUS_MULTIPROC_DIR=str(folder)),
                          args=("--workers", "2"))
    workers = set(worker_processes(server.proc.pid))
    assert len(workers) == 2

    def fresh_connection(i: int) -> httpx.Response:  # no keep-alive: each request may land on either worker
        return httpx.post(f"{server.base_url}/agent", json={"message": f"Hello {i}"}, headers=auth(), timeout=30)

    sent = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        while set(replies_counted_by_each_worker(folder)) != workers and sent < 160:
            responses = list(pool.map(fresh_connection, range(sent, sent + 8)))
            assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
            sent += 8
    counted = replies_counted_by_each_worker(folder)
    assert set(counted) == workers and sum(counted.values()) == sent  # each worker served some of them

    def scrape() -> str:  # a fresh connection: either worker may answer
        response = httpx.get(f"{server.base_url}/metrics", headers=metrics_auth(), timeout=30)
        assert response.status_code == 200, response.text
        return response.text

    for _ in range(4):  # each worker alone counted fewer than `sent`: every scrape must add up both
        text = scrape()
        assert sample(text, "agent_http_requests_total", route="/agent", status="200") == sent
        assert sample(text, "agent_upstream_calls_total", route="agent", status="ok") == sent
        assert sample(text, "agent_replies_in_flight") == 0

    victim = min(workers)
    assert (folder / f"gauge_livesum_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (replaced := set(worker_processes(server.proc.pid))) == workers or len(replaced) != 2:
        assert time.monotonic() < deadline, f"the supervisor did not replace worker {victim}"
        time.sleep(0.1)
    server.wait_ready()
    assert not (folder / f"gauge_livesum_{victim}.db").exists()  # the dead worker's gauges no longer count
    for _ in range(4):
        text = scrape()
        assert sample(text, "agent_upstream_calls_total", route="agent", status="ok") == sent  # kept
        assert sample(text, "agent_replies_in_flight") == 0


def test_serve_keeps_its_workers_metrics_in_a_folder_of_its_own_and_removes_it(start_server, e2e_database_url,
                                                                                fake):
    server = start_server(server_env(e2e_database_url, fake), args=("--workers", "2"))
    announced = [json.loads(line)["message"] for line in lines(server.log()) if "metrics are added up" in line]
    assert len(announced) == 1, server.log()
    folder = Path(announced[0].rsplit(" ", 1)[1])
    assert folder.is_dir()
    with client_for(server) as client:
        say(client, "Hello")
        scrape = client.get("/metrics", headers=metrics_auth()).text
        assert sample(scrape, "agent_upstream_calls_total", route="agent", status="ok") == 1

    server.stop()

    assert server.proc.returncode == 0 and not folder.exists()


def test_one_worker_given_a_metrics_folder_starts_it_afresh(start_server, e2e_database_url, fake, tmp_path):
    folder = tmp_path / "metrics"
    leave_a_stale_count(folder, pid=4_000_000, replies=1000)
    server = start_server(server_env(e2e_database_url, fake, PROMETHEUS_MULTIPROC_DIR=str(folder)))

    with client_for(server) as client:
        say(client, "Hello")
        text = client.get("/metrics", headers=metrics_auth()).text

    assert sample(text, "agent_upstream_calls_total", route="agent", status="ok") == 1
    assert sample(text, "agent_replies_in_flight") == 0
