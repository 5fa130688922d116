"""Budgets (AGENT_BUDGETS, API.md "Usage and budgets"): a key whose spend in the period has reached its budget gets
429 ``budget_exceeded_error`` before any upstream call, with ``Retry-After`` until the period ends; the reply that
crosses the line finishes. The budget's clock is the test's (``runtime.replies.budgets._clock``): nothing sleeps."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.testclient import TestClient

from agent_server.app import AgentServerApp
from agent_server.fake_upstream import Behaviour, ToolCall
from tests.conftest import ALICE, BOB, app_client, auth, make_settings

# claude-sonnet-5-5: $2 input, $10 output per million tokens.
UNDER = {"input_tokens": 100, "output_tokens": 20}  # $0.0004
OVER = {"input_tokens": 300, "output_tokens": 50}  # $0.0011: with UNDER, past $0.001


def today() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def at(clock: datetime):  # type: ignore[no-untyped-def]
    return lambda: clock


def set_clock(client, clock: datetime) -> None:  # type: ignore[no-untyped-def]
    client.app.runtime.replies.budgets._clock = at(clock)


def requests_seen(fake) -> int:  # type: ignore[no-untyped-def]
    return len([r for r in fake.requests() if r["path"] == "/v1/messages"])


def assert_budget_refusal(response: httpx.Response, retry_after: int) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["error"]["type"] == "budget_exceeded_error"
    assert "budget" in body["error"]["message"]
    assert response.headers["Retry-After"] == str(retry_after)


async def spend_past_the_line(client: httpx.AsyncClient, fake) -> str:  # type: ignore[no-untyped-def]
    fake.script(Behaviour(usage=UNDER), Behaviour(usage=OVER))
    first = await client.post("/agent", json={"message": "one"})
    assert first.status_code == 200, first.text
    conversation_id = first.json()["conversation_id"]
    second = await client.post("/agent", json={"message": "two", "conversation_id": conversation_id})
    assert second.status_code == 200, second.text  # the reply that crosses the line finishes
    return conversation_id


async def test_a_daily_budget_refuses_the_reply_after_the_one_that_crossed_it(database_url, fake) -> None:
    async with app_client(make_settings(database_url, fake, AGENT_BUDGETS="alice:0.001/day")) as client:
        client.headers.update(auth())
        now = today().replace(hour=23, minute=59, second=30, microsecond=0)
        set_clock(client, now)
        conversation_id = await spend_past_the_line(client, fake)
        seen = requests_seen(fake)
        turns = len((await client.get(f"/conversations/{conversation_id}")).json()["turns"])
        conversations = len((await client.get("/conversations")).json()["conversations"])

        for response in (
            await client.post("/agent", json={"message": "three", "conversation_id": conversation_id}),
            await client.post("/agent", json={"message": "a new conversation"}),
            await client.post("/agent/stream", json={"message": "streamed", "conversation_id": conversation_id}),
            await client.post("/agent", json={"message": "background", "background": True}),
        ):
            assert_budget_refusal(response, 30)  # until midnight UTC
        # Refused before anything: no upstream call, no prompt stored, no conversation created.
        assert requests_seen(fake) == seen
        assert len((await client.get(f"/conversations/{conversation_id}")).json()["turns"]) == turns
        assert len((await client.get("/conversations")).json()["conversations"]) == conversations

        # Other keys are not affected; reading is not affected.
        assert (await client.post("/agent", json={"message": "bob's"}, headers=auth(BOB))).status_code == 200
        assert (await client.get("/usage")).status_code == 200

        # The next day the budget renews.
        set_clock(client, now + timedelta(seconds=31))
        response = await client.post("/agent", json={"message": "tomorrow", "conversation_id": conversation_id})
        assert response.status_code == 200, response.text


async def test_a_monthly_budget_lasts_until_the_first_of_next_month(database_url, fake) -> None:
    async with app_client(make_settings(database_url, fake, AGENT_BUDGETS="alice:0.001/month")) as client:
        client.headers.update(auth())
        now = today().replace(hour=12, minute=0, second=0, microsecond=0)
        set_clock(client, now)
        await spend_past_the_line(client, fake)
        last_day = calendar.monthrange(now.year, now.month)[1]
        period_end = datetime.combine(now.date().replace(day=last_day) + timedelta(days=1), datetime.min.time())
        response = await client.post("/agent", json={"message": "refused"})
        assert_budget_refusal(response, int((period_end - now).total_seconds()))
        # Still refused on the last second of the month, not on the first of the next.
        set_clock(client, period_end - timedelta(seconds=1))
        assert_budget_refusal(await client.post("/agent", json={"message": "refused"}), 1)
        set_clock(client, period_end)
        response = await client.post("/agent", json={"message": "a new month"})
        assert response.status_code == 200, response.text


async def test_a_reply_that_crosses_the_line_mid_loop_is_not_cut(database_url, fake, tmp_path) -> None:
    tools = tmp_path / "tools.toml"
    tools.write_text('[tools.calculator]\npython = "agent_server.tools.examples:calculator"\n')
    settings = make_settings(database_url, fake, AGENT_BUDGETS="alice:0.001/day", AGENT_TOOLS_FILE=str(tools))
    async with app_client(settings) as client:
        client.headers.update(auth())
        fake.script(Behaviour(tool_calls=[ToolCall(name="calculator", input={"expression": "1+1"})], usage=OVER),
                    Behaviour(tool_calls=[ToolCall(name="calculator", input={"expression": "2+2"})], usage=OVER),
                    Behaviour(text="four", usage=OVER))
        response = await client.post("/agent", json={"message": "sum things"})
        assert response.status_code == 200, response.text
        assert response.json()["steps"] == 3 and response.json()["content"] == "four"
        assert response.json()["estimated_cost_usd"] > 0.003
        refused = await client.post("/agent", json={"message": "more"})
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "budget_exceeded_error"
        assert requests_seen(fake) == 3


async def test_continuing_a_paused_reply_is_refused_too(database_url, fake, tmp_path) -> None:
    """Answers to pending actions start a reply (an upstream call): the budget is checked for them as well."""
    tools = tmp_path / "tools.toml"
    tools.write_text('[client_tools.get_location]\ndescription = "Where the user is."\n'
                     'input_schema = { type = "object", properties = {} }\n')
    settings = make_settings(database_url, fake, AGENT_BUDGETS="alice:0.001/day", AGENT_TOOLS_FILE=str(tools))
    async with app_client(settings) as client:
        client.headers.update(auth())
        fake.script(Behaviour(tool_calls=[ToolCall(name="get_location", id="toolu_loc")], usage=OVER))
        paused = await client.post("/agent", json={"message": "where am I?"})
        assert paused.status_code == 200 and paused.json()["status"] == "requires_action", paused.text
        seen = requests_seen(fake)
        answer = {"conversation_id": paused.json()["conversation_id"],
                  "tool_results": [{"tool_use_id": "toolu_loc", "content": "Berlin"}]}
        refused = await client.post("/agent", json=answer)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "budget_exceeded_error"
        assert requests_seen(fake) == seen
        # The pending action is still pending: it can be answered once the budget renews.
        pending = (await client.get(f"/conversations/{paused.json()['conversation_id']}")).json()
        assert [run["status"] for run in pending["tool_runs"]] == ["pending"]
        set_clock(client, today() + timedelta(days=1))
        answered = await client.post("/agent", json=answer)
        assert answered.status_code == 200, answered.text


async def test_the_budget_is_shared_by_two_apps_on_one_database(database_url, fake) -> None:
    settings = make_settings(database_url, fake, AGENT_BUDGETS="alice:0.001/day")
    async with app_client(settings) as one, app_client(settings) as two:
        for client in (one, two):
            client.headers.update(auth())
        await spend_past_the_line(one, fake)
        seen = requests_seen(fake)
        refused = await two.post("/agent", json={"message": "on the other instance"})
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "budget_exceeded_error"
        assert int(refused.headers["Retry-After"]) >= 1
        assert requests_seen(fake) == seen


def test_on_the_websocket_an_error_frame_and_the_session_stays_open(database_url, fake) -> None:
    settings = make_settings(database_url, fake, AGENT_BUDGETS="alice:0.001/day")
    with TestClient(AgentServerApp(settings), base_url="http://127.0.0.1", headers=auth(ALICE)) as client:
        now = today().replace(hour=23, minute=59, second=0, microsecond=0)
        client.app.runtime.replies.budgets._clock = at(now)  # type: ignore[attr-defined]
        fake.script(Behaviour(usage=OVER))
        assert client.post("/agent", json={"message": "spend"}).status_code == 200
        seen = requests_seen(fake)
        with client.websocket_connect("ws://127.0.0.1/agent/ws", headers=auth(ALICE)) as ws:
            assert ws.receive_json()["type"] == "session"
            ws.send_json({"type": "message", "message": "refused"})
            frame = ws.receive_json()
            assert frame["type"] == "error", frame
            assert frame["error"]["type"] == "budget_exceeded_error"
            assert frame["error"]["retry_after"] == 60
            assert requests_seen(fake) == seen
            # The session is still open: once the budget renews, the next message is answered on it.
            client.app.runtime.replies.budgets._clock = at(now + timedelta(minutes=1))  # type: ignore[attr-defined]
            ws.send_json({"type": "message", "message": "tomorrow"})
            frames = []
            while not frames or frames[-1]["type"] not in ("done", "error"):
                frame = ws.receive_json()
                if frame["type"] != "ping":
                    frames.append(frame)
            assert frames[0]["type"] == "start" and frames[-1]["type"] == "done", frames


@pytest.mark.parametrize("raw", ["alice:0.001/week", "alice:-1/day", "alice", "alice:1/day,bob:x/month"])
def test_a_malformed_budget_refuses_to_start(database_url, fake, raw) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        make_settings(database_url, fake, AGENT_BUDGETS=raw)
    assert "AGENT_BUDGETS" in str(raised.value)
