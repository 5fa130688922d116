"""One owner for a reply's whole lifetime: whatever fails, at whatever stage, the call is in the ledger, the
lease and the slot are free, the client gets the envelope, the next reply works, and shutdown is prompt.

Failures are injected at each stage — opening the reply, the upstream call (an answer that is not an event
stream, as a proxy in front of the upstream might give), decoding (an unknown event with no JSON), storing (a
final write that fails, then succeeds; one that raises a bug) and a bug in the engine itself — on POST /agent,
POST /agent/stream and the WebSocket.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.testclient import TestClient

from agent_server.app import AgentServerApp
from agent_server.db import StorageError
from agent_server.engine import recording
from agent_server.engine.reply import ReplyProcess
from agent_server.service import opening
from tests.conftest import app_client, auth, make_settings

ROUTES = ["/agent", "/agent/stream"]


async def ask(client: httpx.AsyncClient, route: str, message: str, conversation_id: str | None = None):
    """(status, the error type or None, the conversation id or None), for either HTTP route."""
    body = {"message": message, **({"conversation_id": conversation_id} if conversation_id else {})}
    if route == "/agent":
        response = await client.post(route, json=body)
        data = response.json()
        return response.status_code, data.get("error", {}).get("type"), data.get("conversation_id")
    async with client.stream("POST", route, json=body) as response:
        text = (await response.aread()).decode()
    if response.status_code != 200:
        return response.status_code, json.loads(text)["error"]["type"], None
    events = [block for block in text.split("\n\n") if block.startswith(("id:", "event:"))]
    last = events[-1]
    data = json.loads(last.split("data: ", 1)[1])
    start = json.loads(events[0].split("data: ", 1)[1])
    kind = "error" if "event: error" in last else "done"
    return 200, data["error"]["type"] if kind == "error" else None, start.get("conversation_id")


async def assert_all_free(client: httpx.AsyncClient, conversation_id: str | None) -> dict | None:
    """No reply left running, no slot held, the lease free; the conversation's audit (if there is one)."""
    runtime = client.app.runtime
    for _ in range(200):  # the reply's task ends right after its outcome is stored
        if not runtime.supervisor.running:
            break
        await asyncio.sleep(0.01)
    assert runtime.supervisor.running == {}
    assert runtime.supervisor.slots._held == {}
    if conversation_id is None:
        return None
    audit = (await client.get(f"/conversations/{conversation_id}")).json()
    assert all(call["status"] != "running" for call in audit["requests"]), audit["requests"]
    assert all(reply["status"] != "running" for reply in audit["replies"]), audit["replies"]
    return audit


async def next_reply_works(client: httpx.AsyncClient, route: str, conversation_id: str | None) -> None:
    status, error, _ = await ask(client, route, "and now?", conversation_id)
    assert (status, error) == (200, None)


async def drains_promptly(client: httpx.AsyncClient) -> None:
    await asyncio.wait_for(client.app.runtime.supervisor.drain(5), 1)


@pytest.mark.parametrize("route", ROUTES)
async def test_an_upstream_that_answers_with_plain_text(client, fake, route) -> None:
    """The reproduction: a proxy answering 200 text/plain gave a 500, no call row, and a lease held for ever."""
    fake.script({"content_type": "text/plain", "raw_body": "upstream proxy error"})
    status, error, conversation_id = await ask(client, route, "hello")
    assert (status if route == "/agent" else error) == (502 if route == "/agent" else "upstream_error")
    if route == "/agent":
        assert error == "upstream_error"
        conversation_id = (await client.get("/conversations")).json()["conversations"][0]["id"]
    audit = await assert_all_free(client, conversation_id)
    (call,) = audit["requests"]
    assert (call["status"], call["error_type"]) == ("error", "upstream_error")
    await next_reply_works(client, route, conversation_id)
    await drains_promptly(client)


@pytest.mark.parametrize("route", ROUTES)
async def test_an_unknown_event_with_no_json_is_an_upstream_error_recorded_as_such(client, fake, route) -> None:
    fake.script({"n_tokens": 5, "unknown_event_after_tokens": 2})
    status, error, conversation_id = await ask(client, route, "hello")
    assert error == "upstream_error"
    if conversation_id is None:
        conversation_id = (await client.get("/conversations")).json()["conversations"][0]["id"]
    audit = await assert_all_free(client, conversation_id)
    assert [(c["status"], c["error_type"]) for c in audit["requests"]] == [("error", "upstream_error")]
    assert audit["turns"][-1]["status"] == "failed"  # the text that came first is kept, as failed
    await next_reply_works(client, route, conversation_id)


@pytest.mark.parametrize("usage", [{"output_tokens": 10**20}, {"output_tokens": -52}, {"input_tokens": "12"}])
async def test_usage_no_real_call_reports_is_an_upstream_error_never_a_stored_bad_count(client, fake, usage) -> None:
    fake.script({"text": "fine", "usage": usage})
    response = await client.post("/agent", json={"message": "hello"})
    assert response.status_code == 502 and response.json()["error"]["type"] == "upstream_error"
    conversation_id = (await client.get("/conversations")).json()["conversations"][0]["id"]
    audit = await assert_all_free(client, conversation_id)
    (call,) = audit["requests"]
    assert (call["status"], call["error_type"]) == ("error", "upstream_error")
    assert 0 <= call["output_tokens"] < 10**12 and (call["cost_usd"] or 0) >= 0


@pytest.mark.parametrize("route", ROUTES)
async def test_a_bug_while_opening_leaves_nothing_held(client, fake, route, monkeypatch) -> None:
    async def broken(conn, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug while opening")

    monkeypatch.setattr("agent_server.service.replies.open_reply", broken)
    transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=auth()) as http:
        status, error, _ = await ask(http, route, "hello")
    assert (status, error) == (500, "api_error")
    await assert_all_free(client, None)
    monkeypatch.setattr("agent_server.service.replies.open_reply", opening.open_reply)
    await next_reply_works(client, route, None)


@pytest.mark.parametrize("route", ROUTES)
async def test_a_bug_in_the_engine_mid_reply_is_an_api_error_and_everything_is_freed(client, fake, route,
                                                                                     monkeypatch) -> None:
    first = await client.post("/agent", json={"message": "hello"})
    conversation_id = first.json()["conversation_id"]
    real = ReplyProcess._block_done

    def broken(self, block):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(ReplyProcess, "_block_done", broken)
    status, error, _ = await ask(client, route, "break", conversation_id)
    assert error == "api_error"
    audit = await assert_all_free(client, conversation_id)
    assert (audit["requests"][-1]["status"], audit["requests"][-1]["error_type"]) == ("error", "api_error")
    monkeypatch.setattr(ReplyProcess, "_block_done", real)
    await next_reply_works(client, route, conversation_id)
    await drains_promptly(client)


@pytest.mark.parametrize("route", ROUTES)
async def test_a_final_write_that_fails_is_retried_and_done_comes_once_it_is_stored(client, fake, route,
                                                                                   monkeypatch) -> None:
    failures = {"left": 2}
    real = recording._end

    async def flaky(conn, **kwargs):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise StorageError("database or disk is full")
        return await real(conn, **kwargs)

    monkeypatch.setattr(recording, "_end", flaky)
    monkeypatch.setattr(recording, "STORE_RETRY_DELAYS", (0.01,))
    status, error, conversation_id = await ask(client, route, "hello")
    assert (status, error) == (200, None) and failures["left"] == 0
    audit = await assert_all_free(client, conversation_id)
    assert [t["status"] for t in audit["turns"]] == ["complete", "complete"]
    assert [c["status"] for c in audit["requests"]] == ["ok"]


CLOCK_TOOL = '[tools.current_time]\npython = "agent_server.tools.examples:current_time"\n'


async def test_a_storage_failure_mid_reply_is_a_503_storage_error_and_the_call_is_still_in_the_ledger(
        database_url, fake, tmp_path, monkeypatch) -> None:
    """A step that asked for a tool stores its message before the tool runs: when that write fails, the reply ends
    with a 503 ``storage_error``, and the call the upstream billed is in the ledger all the same."""
    tools = tmp_path / "tools.toml"
    tools.write_text(CLOCK_TOOL, encoding="utf-8")
    real = recording.Recorder._store

    async def full(self, ops, spend):  # type: ignore[no-untyped-def]
        raise StorageError("The database could not store this (database or disk is full).")

    async with app_client(make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools))) as client:
        client.headers.update(auth())
        monkeypatch.setattr(recording.Recorder, "_store", full)
        fake.script({"tokens": ["Checking."], "tool_calls": [{"name": "current_time", "input": {}}]})
        response = await client.post("/agent", json={"message": "what time is it?"})
        assert response.status_code == 503 and response.json()["error"]["type"] == "storage_error"
        monkeypatch.setattr(recording.Recorder, "_store", real)
        conversation_id = (await client.get("/conversations")).json()["conversations"][0]["id"]
        audit = await assert_all_free(client, conversation_id)
        (call,) = audit["requests"]
        # The upstream billed the tokens: the ledger has them, although the step's message could not be stored.
        assert call["error_type"] == "storage_error" and call["output_tokens"] > 0
        await next_reply_works(client, "/agent", conversation_id)
        assert fake.violations() == []


async def test_the_last_call_of_a_reply_is_stored_by_the_transaction_that_ends_it(client, fake, monkeypatch) -> None:
    """A one-step reply writes twice (the opening, the end), not three times: its message and its closed call go
    with the end, which is retried until stored, so nothing between them can lose either."""
    stores: list[int] = []
    real = recording.Recorder._store

    async def counted(self, ops, spend):  # type: ignore[no-untyped-def]
        stores.append(len(ops))
        return await real(self, ops, spend)

    monkeypatch.setattr(recording.Recorder, "_store", counted)
    status, error, conversation_id = await ask(client, "/agent", "hello")
    assert (status, error) == (200, None) and stores == []
    audit = await assert_all_free(client, conversation_id)
    assert [t["status"] for t in audit["turns"]] == ["complete", "complete"]
    (call,) = audit["requests"]
    assert call["status"] == "ok" and call["turn_id"] == audit["turns"][1]["id"] and call["output_tokens"] > 0


def test_the_websocket_route_after_each_kind_of_failure(database_url, fake, monkeypatch) -> None:
    settings = make_settings(database_url, fake)
    with TestClient(AgentServerApp(settings), base_url="http://127.0.0.1") as http:
        with http.websocket_connect("ws://127.0.0.1/agent/ws", headers=auth()) as ws:
            assert ws.receive_json()["type"] == "session"

            def exchange(message: str) -> list[dict]:
                ws.send_json({"type": "message", "message": message})
                frames = [ws.receive_json()]
                while frames[-1]["type"] not in ("done", "error", "cancelled"):
                    frames.append(ws.receive_json())
                return frames

            fake.script({"content_type": "text/plain", "raw_body": "proxy error"})
            assert exchange("one")[-1]["error"]["type"] == "upstream_error"
            fake.script({"n_tokens": 4, "unknown_event_after_tokens": 1})
            assert exchange("two")[-1]["error"]["type"] == "upstream_error"
            with monkeypatch.context() as patch:
                patch.setattr(ReplyProcess, "_block_done", lambda self, block: 1 / 0)
                assert exchange("three")[-1]["error"]["type"] == "api_error"
            done = exchange("four")
            assert done[-1]["type"] == "done" and "".join(f["text"] for f in done if f["type"] == "token")
            conversation_id = done[-1]["conversation_id"]
        runtime = http.app.runtime
        assert runtime.supervisor.running == {} and runtime.supervisor.slots._held == {}
        audit = http.get(f"/conversations/{conversation_id}", headers=auth()).json()
        assert [c["status"] for c in audit["requests"]] == ["error", "error", "error", "ok"]

        async def drain() -> None:
            await asyncio.wait_for(runtime.supervisor.drain(5), 1)

        http.portal.call(drain)  # nothing left to wait for: prompt
