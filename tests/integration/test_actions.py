"""Actions (API.md "Actions: approvals and client tools") through POST /agent, the real app and the fake upstream:
approve, deny with a reason, a client tool's result, a plain tool in the same step, a new message instead of
answers, every bad answer, another key's answer, the audit of who decided what and when, and a restart between
the question and the answer. On SQLite and PostgreSQL alike.

The tools are the repository's ``tools.example.toml``: ``calculator`` (plain), ``save_note`` (needs approval),
``get_timezone`` (a client tool). Every request the fake received must obey the API's tool_use/tool_result rules.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent_server.db import lease, writes
from agent_server.db.models import new_id
from agent_server.tools import examples
from tests.conftest import BOB, app_client, auth, make_settings

TOOLS_FILE = Path(__file__).resolve().parents[2] / "tools.example.toml"
NEW_MESSAGE_INSTEAD = "not run: the user sent a new message instead"


@pytest.fixture
def settings(database_url, fake):
    return make_settings(database_url, fake, AGENT_TOOLS_FILE=str(TOOLS_FILE))


@pytest.fixture
async def client(settings, fake):
    async with app_client(settings) as http:
        http.headers.update(auth())
        yield http
    assert fake.violations() == []


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.removesuffix("Z"))


async def ask(client, fake, message: str, *calls: dict, conversation_id: str | None = None, text: str = "Let me.",
              expect: int = 200) -> dict:
    """A reply in which the model asks for ``calls`` (in one step); the response body."""
    fake.script({"text": text, "tool_calls": list(calls)})
    body: dict = {"message": message}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    response = await client.post("/agent", json=body)
    assert response.status_code == expect, response.text
    return response.json()


def note(text: str) -> dict:
    return {"name": "save_note", "input": {"text": text}}


def timezone() -> dict:
    return {"name": "get_timezone", "input": {}}


def sums(expression: str) -> dict:
    return {"name": "calculator", "input": {"expression": expression}}


def last_request(fake) -> list[dict]:
    """The messages of the last request the fake upstream received."""
    return fake.requests()[-1]["body"]["messages"]


def tool_results_of(message: dict) -> list[dict]:
    return [block for block in message["content"] if block.get("type") == "tool_result"]


def result_text(block: dict) -> str:
    content = block["content"]
    return content if isinstance(content, str) else "".join(part["text"] for part in content)


async def audit(client, conversation_id: str) -> dict:
    response = await client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()


def assert_invalid(response, *words: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"], error["message"]


# -- the three answers -----------------------------------------------------------------------------------


async def test_approve_runs_the_tool_and_the_reply_goes_on(client, fake) -> None:
    saved = len(examples.NOTES)
    first = await ask(client, fake, "Remember to buy milk", note("buy milk"))
    assert first["status"] == "requires_action"
    [pending] = first["pending"]
    assert pending["name"] == "save_note" and pending["input"] == {"text": "buy milk"}
    assert pending["kind"] == "approval" and pending["tool_use_id"].startswith("toolu_")
    assert first["tool_calls"] == [] and first["content"] == "Let me."
    assert len(examples.NOTES) == saved  # nothing ran before the decision
    status = (await client.get(f"/replies/{first['reply_id']}")).json()
    assert status["status"] == "requires_action"

    answered_after = now()
    response = await client.post("/agent", json={
        "conversation_id": first["conversation_id"],
        "approvals": [{"tool_use_id": pending["tool_use_id"], "approved": True}]})
    answered_before = now()
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["status"] == "complete" and second["reply_id"] != first["reply_id"]
    assert second["conversation_id"] == first["conversation_id"]
    [call] = second["tool_calls"]
    assert (call["id"], call["name"], call["is_error"]) == (pending["tool_use_id"], "save_note", False)
    assert call["content"] == f"saved note {saved + 1}" and examples.NOTES[-1] == "buy milk"
    assert second["content"] == f"Done. Results: saved note {saved + 1}"

    messages = last_request(fake)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    [result] = tool_results_of(messages[-1])
    assert result["tool_use_id"] == pending["tool_use_id"] and not result.get("is_error")
    assert result_text(result) == f"saved note {saved + 1}"

    # The audit: who decided, when, what; and how long the reply waited for it.
    stored = await audit(client, first["conversation_id"])
    [run] = stored["tool_runs"]
    assert (run["tool_use_id"], run["action"], run["decision"], run["decided_by"], run["status"]) == (
        pending["tool_use_id"], "approval", "approved", "alice", "done")
    assert answered_after <= parse_time(run["decided_at"]) <= answered_before
    assert run["output"] == f"saved note {saved + 1}" and run["is_error"] is False
    paused, resumed = stored["replies"]
    assert (paused["id"], paused["status"], resumed["id"], resumed["status"]) == (
        first["reply_id"], "requires_action", second["reply_id"], "complete")
    waited = (parse_time(run["decided_at"]) - parse_time(paused["finished_at"])).total_seconds() * 1000
    assert paused["waited_ms"] is not None and abs(paused["waited_ms"] - waited) <= 1
    assert resumed["waited_ms"] is None
    assert paused["prompt_turn_id"] == stored["turns"][0]["id"] and resumed["prompt_turn_id"] is None


async def test_deny_gives_the_model_an_error_result_with_the_reason(client, fake) -> None:
    saved = len(examples.NOTES)
    first = await ask(client, fake, "Remember the secret", note("the secret"))
    tool_use_id = first["pending"][0]["tool_use_id"]
    response = await client.post("/agent", json={
        "conversation_id": first["conversation_id"],
        "approvals": [{"tool_use_id": tool_use_id, "approved": False, "reason": "not in my notes, please"}]})
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["status"] == "complete"
    assert len(examples.NOTES) == saved  # a denied tool never runs
    [call] = second["tool_calls"]
    assert call["id"] == tool_use_id and call["is_error"] is True
    assert "not in my notes, please" in call["content"]

    [result] = tool_results_of(last_request(fake)[-1])
    assert result["tool_use_id"] == tool_use_id and result["is_error"] is True
    assert "not in my notes, please" in result_text(result)

    [run] = (await audit(client, first["conversation_id"]))["tool_runs"]
    assert (run["decision"], run["decided_by"], run["reason"], run["is_error"]) == (
        "denied", "alice", "not in my notes, please", True)


async def test_a_client_tool_result_goes_to_the_model(client, fake) -> None:
    first = await ask(client, fake, "What time zone am I in?", timezone())
    [pending] = first["pending"]
    assert (pending["name"], pending["kind"]) == ("get_timezone", "client_tool")
    response = await client.post("/agent", json={
        "conversation_id": first["conversation_id"],
        "tool_results": [{"tool_use_id": pending["tool_use_id"], "content": "Europe/Berlin"}]})
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["content"] == "Done. Results: Europe/Berlin"
    [call] = second["tool_calls"]
    assert (call["id"], call["kind"], call["is_error"], call["content"]) == (
        pending["tool_use_id"], "client", False, "Europe/Berlin")
    [result] = tool_results_of(last_request(fake)[-1])
    assert (result["tool_use_id"], result_text(result), bool(result.get("is_error"))) == (
        pending["tool_use_id"], "Europe/Berlin", False)

    # A client may report that its tool failed: the model gets an error result.
    third = await ask(client, fake, "And now?", timezone(), conversation_id=first["conversation_id"])
    tool_use_id = third["pending"][0]["tool_use_id"]
    response = await client.post("/agent", json={
        "conversation_id": first["conversation_id"],
        "tool_results": [{"tool_use_id": tool_use_id, "content": "permission denied", "is_error": True}]})
    assert response.status_code == 200, response.text
    [result] = tool_results_of(last_request(fake)[-1])
    assert (result["tool_use_id"], result_text(result), result.get("is_error")) == (
        tool_use_id, "permission denied", True)
    runs = (await audit(client, first["conversation_id"]))["tool_runs"]
    assert [(r["decision"], r["decided_by"], r["output"], r["is_error"]) for r in runs] == [
        ("answered", "alice", "Europe/Berlin", False), ("answered", "alice", "permission denied", True)]


async def test_a_plain_tool_runs_before_the_pause_and_its_result_waits_in_order(client, fake) -> None:
    """The model asks for an approval, a plain tool and a client tool in one step: the plain tool runs at once,
    and the step's results go upstream together, in the order the model asked for them."""
    first = await ask(client, fake, "Note it, add it up, where am I?", note("sums"), sums("6 * 7"), timezone())
    assert first["status"] == "requires_action"
    assert [(p["name"], p["kind"]) for p in first["pending"]] == [
        ("save_note", "approval"), ("get_timezone", "client_tool")]
    [ran] = first["tool_calls"]
    assert (ran["name"], ran["content"], ran["is_error"]) == ("calculator", "42", False)
    assert len(fake.requests()) == 1  # nothing went upstream with a partial set of results
    approval, client_tool = first["pending"]

    response = await client.post("/agent", json={
        "conversation_id": first["conversation_id"],
        "approvals": [{"tool_use_id": approval["tool_use_id"], "approved": True}],
        "tool_results": [{"tool_use_id": client_tool["tool_use_id"], "content": "Asia/Tokyo"}]})
    assert response.status_code == 200, response.text
    messages = last_request(fake)
    asked = [block["id"] for block in messages[1]["content"] if block["type"] == "tool_use"]
    assert asked == [approval["tool_use_id"], ran["id"], client_tool["tool_use_id"]]
    results = tool_results_of(messages[2])
    assert [r["tool_use_id"] for r in results] == asked
    assert [result_text(r) for r in results][1:] == ["42", "Asia/Tokyo"]
    assert result_text(results[0]).startswith("saved note ")
    assert len(messages) == 3 and all(block["type"] == "tool_result" for block in messages[2]["content"])

    runs = {r["tool_use_id"]: r for r in (await audit(client, first["conversation_id"]))["tool_runs"]}
    assert runs[ran["id"]]["decision"] is None and runs[ran["id"]]["output"] == "42"
    assert runs[approval["tool_use_id"]]["decision"] == "approved"
    assert runs[client_tool["tool_use_id"]]["decision"] == "answered"


async def test_a_new_message_while_pending_answers_them_as_not_run(client, fake) -> None:
    saved = len(examples.NOTES)
    first = await ask(client, fake, "Note this and tell me my zone", note("x"), timezone())
    ids = [p["tool_use_id"] for p in first["pending"]]
    response = await client.post("/agent", json={"conversation_id": first["conversation_id"],
                                                 "message": "Never mind, just say hi"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "complete"
    assert len(examples.NOTES) == saved
    messages = last_request(fake)
    results = [block for m in messages[2:] for block in m["content"] if block.get("type") == "tool_result"]
    assert [r["tool_use_id"] for r in results] == ids
    assert all(r["is_error"] is True and result_text(r) == NEW_MESSAGE_INSTEAD for r in results)
    # The message follows the results, and the reply answers it.
    texts = [block["text"] for m in messages[2:] for block in m["content"] if block.get("type") == "text"]
    assert texts == ["Never mind, just say hi"] and messages[-1]["role"] == "user"

    stored = await audit(client, first["conversation_id"])
    assert [r["decision"] for r in stored["tool_runs"]] == ["superseded", "superseded"]
    assert [(t["role"], t["content"], t["status"]) for t in stored["turns"]][2:4] == [
        ("user", "", "complete"), ("user", "Never mind, just say hi", "complete")]
    assert [(t["role"], t["status"]) for t in stored["turns"]][4:] == [("assistant", "complete")]
    # The next message goes on as usual.
    response = await client.post("/agent", json={"conversation_id": first["conversation_id"], "message": "Again"})
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "Echo: Again"


async def test_a_message_with_some_answers_uses_them_and_supersedes_the_rest(client, fake) -> None:
    first = await ask(client, fake, "Two things", note("y"), timezone())
    approval, client_tool = (p["tool_use_id"] for p in first["pending"])
    response = await client.post("/agent", json={
        "conversation_id": first["conversation_id"], "message": "Here is my zone, skip the note",
        "tool_results": [{"tool_use_id": client_tool, "content": "UTC"}]})
    assert response.status_code == 200, response.text
    results = {r["tool_use_id"]: r for m in last_request(fake)[2:] for r in tool_results_of(m)}
    assert result_text(results[client_tool]) == "UTC" and not results[client_tool].get("is_error")
    assert result_text(results[approval]) == NEW_MESSAGE_INSTEAD and results[approval]["is_error"] is True


# -- bad answers, other keys -----------------------------------------------------------------------------


async def test_bad_answers_are_refused_and_leave_the_pending_set_as_it_was(client, fake) -> None:
    first = await ask(client, fake, "Both, please", note("z"), timezone())
    conversation_id = first["conversation_id"]
    approval, client_tool = (p["tool_use_id"] for p in first["pending"])
    good = {"approvals": [{"tool_use_id": approval, "approved": True}],
            "tool_results": [{"tool_use_id": client_tool, "content": "UTC"}]}

    async def answer(**body):
        return await client.post("/agent", json={"conversation_id": conversation_id, **body})

    assert_invalid(await answer(approvals=[{"tool_use_id": "toolu_unknown", "approved": True}],
                                tool_results=good["tool_results"]), "unknown")
    # An approval for a client tool, a result for an approval.
    assert_invalid(await answer(approvals=[{"tool_use_id": client_tool, "approved": True},
                                           {"tool_use_id": approval, "approved": True}]), "tool result")
    assert_invalid(await answer(tool_results=[{"tool_use_id": approval, "content": "ok"},
                                              {"tool_use_id": client_tool, "content": "UTC"}]), "approval")
    # The same id twice, or one of two answers without a message.
    assert_invalid(await answer(approvals=[{"tool_use_id": approval, "approved": True},
                                           {"tool_use_id": approval, "approved": False}],
                                tool_results=good["tool_results"]), "already answered")
    assert_invalid(await answer(approvals=good["approvals"]), client_tool)
    # Wrong shapes.
    assert_invalid(await client.post("/agent", json={"approvals": good["approvals"]}))
    assert_invalid(await answer(approvals=[{"tool_use_id": approval, "approved": "yes"}]))
    assert len(fake.requests()) == 1  # none of them reached the upstream

    response = await answer(**good)
    assert response.status_code == 200, response.text
    # Now both are answered: answering again is refused, so is answering a conversation with nothing pending.
    assert_invalid(await answer(approvals=good["approvals"], tool_results=good["tool_results"]))
    plain = (await client.post("/agent", json={"message": "hello"})).json()
    assert_invalid(await client.post("/agent", json={"conversation_id": plain["conversation_id"], **good}))
    runs = (await audit(client, conversation_id))["tool_runs"]
    assert sorted(r["decision"] for r in runs) == ["answered", "approved"]


async def test_another_keys_answer_is_not_found(client, fake) -> None:
    first = await ask(client, fake, "Save it", note("mine"))
    tool_use_id = first["pending"][0]["tool_use_id"]
    approve = {"conversation_id": first["conversation_id"],
               "approvals": [{"tool_use_id": tool_use_id, "approved": True}]}
    for response in (await client.post("/agent", json=approve, headers=auth(BOB)),
                     await client.post("/agent/stream", json=approve, headers=auth(BOB)),
                     await client.get(f"/replies/{first['reply_id']}", headers=auth(BOB)),
                     await client.get(f"/replies/{first['reply_id']}/events", headers=auth(BOB)),
                     await client.post(f"/replies/{first['reply_id']}/cancel", headers=auth(BOB))):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found_error"
    assert len(fake.requests()) == 1
    response = await client.post("/agent", json=approve)
    assert response.status_code == 200, response.text
    [run] = (await audit(client, first["conversation_id"]))["tool_runs"]
    assert (run["decision"], run["decided_by"]) == ("approved", "alice")


async def test_two_answers_at_once_run_the_tool_once(client, fake) -> None:
    saved = len(examples.NOTES)
    first = await ask(client, fake, "Save once", note("once"))
    approve = {"conversation_id": first["conversation_id"],
               "approvals": [{"tool_use_id": first["pending"][0]["tool_use_id"], "approved": True}]}
    responses = await asyncio.gather(*(client.post("/agent", json=approve) for _ in range(2)))
    assert sorted(r.status_code for r in responses)[0] == 200
    assert sorted(r.status_code for r in responses)[1] in (409, 422), [r.text for r in responses]
    assert len(examples.NOTES) == saved + 1
    assert len(fake.requests()) == 2


async def test_the_answer_survives_a_restart(settings, fake) -> None:
    """The pending set is stored with the conversation: a new process takes the answer."""
    async with app_client(settings) as client:
        client.headers.update(auth())
        first = await ask(client, fake, "Save across restarts", note("durable"))
    async with app_client(settings) as client:
        client.headers.update(auth())
        pending = (await client.get(f"/replies/{first['reply_id']}")).json()
        assert pending["status"] == "requires_action"
        response = await client.post("/agent", json={
            "conversation_id": first["conversation_id"],
            "approvals": [{"tool_use_id": first["pending"][0]["tool_use_id"], "approved": True}]})
        assert response.status_code == 200, response.text
        assert response.json()["tool_calls"][0]["content"].startswith("saved note ")
    assert fake.violations() == []


async def test_the_answering_reply_streams_the_results_first(client, fake) -> None:
    """On the stream, the reply that continues shows a tool_result for each answered call before anything else."""
    first = await ask(client, fake, "Two", note("stream"), timezone())
    approval, client_tool = (p["tool_use_id"] for p in first["pending"])
    response = await client.post("/agent/stream", json={
        "conversation_id": first["conversation_id"],
        "approvals": [{"tool_use_id": approval, "approved": False, "reason": "no"}],
        "tool_results": [{"tool_use_id": client_tool, "content": "UTC"}]})
    assert response.status_code == 200
    events = [(block.split("\n")[1].removeprefix("event: "), json.loads(block.split("\n")[2].removeprefix("data: ")))
              for block in response.text.strip().split("\n\n") if block.startswith("id: ")]
    names = [name for name, _ in events]
    assert names[:3] == ["start", "tool_result", "tool_result"] and names[-1] == "done"
    assert {data["tool_use_id"]: data["is_error"] for _, data in events[1:3]} == {approval: True, client_tool: False}


# -- a continuing reply cut short ------------------------------------------------------------------------

SLOW_STARTED: asyncio.Event | None = None
SLOW_TOOLS = """
[tools.slow_note]
python = "tests.integration.test_actions:slow_note"
requires_approval = true

[tools.calculator]
python = "agent_server.tools.examples:calculator"

[client_tools.get_timezone]
description = "The user's time zone."
input_schema = { type = "object", properties = {} }
"""


async def slow_note(text: str) -> str:
    """Save a note, slowly: the tool a test cuts short while it runs."""
    assert SLOW_STARTED is not None
    SLOW_STARTED.set()
    await asyncio.sleep(60)
    return "saved, slowly"


async def test_a_continuing_reply_cancelled_while_an_approved_tool_runs_closes_the_whole_step(
        database_url, fake, tmp_path) -> None:
    global SLOW_STARTED
    SLOW_STARTED = asyncio.Event()
    (tmp_path / "tools.toml").write_text(SLOW_TOOLS)
    async with app_client(make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tmp_path / "tools.toml"))) as client:
        client.headers.update(auth())
        first = await ask(client, fake, "Slowly, please", {"name": "slow_note", "input": {"text": "s"}},
                          sums("1 + 1"), timezone())
        slow_id, zone_id = (p["tool_use_id"] for p in first["pending"])
        calc_id = first["tool_calls"][0]["id"]
        conversation_id = first["conversation_id"]
        response = await client.post("/agent", json={
            "conversation_id": conversation_id, "background": True,
            "approvals": [{"tool_use_id": slow_id, "approved": True}],
            "tool_results": [{"tool_use_id": zone_id, "content": "UTC"}]})
        assert response.status_code == 202, response.text
        await asyncio.wait_for(SLOW_STARTED.wait(), 10)
        cancelled = await client.post(f"/replies/{response.json()['reply_id']}/cancel")
        assert cancelled.json()["status"] == "cancelled"

        stored = await audit(client, conversation_id)
        results = stored["turns"][-1]["blocks"]
        assert [block["tool_use_id"] for block in results] == [slow_id, calc_id, zone_id]
        assert (results[0]["content"], results[0]["is_error"]) == ("not run: the reply was cancelled", True)
        assert [results[1]["content"], results[2]["content"]] == ["2", "UTC"]
        runs = {r["tool_use_id"]: r for r in stored["tool_runs"]}
        assert len(runs) == len(stored["tool_runs"]) == 3  # closed where they were, none added
        assert all(r["status"] == "done" for r in runs.values())
        assert (runs[slow_id]["decision"], runs[slow_id]["is_error"]) == ("approved", True)
        assert runs[zone_id]["decision"] == "answered"

        fake.script({})
        response = await client.post("/agent", json={"conversation_id": conversation_id, "message": "Go on"})
        assert response.status_code == 200, response.text
        assert [r["tool_use_id"] for r in tool_results_of(last_request(fake)[2])] == [slow_id, calc_id, zone_id]
    assert fake.violations() == []


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait(timeout=10)
    return process.pid


async def test_a_continuing_reply_whose_process_died_closes_the_whole_step(client, fake) -> None:
    """What kill -9 leaves while the approved calls of a paused step run: the continuing reply opened (the pending
    set taken, the lease held), nothing of the step stored. Whoever notices closes the step whole."""
    first = await ask(client, fake, "Note and count", note("lost"), sums("3 * 3"))
    note_id, calc_id = first["pending"][0]["tool_use_id"], first["tool_calls"][0]["id"]
    conversation_id, reply_id = first["conversation_id"], new_id("reply")
    at = now()
    holder = lease.Holder(lease.this_machine(), dead_pid(), None)
    await client.app.runtime.db.write(writes.apply, ops=[
        writes.insert_reply(id=reply_id, conversation_id=conversation_id, owner="alice", route="agent",
                            model=first["model"], status="running", steps=0, last_seq=0, created_at=at),
        writes.update_conversation(conversation_id, pending_reply_id=None, **lease.claim_values(
            token=lease.new_token(), reply_id=reply_id, holder=holder, now=at)),
    ])
    response = await client.get(f"/replies/{reply_id}/events")
    assert response.status_code == 200 and '"type":"interrupted"' in response.text.replace(" ", "")
    assert (await client.get(f"/replies/{reply_id}")).json()["status"] == "interrupted"
    stored = await audit(client, conversation_id)
    results = stored["turns"][-1]["blocks"]
    assert [block["tool_use_id"] for block in results] == [note_id, calc_id]
    assert (results[0]["content"], results[0]["is_error"]) == ("not run: the server process stopped", True)
    assert results[1]["content"] == "9" and not results[1].get("is_error")
    assert [r["status"] for r in stored["tool_runs"]] == ["done", "done"]

    response = await client.post("/agent", json={"conversation_id": conversation_id, "message": "Still there?"})
    assert response.status_code == 200, response.text
    # Answering the step again is refused: it is closed.
    response = await client.post("/agent", json={"conversation_id": conversation_id,
                                                 "approvals": [{"tool_use_id": note_id, "approved": True}]})
    assert response.status_code == 422
