"""Replies outlive their connection (API.md), through the real app, in process, on SQLite and PostgreSQL: a
background reply polled to completion, its events replayed after ``Last-Event-ID`` or ``?after=``, followed and
cancelled from another instance of the server (two apps on one database: the table channel on SQLite, LISTEN/NOTIFY
on PostgreSQL), the events of finished replies expiring under a controlled clock, and the follower of a reply
whose process died.

The test client buffers a streamed response until it ends (httpx's ASGI transport): these tests read whole
streams; tests/e2e/test_resume.py drops and resumes real connections mid-reply.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from agent_server.db import lease, reads, writes
from agent_server.db.models import new_id
from agent_server.money.prices import to_nano
from agent_server.engine import journal
from tests.conftest import app_client, auth, make_settings

TOOLS_FILE = Path(__file__).resolve().parents[2] / "tools.example.toml"
WAIT = 10.0


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@pytest.fixture
def settings(database_url, fake):
    """Two workers' worth of settings: on SQLite the instances then talk through the table channel."""
    return make_settings(database_url, fake, AGENT_WORKERS=2, AGENT_TOOLS_FILE=str(TOOLS_FILE),
                         AGENT_REPLY_EVENTS_HOURS=1)


@pytest.fixture
async def client(settings, fake):
    async with app_client(settings) as http:
        http.headers.update(auth())
        yield http
    assert fake.violations() == []


def events_of(text: str) -> list[tuple[int, str, dict]]:
    """``(id, event, data)`` of every event of an SSE body (comments skipped); each event must have an id."""
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return out


async def replay(client, reply_id: str, **headers_or_query) -> list[tuple[int, str, dict]]:
    headers = {"Last-Event-ID": headers_or_query.pop("last_event_id")} if "last_event_id" in headers_or_query else {}
    response = await client.get(f"/replies/{reply_id}/events", headers=headers, params=headers_or_query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return events_of(response.text)


def text_of(events) -> str:  # type: ignore[no-untyped-def]
    return "".join(data["text"] for _, name, data in events if name == "token")


async def poll_status(client, reply_id: str, until) -> dict:  # type: ignore[no-untyped-def]
    """GET /replies/{id} until ``until(status)`` holds (what a client of a background reply does)."""
    deadline = time.monotonic() + WAIT
    while True:
        response = await client.get(f"/replies/{reply_id}")
        assert response.status_code == 200, response.text
        status = response.json()
        if until(status):
            return status
        assert time.monotonic() < deadline, f"reply never reached the state: {status}"
        await asyncio.sleep(0.02)


async def audit(client, conversation_id: str) -> dict:
    response = await client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def background(client, fake, message: str = "Go", **behaviour) -> dict:
    fake.script(behaviour or {})
    response = await client.post("/agent", json={"message": message, "background": True})
    assert response.status_code == 202, response.text
    return response.json()


# -- one instance ----------------------------------------------------------------------------------------


async def test_a_background_reply_is_polled_to_completion_and_replayed(client, fake) -> None:
    started = await background(client, fake, "Count for me", n_tokens=25, token_delay=0.01)
    assert set(started) == {"reply_id", "conversation_id", "status"} and started["status"] == "running"
    reply_id = started["reply_id"]
    status = await poll_status(client, reply_id, lambda s: s["status"] != "running")
    assert status["status"] == "complete" and status["steps"] == 1
    assert status["conversation_id"] == started["conversation_id"]

    stored = await audit(client, started["conversation_id"])
    assistant = stored["turns"][-1]
    [call] = stored["requests"]
    assert status["turn_id"] == assistant["id"] and assistant["status"] == "complete"
    assert status["usage"]["input_tokens"] == call["input_tokens"] > 0
    assert status["usage"]["output_tokens"] == call["output_tokens"] == 25
    assert status["estimated_cost_usd"] == call["cost_usd"]
    assert status["created_at"] <= status["finished_at"]

    events = await replay(client, reply_id)
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert status["last_seq"] == len(events)
    assert [name for _, name, _ in events][0] == "start" and events[-1][1] == "done"
    assert events[0][2]["reply_id"] == reply_id and events[-1][2]["reply_id"] == reply_id
    assert text_of(events) == assistant["content"] == "".join(f"tok{i} " for i in range(25))


async def test_replay_after_last_event_id_or_after_sends_exactly_the_rest(client, fake) -> None:
    fake.script({"n_tokens": 12})
    response = await client.post("/agent", json={"message": "Twelve"})
    assert response.status_code == 200, response.text
    reply_id = response.json()["reply_id"]
    everything = await replay(client, reply_id)
    last = len(everything)
    for n in (1, 5, last - 1):
        assert await replay(client, reply_id, last_event_id=str(n)) == everything[n:]
        assert await replay(client, reply_id, after=n) == everything[n:]
    # The header wins over the query; past the end there is nothing more to send.
    assert await replay(client, reply_id, last_event_id="3", after=7) == everything[3:]
    assert await replay(client, reply_id, after=last) == []
    for bad in ("-1", "x", "1.5", "9" * 13):
        response = await client.get(f"/replies/{reply_id}/events", params={"after": bad})
        assert response.status_code == 422, (bad, response.text)
    response = await client.get("/replies/reply_doesnotexist/events")
    assert response.status_code == 404


async def test_events_of_finished_replies_expire_but_the_last(client, fake) -> None:
    """AGENT_REPLY_EVENTS_HOURS=1: the sweeper, on a controlled clock, leaves each finished reply its final event;
    a running reply and a recently finished one keep all of theirs."""
    fake.script({"n_tokens": 8})
    done = (await client.post("/agent", json={"message": "Finished"})).json()
    fake.script({"text": "Let me.", "tool_calls": [{"name": "save_note", "input": {"text": "keep"}}]})
    paused = (await client.post("/agent", json={"message": "Pause"})).json()
    assert paused["status"] == "requires_action"
    complete_events = await replay(client, done["reply_id"])
    paused_events = await replay(client, paused["reply_id"])
    running = await background(client, fake, "Still going", n_tokens=15, token_delay=0.02)
    await asyncio.to_thread(fake.wait_for, "open")

    lifecycle = client.app.runtime.lifecycle
    real = now()
    lifecycle.clock = lambda: real + timedelta(minutes=30)
    assert (await lifecycle.sweep())["reply_events"] == 0
    assert await replay(client, done["reply_id"]) == complete_events

    lifecycle.clock = lambda: real + timedelta(hours=2)
    swept = await lifecycle.sweep()
    assert swept["reply_events"] == len(complete_events) - 1 + len(paused_events) - 1
    for reply_id, events in ((done["reply_id"], complete_events), (paused["reply_id"], paused_events)):
        assert await replay(client, reply_id) == [events[-1]]
        assert await replay(client, reply_id, last_event_id="2") == [events[-1]]
        assert await replay(client, reply_id, after=len(events)) == []
    assert paused_events[-1][1] == "done" and paused_events[-1][2]["status"] == "requires_action"

    # What stays: the reply's status, the turns and calls; the running reply's events, all of them.
    assert (await client.get(f"/replies/{done['reply_id']}")).json()["status"] == "complete"
    assert (await audit(client, done["conversation_id"]))["turns"][-1]["content"] == text_of(complete_events)
    await poll_status(client, running["reply_id"], lambda s: s["status"] == "complete")
    events = await replay(client, running["reply_id"])
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1)) and text_of(events).count("tok") == 15


async def test_followers_far_behind_a_running_reply_are_fed_from_storage_then_live(client, fake, monkeypatch) -> None:
    """A running reply keeps only its newest events in memory: a follower from further back reads the rest from
    storage, then joins the live ones, with nothing lost or repeated at the seam."""
    monkeypatch.setattr(journal, "KEEP_IN_MEMORY", 32)
    started = await background(client, fake, "Very many", n_tokens=300, token_delay=0.005)
    reply_id = started["reply_id"]
    await poll_status(client, reply_id, lambda s: s["last_seq"] > 120 or s["status"] != "running")
    process = client.app.runtime.supervisor.get(reply_id)
    assert process is not None and process.journal._base > 40, "memory should hold only the newest events by now"
    followers = [asyncio.create_task(replay(client, reply_id, after=after)) for after in (0, 40, 100)]
    status = await poll_status(client, reply_id, lambda s: s["status"] != "running")
    assert status["status"] == "complete"
    everything, *later = await asyncio.wait_for(asyncio.gather(*followers), WAIT)
    assert [seq for seq, _, _ in everything] == list(range(1, status["last_seq"] + 1))
    assert later == [everything[40:], everything[100:]]
    assert text_of(everything) == (await audit(client, started["conversation_id"]))["turns"][-1]["content"]


# -- two instances on one database -----------------------------------------------------------------------


async def test_another_instance_follows_a_running_reply_and_reads_its_progress(settings, fake) -> None:
    async with app_client(settings) as a, app_client(settings) as b:
        for http in (a, b):
            http.headers.update(auth())
        started = await background(a, fake, "Long one", n_tokens=60, token_delay=0.02)
        reply_id = started["reply_id"]
        follow = asyncio.create_task(b.get(f"/replies/{reply_id}/events"))
        # B does not run it, yet its status shows how far the stored events go.
        mid = await poll_status(b, reply_id, lambda s: s["status"] != "running" or s["last_seq"] > 5)
        assert mid["status"] == "running", "the reply ended before its progress could be seen"
        response = await asyncio.wait_for(follow, WAIT)
        assert response.status_code == 200, response.text
        events = events_of(response.text)
        assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
        assert events[-1][1] == "done"
        assert text_of(events) == (await audit(b, started["conversation_id"]))["turns"][-1]["content"]
        assert text_of(events) == "".join(f"tok{i} " for i in range(60))
        final = (await b.get(f"/replies/{reply_id}")).json()
        assert (final["status"], final["last_seq"]) == ("complete", len(events))
    assert fake.violations() == []


async def test_cancel_from_another_instance_stops_the_reply_within_a_second(settings, fake) -> None:
    async with app_client(settings) as a, app_client(settings) as b:
        for http in (a, b):
            http.headers.update(auth())
        started = await background(a, fake, "Never ending", n_tokens=1000, token_delay=0.02)
        reply_id = started["reply_id"]
        await poll_status(b, reply_id, lambda s: s["last_seq"] > 3)
        asked = time.monotonic()
        response = await b.post(f"/replies/{reply_id}/cancel")
        assert time.monotonic() - asked < 1.0
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        await asyncio.to_thread(fake.wait_for, "disconnected")
        # Idempotent, on either instance.
        for http in (b, a):
            again = await http.post(f"/replies/{reply_id}/cancel")
            assert again.status_code == 200 and again.json()["status"] == "cancelled"

        events = await replay(b, reply_id)
        assert events[-1][1] == "cancelled" and events[-1][2]["reply_id"] == reply_id
        assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
        stored = await audit(b, started["conversation_id"])
        assert stored["turns"][-1]["status"] == "incomplete"
        assert stored["turns"][-1]["content"] == text_of(events)
        assert [(r["status"], r["output_tokens"] > 0) for r in stored["requests"]] == [("cancelled", True)]
        # The conversation goes on, from either instance.
        fake.script({})
        response = await b.post("/agent", json={"conversation_id": started["conversation_id"], "message": "Hi"})
        assert response.status_code == 200, response.text
    assert fake.violations() == []


# -- a reply whose process died --------------------------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait(timeout=10)
    return process.pid


async def test_a_follower_of_a_reply_whose_process_died_gets_interrupted(client, fake) -> None:
    """A reply left running by a process that died (as kill -9 leaves it, its events stored up to some point):
    a cancel (or a follower) closes it as interrupted, and a follower that had seen further than what was stored
    still gets the end, numbered after what it saw."""
    first = (await client.post("/agent", json={"message": "Before"})).json()
    conversation_id, reply_id, call_id = first["conversation_id"], new_id("reply"), new_id("call")
    at = now()
    stamp = {"created_at": at}
    token = lease.new_token()
    events = [("start", {"reply_id": reply_id, "conversation_id": conversation_id, "model": first["model"],
                         "context": {"turns_sent": 3, "turns_omitted": 0}}),
              ("token", {"text": "Half a"}), ("token", {"text": " thought"})]
    prompt_id = new_id("turn")
    await client.app.runtime.db.write(writes.apply, ops=[
        writes.insert_reply(id=reply_id, conversation_id=conversation_id, owner="alice", route="stream",
                            model=first["model"], status="running", steps=0, last_seq=0, prompt_turn_id=prompt_id,
                            **stamp),
        writes.insert_turn(id=prompt_id, conversation_id=conversation_id, reply_id=reply_id, seq=3, step=0,
                           role="user", content="Then", content_blocks='[{"type":"text","text":"Then"}]', tokens=1,
                           status="complete", updated_at=at, **stamp),
        writes.insert_call(id=call_id, conversation_id=conversation_id, owner="alice", reply_id=reply_id, step=1,
                           prompt_turn_id=prompt_id, route="stream", model=first["model"], status="running",
                           # the usage so far, as the running process stores it with its events
                           upstream_request_id="req_dead", input_tokens=1000, cost_nano_usd=3_000_000, **stamp),
        writes.insert_events([{"reply_id": reply_id, "seq": n, "type": name, "data": json.dumps(data), **stamp}
                              for n, (name, data) in enumerate(events, 1)]),
        writes.update_conversation(conversation_id, **lease.claim_values(
            token=token, reply_id=reply_id, holder=lease.Holder(lease.this_machine(), dead_pid(), None), now=at)),
    ])

    # A cancel finds it dead and closes it, at once.
    asked = time.monotonic()
    cancelled = await client.post(f"/replies/{reply_id}/cancel")
    assert cancelled.json()["status"] == "interrupted" and time.monotonic() - asked < 1.0
    # This follower had seen events 4 and 5 live, which the dead process never stored.
    [(seq, name, data)] = await replay(client, reply_id, last_event_id="5")
    assert (seq, name, data["error"]["type"]) == (6, "error", "interrupted")
    # And one that had seen event 4 live, unstored: the stored 4 is the end it never saw.
    [(seq, name, data)] = await replay(client, reply_id, last_event_id="4")
    assert (seq, name, data["error"]["type"]) == (5, "error", "interrupted")
    everything = await replay(client, reply_id)
    assert [(seq, name) for seq, name, _ in everything] == [(1, "start"), (2, "token"), (3, "token"), (4, "error")]
    assert everything[-1][2]["error"]["type"] == "interrupted"
    status = (await client.get(f"/replies/{reply_id}")).json()
    assert (status["status"], status["last_seq"]) == ("interrupted", 4)

    stored = await audit(client, conversation_id)
    assert [(t["role"], t["content"], t["status"]) for t in stored["turns"]][2:] == [
        ("user", "Then", "complete"), ("assistant", "Half a thought", "incomplete")]
    assert stored["turns"][-1]["id"] == status["turn_id"]
    call = next(r for r in stored["requests"] if r["id"] == call_id)
    assert (call["status"], call["error_type"]) == ("cancelled", "interrupted")
    assert (call["input_tokens"], call["upstream_request_id"]) == (1000, "req_dead")
    async with client.app.runtime.db.read() as conn:  # charged to the owner's spend, as budgets count it
        spent = await reads.spend_between(conn, owner="alice", first_day=at.date().isoformat(),
                                          last_day=at.date().isoformat())
    assert spent == sum(to_nano(Decimal(str(r["cost_usd"]))) for r in stored["requests"])
    # The lease is free and the history stays valid: the next message goes through.
    response = await client.post("/agent", json={"conversation_id": conversation_id, "message": "After"})
    assert response.status_code == 200, response.text
    sent = fake.requests()[-1]["body"]["messages"]
    assert "Half a thought" not in json.dumps(sent)
