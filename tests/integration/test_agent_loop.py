"""The agent's tool-use loop through the ASGI app, the real SDK and the fake upstream: every event of a loop, its
tools' failures, server tools and their fee, thinking resent byte for byte, ``pause_turn``, the step limit, tools
and tool choice per request, cancel mid-tool and mid-stream, the audit, the metrics, MCP over stdio, and the
offline stub's demo loop.

After every loop a next message goes to the fake, which refuses what the real API refuses: ``fake.violations()``
stays empty, so every ``tool_use`` the server sent has its ``tool_result``. The Python tools and the MCP server
are in ``tests/e2e/mcp_servers.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from tests.conftest import ALICE, app_client, auth, make_settings
from tests.e2e import mcp_servers

MODULE = "tests.e2e.mcp_servers"
MCP_SCRIPT = Path(__file__).resolve().parents[1] / "e2e" / "mcp_servers.py"
METRICS_TOKEN = "metrics-token-for-the-loop-0123"
WAIT = 20
D = Decimal
# claude-sonnet-5-5, USD per million tokens (tests/integration/test_agent_api.py): input, output.
PRICE_IN, PRICE_OUT = D("2"), D("10")
SEARCH_FEE = D("10") / 1000  # web search: $10 per 1,000

TOOLS = f"""
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
timeout_seconds = 0.3

[tools.slow_sync]
python = "{MODULE}:slow_sync"

[tools.huge]
python = "{MODULE}:huge"

[tools.blocks]
python = "{MODULE}:blocks"

[tools.wait_for_release]
python = "{MODULE}:wait_for_release"

[tools.exits]
python = "{MODULE}:exits"

[tools.cancels_itself]
python = "{MODULE}:cancels_itself"

[server_tools.web_search]
type = "web_search_20250305"
max_uses = 3
"""
ALL_TOOLS = sorted(["lookup", "add", "where_sync", "where_async", "boom", "slow", "slow_sync", "huge", "blocks",
                    "wait_for_release", "exits", "cancels_itself", "web_search"])


class Event(NamedTuple):
    id: int | None
    name: str
    data: Any


def parse_sse(text: str) -> list[Event]:
    """Every event of an SSE body, with its ``id:`` (comment lines left out)."""
    events = []
    for chunk in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in chunk.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "event" in fields:
            events.append(Event(int(fields["id"]) if "id" in fields else None, fields["event"],
                                json.loads(fields["data"])))
    return events


async def stream(client: httpx.AsyncClient, body: dict, path: str = "/agent/stream") -> list[Event]:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


async def wait_for_event(client: httpx.AsyncClient, reply_id: str, name: str, count: int = 1) -> Any:
    """The ``count``-th event named ``name`` of a running reply, as it is emitted (its journal, in this process:
    the ASGI test transport hands a response over only once it is complete)."""
    process = client.app.runtime.supervisor.get(reply_id)  # type: ignore[attr-defined]
    assert process is not None, "the reply is not running"
    seen = 0
    async with asyncio.timeout(WAIT):
        async for event in process.journal.follow(0):
            if event.name == name:
                seen += 1
                if seen == count:
                    return event
    raise AssertionError(f"the reply ended before its {name!r} #{count}")


async def replayed(client: httpx.AsyncClient, reply_id: str) -> list[Event]:
    """A finished reply's events, replayed by GET /replies/{id}/events."""
    response = await client.get(f"/replies/{reply_id}/events")
    assert response.status_code == 200
    return parse_sse(response.text)


async def background(client: httpx.AsyncClient, body: dict) -> dict:
    response = await client.post("/agent", json={**body, "background": True})
    assert response.status_code == 202, response.text
    return response.json()


def names(events: list[Event]) -> list[str]:
    return [event.name for event in events]


def assert_numbered(events: list[Event]) -> None:
    assert [event.id for event in events] == list(range(1, len(events) + 1))
    assert events[0].name == "start" and events[-1].name in ("done", "error", "cancelled")


def last_results(body: dict) -> list[dict]:
    """The ``tool_result`` blocks of a request's last user message."""
    content = body["messages"][-1]["content"]
    assert body["messages"][-1]["role"] == "user"
    return [block for block in content if block.get("type") == "tool_result"]


def tool_names(body: dict) -> list[str]:
    return [tool["name"] for tool in body.get("tools") or []]


def no_markers(value: Any) -> Any:
    """A request's JSON without prompt-cache markers (the server moves them as the conversation grows)."""
    if isinstance(value, dict):
        return {k: no_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [no_markers(v) for v in value]
    return value


def call(name: str, tool_id: str | None = None, **tool_input: Any) -> dict:
    return {"name": name, "input": tool_input, **({"id": tool_id} if tool_id else {})}


async def audit(client: httpx.AsyncClient, conversation_id: str) -> dict:
    response = await client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return json.loads(response.text, parse_float=Decimal)


async def next_message_is_accepted(client: httpx.AsyncClient, fake, conversation_id: str) -> dict:  # type: ignore
    """One more message on the conversation: the fake accepts its history (it refuses what the real API does)."""
    fake.script({"text": "Still here."})
    response = await client.post("/agent", json={"conversation_id": conversation_id, "message": "And now?"})
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "Still here."
    assert fake.violations() == []
    return fake.bodies()[-1]


def write_tools(tmp_path: Path, text: str = TOOLS) -> Path:
    path = tmp_path / "tools.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
async def loop(database_url, fake, tmp_path):  # type: ignore[no-untyped-def]
    """The app with the test tools, alice's key, and a metrics token."""
    mcp_servers.RELEASE.clear()
    settings = make_settings(database_url, fake, AGENT_TOOLS_FILE=str(write_tools(tmp_path)),
                             AGENT_METRICS_TOKEN=METRICS_TOKEN, AGENT_MAX_TOKENS_CEILING=8192)
    async with app_client(settings) as http:
        http.headers.update(auth())
        yield http
    mcp_servers.RELEASE.set()


def cost(usage: dict, searches: int = 0) -> Decimal:
    return (usage["input_tokens"] * PRICE_IN + usage["output_tokens"] * PRICE_OUT) / D(1_000_000) + searches * \
        SEARCH_FEE


# -- a whole loop -------------------------------------------------------------------------------------------------


async def test_a_three_step_loop_with_parallel_calls_streams_every_event_in_order(loop, fake) -> None:
    fake.script(
        {"tokens": ["Let me ", "look."], "tool_calls": [call("lookup", "toolu_a1", city="Oslo"),
                                                        call("add", "toolu_a2", a=2, b=40)]},
        {"tool_calls": [call("where_sync", "toolu_b1"), call("where_async", "toolu_b2")]},
        {"tokens": ["All ", "done."]},
    )
    events = await stream(loop, {"message": "Plan a trip", "system": "Be brief."})
    assert_numbered(events)
    assert fake.violations() == []
    shape = [e.name for e in events if e.name != "tool_result"]
    assert shape == ["start", "token", "token", "tool_use", "tool_use", "step", "tool_use", "tool_use", "step",
                     "token", "token", "step", "done"]
    start, done = events[0].data, events[-1].data
    assert set(start) == {"reply_id", "conversation_id", "model", "context"}
    assert start["context"] == {"turns_sent": 1, "turns_omitted": 0}
    uses = [e.data for e in events if e.name == "tool_use"]
    assert uses == [
        {"id": "toolu_a1", "name": "lookup", "input": {"city": "Oslo"}, "kind": "python"},
        {"id": "toolu_a2", "name": "add", "input": {"a": 2, "b": 40}, "kind": "python"},
        {"id": "toolu_b1", "name": "where_sync", "input": {}, "kind": "python"},
        {"id": "toolu_b2", "name": "where_async", "input": {}, "kind": "python"},
    ]
    # Each step's results come after its step event and before the next call's first event.
    position = {e.data.get("tool_use_id"): i for i, e in enumerate(events) if e.name == "tool_result"}
    steps = [i for i, e in enumerate(events) if e.name == "step"]
    assert steps[0] < position["toolu_a1"] < steps[1] and steps[0] < position["toolu_a2"] < steps[1]
    assert steps[1] < position["toolu_b1"] < steps[2] and steps[1] < position["toolu_b2"] < steps[2]
    results = {e.data["tool_use_id"]: e.data for e in events if e.name == "tool_result"}
    assert results["toolu_a1"]["content"] == "Oslo: 3 results"
    assert results["toolu_a2"]["content"] == '{"sum":42}'
    assert results["toolu_b1"]["content"].endswith("loop=False")  # a sync tool, in a thread
    assert results["toolu_b2"]["content"].endswith("loop=True")  # an async tool, on the loop
    for result in results.values():
        assert set(result) == {"tool_use_id", "is_error", "content", "duration_ms"}
        assert result["is_error"] is False and isinstance(result["duration_ms"], int)
    step_events = [e.data for e in events if e.name == "step"]
    assert [s["step"] for s in step_events] == [1, 2, 3]
    assert [s["stop_reason"] for s in step_events] == ["tool_use", "tool_use", "end_turn"]
    # done: the sums of the steps.
    assert done["status"] == "complete" and done["steps"] == 3 and done["stop_reason"] == "end_turn"
    assert done["reply_id"] == start["reply_id"] and done["conversation_id"] == start["conversation_id"]
    for key in ("input_tokens", "output_tokens", "server_tool_uses"):
        assert done["usage"][key] == sum(s["usage"][key] for s in step_events)
    assert D(str(done["estimated_cost_usd"])) == sum(D(str(s["cost_usd"])) for s in step_events)
    for s in step_events:
        assert D(str(s["cost_usd"])) == cost(s["usage"])

    # What went upstream: each step's request ends with the previous step's results, in the model's order.
    sent = fake.bodies()
    assert len(sent) == 3
    assert [r["tool_use_id"] for r in last_results(sent[1])] == ["toolu_a1", "toolu_a2"]
    assert [r["tool_use_id"] for r in last_results(sent[2])] == ["toolu_b1", "toolu_b2"]
    assert last_results(sent[1])[0] == {"type": "tool_result", "tool_use_id": "toolu_a1",
                                        "content": "Oslo: 3 results"}
    for body in sent:
        assert tool_names(body) == ALL_TOOLS and "tool_choice" not in body

    # The audit: every turn with its blocks, every call with its reply and step, every tool run.
    record = await audit(loop, start["conversation_id"])
    turns = record["turns"]
    assert [(t["role"], t["step"]) for t in turns] == [("user", 0), ("assistant", 1), ("user", 1),
                                                      ("assistant", 2), ("user", 2), ("assistant", 3)]
    assert all(t["status"] == "complete" and t["reply_id"] == start["reply_id"] for t in turns)
    assert [b["type"] for b in turns[1]["blocks"]] == ["text", "tool_use", "tool_use"]
    assert turns[1]["content"] == "Let me look." and turns[5]["content"] == "All done."
    assert [b["tool_use_id"] for b in turns[2]["blocks"]] == ["toolu_a1", "toolu_a2"]
    assert turns[5]["id"] == done["turn_id"]
    requests = record["requests"]
    assert [(r["step"], r["reply_id"], r["status"]) for r in requests] == [
        (1, start["reply_id"], "ok"), (2, start["reply_id"], "ok"), (3, start["reply_id"], "ok")]
    assert [r["turn_id"] for r in requests] == [turns[1]["id"], turns[3]["id"], turns[5]["id"]]
    runs = sorted(record["tool_runs"], key=lambda r: r["tool_use_id"])
    assert [(r["tool_use_id"], r["name"], r["kind"], r["step"], r["is_error"], r["status"]) for r in runs] == [
        ("toolu_a1", "lookup", "python", 1, False, "done"), ("toolu_a2", "add", "python", 1, False, "done"),
        ("toolu_b1", "where_sync", "python", 2, False, "done"), ("toolu_b2", "where_async", "python", 2, False,
                                                                "done")]
    assert runs[0]["input"] == {"city": "Oslo"} and runs[0]["output"] == "Oslo: 3 results"
    assert runs[1]["input"] == {"a": 2, "b": 40} and runs[1]["output"] == '{"sum":42}'
    assert all(isinstance(r["duration_ms"], int) and r["reply_id"] == start["reply_id"] for r in runs)
    assert record["totals"]["requests"] == 3
    assert record["totals"]["cost_usd"] == D(str(done["estimated_cost_usd"]))

    body = await next_message_is_accepted(loop, fake, start["conversation_id"])
    assert len(body["messages"]) == 7  # the whole loop went back, then the new message


async def test_post_agent_returns_the_text_of_every_step_and_the_tool_calls(loop, fake) -> None:
    fake.script(
        {"tokens": ["Checking ", "three ", "things. "], "tool_calls": [
            call("slow", "toolu_0", seconds=0.2), call("lookup", "toolu_1", city="Rome"), call("boom", "toolu_2")]},
        {"tokens": ["Rome is ", "fine. "], "tool_calls": [call("add", "toolu_3", a=1)]},
        {"tokens": ["The end."]},
    )
    response = await loop.post("/agent", json={"message": "Go"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["content"] == "Checking three things. Rome is fine. The end."
    assert body["steps"] == 3 and body["status"] == "complete"
    # In the order the model asked, step after step, though the slow call finished last of its step.
    assert [c["id"] for c in body["tool_calls"]] == ["toolu_0", "toolu_1", "toolu_2", "toolu_3"]
    by_id = {c["id"]: c for c in body["tool_calls"] if c["id"] != "toolu_0"}
    assert by_id == {
        "toolu_1": {"id": "toolu_1", "name": "lookup", "kind": "python", "input": {"city": "Rome"}, "is_error": False,
                    "content": "Rome: 3 results", "duration_ms": by_id["toolu_1"]["duration_ms"]},
        "toolu_2": {"id": "toolu_2", "name": "boom", "kind": "python", "input": {}, "is_error": True,
                    "content": "RuntimeError: the flux capacitor broke",
                    "duration_ms": by_id["toolu_2"]["duration_ms"]},
        "toolu_3": {"id": "toolu_3", "name": "add", "kind": "python", "input": {"a": 1}, "is_error": False,
                    "content": '{"sum":2}', "duration_ms": by_id["toolu_3"]["duration_ms"]},
    }
    assert all(isinstance(c["duration_ms"], int) for c in body["tool_calls"])
    record = await audit(loop, body["conversation_id"])
    assert record["turns"][-1]["id"] == body["turn_id"]
    await next_message_is_accepted(loop, fake, body["conversation_id"])


# -- tools that fail ----------------------------------------------------------------------------------------------


async def test_failing_tools_give_error_results_and_the_reply_goes_on(loop, fake) -> None:
    fake.script(
        {"tool_calls": [call("boom", "toolu_boom", reason="no fuel"), call("slow", "toolu_slow", seconds=30),
                        {"name": "nope", "input": {}, "undeclared": True, "id": "toolu_nope"},
                        call("lookup", "toolu_bad"),  # lookup without its required city
                        call("exits", "toolu_exit"), call("cancels_itself", "toolu_cancel")]},
        {"text": "Some tools failed."},
    )
    events = await stream(loop, {"message": "Try everything"})
    assert_numbered(events)
    assert events[-1].name == "done" and events[-1].data["status"] == "complete"
    uses = {e.data["id"]: e.data for e in events if e.name == "tool_use"}
    assert uses["toolu_nope"]["kind"] == "unknown"
    results = {e.data["tool_use_id"]: e.data for e in events if e.name == "tool_result"}
    assert all(result["is_error"] for result in results.values())
    assert results["toolu_boom"]["content"] == "RuntimeError: no fuel"
    assert results["toolu_slow"]["content"] == "the tool did not finish within 0.3 s"  # its timeout_seconds
    assert 250 <= results["toolu_slow"]["duration_ms"] < 5000
    assert results["toolu_nope"]["content"] == "unknown tool 'nope'"
    assert results["toolu_bad"]["content"] == "invalid input: city: Field required"
    assert results["toolu_exit"]["content"] == "SystemExit: 2"  # sys.exit() in a tool does not end the server
    assert results["toolu_cancel"]["content"] == "the tool was cancelled"
    sent = last_results(fake.bodies()[1])
    assert [r["tool_use_id"] for r in sent] == ["toolu_boom", "toolu_slow", "toolu_nope", "toolu_bad", "toolu_exit",
                                                "toolu_cancel"]
    assert all(r["is_error"] is True for r in sent)
    assert sent[0]["content"] == "RuntimeError: no fuel"
    record = await audit(loop, events[0].data["conversation_id"])
    runs = {r["tool_use_id"]: r for r in record["tool_runs"]}
    assert (runs["toolu_nope"]["name"], runs["toolu_nope"]["kind"], runs["toolu_nope"]["is_error"]) == (
        "nope", "unknown", True)
    assert runs["toolu_slow"]["output"] == "the tool did not finish within 0.3 s"
    await next_message_is_accepted(loop, fake, events[0].data["conversation_id"])


async def test_the_default_tool_timeout_comes_from_the_environment(database_url, fake, tmp_path) -> None:
    settings = make_settings(database_url, fake, AGENT_TOOLS_FILE=str(write_tools(tmp_path)),
                             AGENT_TOOL_TIMEOUT_SECONDS=0.2)
    fake.script({"tool_calls": [call("slow_sync", "toolu_s", seconds=3), call("lookup", "toolu_l", city="Ulm")]},
                {"text": "ok"})
    async with app_client(settings) as http:
        http.headers.update(auth())
        response = await http.post("/agent", json={"message": "Wait"})
    assert response.status_code == 200, response.text
    by_id = {c["id"]: c for c in response.json()["tool_calls"]}
    assert by_id["toolu_s"]["is_error"] and by_id["toolu_s"]["content"] == "the tool did not finish within 0.2 s"
    assert by_id["toolu_s"]["duration_ms"] < 2500  # abandoned in its thread, not waited for
    assert not by_id["toolu_l"]["is_error"]
    assert fake.violations() == []


async def test_huge_output_is_cut_for_the_model_and_events_are_cut_at_64_kib(database_url, fake, tmp_path) -> None:
    settings = make_settings(database_url, fake, AGENT_TOOLS_FILE=str(write_tools(tmp_path)),
                             AGENT_TOOL_OUTPUT_MAX_CHARS=200_000)
    fake.script({"tool_calls": [call("huge", "toolu_h", chars=100_000), call("huge", "toolu_x", chars=300_000)]},
                {"text": "Long."})
    async with app_client(settings) as http:
        http.headers.update(auth())
        events = await stream(http, {"message": "Everything"})
        record = await audit(http, events[0].data["conversation_id"])
    assert_numbered(events)
    results = {e.data["tool_use_id"]: e.data for e in events if e.name == "tool_result"}
    whole = mcp_servers.huge(100_000)
    # Under AGENT_TOOL_OUTPUT_MAX_CHARS: the model gets it whole; the event is cut at 64 KiB and says so.
    assert results["toolu_h"]["content"] == whole[:65536] and results["toolu_h"]["truncated"] is True
    sent = {r["tool_use_id"]: r for r in last_results(fake.bodies()[1])}
    assert sent["toolu_h"]["content"] == whole
    # Over it: cut for the model too, with a notice.
    notice = "\n[output cut at 200000 of 300000 characters]"
    assert sent["toolu_x"]["content"] == mcp_servers.huge(300_000)[:200_000] + notice
    assert "is_error" not in sent["toolu_x"]
    runs = {r["tool_use_id"]: r for r in record["tool_runs"]}
    assert runs["toolu_h"]["output"] == whole  # the audit has it whole
    assert runs["toolu_x"]["output"] == sent["toolu_x"]["content"]
    assert fake.violations() == []


async def test_content_blocks_from_a_tool_go_to_the_model_as_blocks(loop, fake) -> None:
    fake.script({"tool_calls": [call("blocks", "toolu_b")]}, {"text": "Saw the picture."})
    events = await stream(loop, {"message": "Show me"})
    result = next(e.data for e in events if e.name == "tool_result")
    assert result["is_error"] is False
    assert json.loads(result["content"]) == mcp_servers.blocks()  # JSON text for anything but plain text
    sent = last_results(fake.bodies()[1])[0]
    assert sent["content"] == mcp_servers.blocks()
    record = await audit(loop, events[0].data["conversation_id"])
    assert record["tool_runs"][0]["output"] == mcp_servers.blocks()
    await next_message_is_accepted(loop, fake, events[0].data["conversation_id"])


# -- server tools, thinking, pause_turn ----------------------------------------------------------------------------


async def test_a_server_tool_is_streamed_and_its_fee_is_in_the_ledger(loop, fake) -> None:
    fake.script({"server_tool_uses": [{"input": {"query": "tides in Brest"}}, {"input": {"query": "moon"}}],
                 "tokens": ["High tide ", "at noon."]})
    events = await stream(loop, {"message": "When is high tide?"})
    assert_numbered(events)
    uses = [e.data for e in events if e.name == "tool_use"]
    assert [(u["name"], u["kind"], u["input"]) for u in uses] == [
        ("web_search", "server", {"query": "tides in Brest"}), ("web_search", "server", {"query": "moon"})]
    results = [e.data for e in events if e.name == "tool_result"]
    assert [r["tool_use_id"] for r in results] == [u["id"] for u in uses]
    assert all(r["is_error"] is False and "example.com" in r["content"] for r in results)
    step, done = next(e.data for e in events if e.name == "step"), events[-1].data
    assert step["usage"]["server_tool_uses"] == 2 and done["usage"]["server_tool_uses"] == 2
    expected = cost(step["usage"], searches=2)
    assert D(str(step["cost_usd"])) == expected and D(str(done["estimated_cost_usd"])) == expected
    assert expected - cost(step["usage"]) == D("0.02")  # $10 per 1,000 searches, on top of the tokens
    record = await audit(loop, done["conversation_id"])
    (row,) = record["requests"]
    assert row["server_tool_uses"] == 2 and row["cost_usd"] == expected
    assert record["totals"]["server_tool_uses"] == 2 and record["totals"]["cost_usd"] == expected
    usage = (await loop.get("/usage", params={"group_by": "conversation"})).json()
    group = next(g for g in usage["groups"] if g["group"] == done["conversation_id"])
    assert group["server_tool_uses"] == 2 and D(str(group["cost_usd"])) == expected
    # The assistant turn keeps the server blocks, and they go back as they came.
    assert [b["type"] for b in record["turns"][1]["blocks"]] == [
        "server_tool_use", "web_search_tool_result", "server_tool_use", "web_search_tool_result", "text"]
    body = await next_message_is_accepted(loop, fake, done["conversation_id"])
    assert no_markers(body["messages"][1]["content"]) == record["turns"][1]["blocks"]


async def test_pause_turn_sends_the_content_back_and_continues(loop, fake) -> None:
    fake.script({"server_tool_uses": [{"input": {"query": "first"}}], "stop_reason": "pause_turn",
                 "tokens": ["Searching... "]},
                {"tokens": ["Found it."]})
    response = await loop.post("/agent", json={"message": "Search the web"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["steps"] == 2 and body["stop_reason"] == "end_turn" and body["content"] == "Searching... Found it."
    first, second = fake.bodies()
    # The paused message went back unchanged, as the last message, and the model carried on.
    record = await audit(loop, body["conversation_id"])
    paused = record["turns"][1]
    assert paused["role"] == "assistant" and paused["step"] == 1
    assert second["messages"][-1]["role"] == "assistant"
    sent = no_markers(second["messages"][-1]["content"])
    # Unchanged, but for the trailing whitespace the API refuses at the end of a final assistant message.
    assert sent[:-1] == paused["blocks"][:-1] and [b["type"] for b in sent] == [
        "server_tool_use", "web_search_tool_result", "text"]
    assert sent[-1]["text"] == "Searching..." and paused["blocks"][-1]["text"] == "Searching... "
    assert [r["stop_reason"] for r in record["requests"]] == ["pause_turn", "end_turn"]
    assert fake.violations() == []
    await next_message_is_accepted(loop, fake, body["conversation_id"])


async def test_a_step_whose_text_is_only_whitespace_does_not_break_the_conversation(loop, fake) -> None:
    fake.script({"tokens": ["\n\n"], "tool_calls": [call("lookup", "toolu_w", city="Graz")]}, {"text": "Graz."})
    response = await loop.post("/agent", json={"message": "Look it up"})
    assert response.status_code == 200, response.text
    assert response.json()["content"] == "\n\nGraz."  # what a streaming client was shown
    assert fake.violations() == []
    record = await audit(loop, response.json()["conversation_id"])
    assert [b["type"] for b in record["turns"][1]["blocks"]] == ["tool_use"]  # the blank text cannot go back
    await next_message_is_accepted(loop, fake, response.json()["conversation_id"])


async def test_thinking_is_streamed_and_resent_byte_for_byte(loop, fake) -> None:
    fake.script({"thinking": "The user wants Oslo; the atlas tool knows.", "tokens": ["Looking. "],
                 "tool_calls": [call("lookup", "toolu_t", city="Oslo")]},
                {"thinking": "Now I can answer.", "redacted_thinking": True, "tokens": ["Oslo has 3."]})
    events = await stream(loop, {"message": "Tell me about Oslo", "max_tokens": 4096,
                                 "thinking": {"budget_tokens": 1024}})
    assert_numbered(events)
    assert fake.violations() == []
    thought = "".join(e.data["text"] for e in events if e.name == "thinking")
    assert thought == "The user wants Oslo; the atlas tool knows.Now I can answer."
    assert names(events).index("thinking") < names(events).index("token")
    first, second = fake.bodies()
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 1024} and first["max_tokens"] == 4096
    record = await audit(loop, events[0].data["conversation_id"])
    step1, step2 = record["turns"][1], record["turns"][3]
    assert [b["type"] for b in step1["blocks"]] == ["thinking", "text", "tool_use"]
    assert [b["type"] for b in step2["blocks"]] == ["thinking", "redacted_thinking", "text"]
    assert step1["blocks"][0]["signature"]
    # The loop's second call carried step 1 exactly as it came (the fake checked the signature).
    assert no_markers(second["messages"][1]["content"]) == step1["blocks"]
    # A later reply, thinking again, sends both steps back as they came: the fake accepts the signatures.
    fake.script({"text": "Anything else?"})
    again = await loop.post("/agent", json={"conversation_id": events[0].data["conversation_id"],
                                            "message": "Thanks", "max_tokens": 4096,
                                            "thinking": {"budget_tokens": 1024}})
    assert again.status_code == 200, again.text
    assert fake.violations() == []
    later = fake.bodies()[-1]["messages"]
    assert no_markers(later[1]["content"]) == step1["blocks"] and no_markers(later[3]["content"]) == step2["blocks"]
    raw = [r for r in fake.requests() if r["path"] == "/v1/messages"]
    assert len(raw) == 3


async def test_thinking_needs_max_tokens_above_its_budget(loop) -> None:
    response = await loop.post("/agent", json={"message": "Hi", "max_tokens": 1024,
                                               "thinking": {"budget_tokens": 1024}})
    assert response.status_code == 422
    assert "budget_tokens must be less than max_tokens" in response.json()["error"]["message"]


# -- the step limit, tools and tool_choice per request -------------------------------------------------------------


@pytest.mark.parametrize("steps", [3, 1])
async def test_the_last_step_is_made_with_tool_choice_none_and_tools_still_declared(database_url, fake, tmp_path,
                                                                                   steps) -> None:
    settings = make_settings(database_url, fake, AGENT_TOOLS_FILE=str(write_tools(tmp_path)),
                             AGENT_MAX_TOOL_STEPS=steps)
    # The model would call a tool every time; told "none" on the last call, it answers in words.
    if steps > 1:
        fake.script({"tool_calls": [call("lookup", city="A")], "times": steps - 1})
    fake.script({"text": "Out of steps: here is what I know."})
    async with app_client(settings) as http:
        http.headers.update(auth())
        response = await http.post("/agent", json={"message": "Keep looking", "tool_choice": {"type": "auto"}})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["steps"] == steps and body["status"] == "complete"
        assert body["content"] == "Out of steps: here is what I know."
        sent = fake.bodies()
        assert len(sent) == steps
        assert [b.get("tool_choice") for b in sent] == [{"type": "auto"}] * (steps - 1) + [{"type": "none"}]
        assert all(tool_names(b) == ALL_TOOLS for b in sent)
        assert len(body["tool_calls"]) == steps - 1
        await next_message_is_accepted(http, fake, body["conversation_id"])


async def test_unknown_tool_names_are_refused_with_422(loop, fake) -> None:
    for body in ({"message": "Hi", "tools": ["lookup", "nope"]},
                 {"message": "Hi", "tool_choice": {"type": "tool", "name": "nope"}},
                 {"message": "Hi", "tool_choice": {"type": "tool"}},
                 {"message": "Hi", "tool_choice": {"type": "sometimes"}},
                 # a named tool this reply does not offer: refused here, not by the upstream
                 {"message": "Hi", "tools": ["add"], "tool_choice": {"type": "tool", "name": "lookup"}},
                 {"message": "Hi", "tools": [], "tool_choice": {"type": "tool", "name": "lookup"}},
                 {"message": "Hi", "tools": "lookup"}):
        response = await loop.post("/agent", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert "unknown tool 'nope'" in (await loop.post("/agent", json={"message": "Hi", "tools": ["nope"]})).text
    assert fake.bodies() == []


async def test_tools_and_tool_choice_per_request(loop, fake) -> None:
    fake.script({"tool_calls": [call("lookup", "toolu_1", city="Bern")]}, {"text": "Bern."})
    first = await loop.post("/agent", json={"message": "Only lookup", "tools": ["lookup", "web_search"],
                                            "tool_choice": {"type": "any"}})
    assert first.status_code == 200, first.text
    conversation = first.json()["conversation_id"]
    one, two = fake.bodies()
    assert tool_names(one) == ["lookup", "web_search"] and one["tool_choice"] == {"type": "any"}
    # A forced tool is for the first step only: after it the model may answer in words.
    assert tool_names(two) == ["lookup", "web_search"] and two["tool_choice"] == {"type": "auto"}
    # A model that names a tool this reply does not offer gets an error result.
    fake.script({"tool_calls": [{"name": "add", "input": {"a": 1}, "undeclared": True, "id": "toolu_2"}]},
                {"text": "Could not add."})
    calls_before = list(mcp_servers.CALLS)
    hidden = await loop.post("/agent", json={"conversation_id": conversation, "message": "Add", "tools": ["lookup"]})
    assert hidden.status_code == 200, hidden.text
    (refused,) = hidden.json()["tool_calls"]
    assert refused["is_error"] and refused["content"] == "the tool 'add' is not available in this reply"
    assert mcp_servers.CALLS == calls_before  # not run
    # tools: [] on a conversation whose history holds tool blocks: tools are declared, with tool_choice none.
    fake.script({"text": "No tools now."})
    none = await loop.post("/agent", json={"conversation_id": conversation, "message": "No tools", "tools": []})
    assert none.status_code == 200, none.text
    last = fake.bodies()[-1]
    assert last["tool_choice"] == {"type": "none"} and tool_names(last) == ALL_TOOLS
    # tools: [] on a fresh conversation: no tools at all.
    fake.script({"text": "Plain."})
    plain = await loop.post("/agent", json={"message": "Plain chat", "tools": []})
    assert plain.status_code == 200, plain.text
    assert "tools" not in fake.bodies()[-1] and "tool_choice" not in fake.bodies()[-1]
    assert fake.violations() == []


async def test_a_conversation_with_tool_blocks_stays_valid_when_later_replies_offer_no_tools(loop, fake) -> None:
    fake.script({"tool_calls": [call("lookup", "toolu_1", city="Bonn")]}, {"text": "Bonn."})
    first = await loop.post("/agent", json={"message": "Look"})
    conversation = first.json()["conversation_id"]
    fake.script({"tool_calls": [call("lookup", "toolu_2", city="Kiel")]}, {"text": "Kiel."})
    # Offering only one tool still declares it; the history's other tool blocks are fine with the API.
    second = await loop.post("/agent", json={"conversation_id": conversation, "message": "Again",
                                             "tools": ["lookup"], "tool_choice": {"type": "tool", "name": "lookup"}})
    assert second.status_code == 200, second.text
    assert fake.bodies()[-2]["tool_choice"] == {"type": "tool", "name": "lookup"}
    assert fake.bodies()[-1]["tool_choice"] == {"type": "auto"}
    assert fake.violations() == []


# -- cancel -------------------------------------------------------------------------------------------------------


async def test_cancel_mid_tool_closes_the_step_with_not_run_results(loop, fake) -> None:
    fake.script({"tokens": ["One moment."], "tool_calls": [call("wait_for_release", "toolu_w"),
                                                          call("lookup", "toolu_l", city="Pisa")]})
    started = await background(loop, {"message": "Wait for it"})
    reply_id, conversation = started["reply_id"], started["conversation_id"]
    await wait_for_event(loop, reply_id, "tool_result")  # lookup is done; wait_for_release is still running
    assert "wait_for_release" in mcp_servers.CALLS
    response = await loop.post(f"/replies/{reply_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["steps"] == 1
    again = await loop.post(f"/replies/{reply_id}/cancel")  # idempotent
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    events = await replayed(loop, reply_id)
    assert_numbered(events)
    assert names(events)[-1] == "cancelled" and events[-1].data["reply_id"] == reply_id
    assert [e.data["tool_use_id"] for e in events if e.name == "tool_result"] == ["toolu_l"]
    record = await audit(loop, conversation)
    assert [(t["role"], t["status"]) for t in record["turns"]] == [("user", "complete"), ("assistant", "complete"),
                                                                   ("user", "complete")]
    results = record["turns"][2]["blocks"]
    assert [r["tool_use_id"] for r in results] == ["toolu_w", "toolu_l"]
    assert results[0] == {"type": "tool_result", "tool_use_id": "toolu_w",
                          "content": "not run: the reply was cancelled", "is_error": True}
    assert results[1]["content"] == "Pisa: 3 results"
    runs = {r["tool_use_id"]: r for r in record["tool_runs"]}
    assert runs["toolu_w"]["is_error"] and runs["toolu_w"]["output"] == "not run: the reply was cancelled"
    assert [r["status"] for r in record["requests"]] == ["ok"]
    assert [r["status"] for r in record["replies"]] == ["cancelled"]
    # The conversation goes on: the step's tools ran (or were closed), and the model is told so.
    body = await next_message_is_accepted(loop, fake, conversation)
    assert [b.get("tool_use_id") for b in body["messages"][2]["content"][:2]] == ["toolu_w", "toolu_l"]


async def test_cancel_mid_stream_keeps_the_partial_text_in_the_audit_only(loop, fake) -> None:
    fake.script({"n_tokens": 400, "token_delay": 0.02})
    started = await background(loop, {"message": "Talk for a long time"})
    reply_id, conversation = started["reply_id"], started["conversation_id"]
    await wait_for_event(loop, reply_id, "token", count=3)
    response = await loop.post(f"/replies/{reply_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    fake.wait_for("disconnected")  # the upstream call was closed
    record = await audit(loop, conversation)
    assert [(t["role"], t["status"]) for t in record["turns"]] == [("user", "complete"), ("assistant", "incomplete")]
    assert record["turns"][1]["content"]
    assert [r["status"] for r in record["requests"]] == ["cancelled"]
    body = await next_message_is_accepted(loop, fake, conversation)
    assert [m["role"] for m in body["messages"]] == ["user"]  # a reply cut before any tool ran is left out whole


async def test_cancel_mid_stream_after_a_step_keeps_the_completed_step(loop, fake) -> None:
    fake.script({"tool_calls": [call("lookup", "toolu_1", city="Lyon")]}, {"n_tokens": 400, "token_delay": 0.02})
    started = await background(loop, {"message": "Look, then talk"})
    reply_id, conversation = started["reply_id"], started["conversation_id"]
    await wait_for_event(loop, reply_id, "token", count=3)
    response = await loop.post(f"/replies/{reply_id}/cancel")
    assert response.json()["status"] == "cancelled" and response.json()["steps"] == 2
    record = await audit(loop, conversation)
    assert [(t["role"], t["step"], t["status"]) for t in record["turns"]] == [
        ("user", 0, "complete"), ("assistant", 1, "complete"), ("user", 1, "complete"),
        ("assistant", 2, "incomplete")]
    assert [r["status"] for r in record["requests"]] == ["ok", "cancelled"]
    body = await next_message_is_accepted(loop, fake, conversation)
    # The completed step went back, the cut one did not: its results, then the new message, in one user turn.
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    last = body["messages"][2]["content"]
    assert last[0]["tool_use_id"] == "toolu_1" and last[-1]["text"] == "And now?"


# -- metrics ------------------------------------------------------------------------------------------------------


def tool_runs(metrics: str) -> dict[tuple[str, str], float]:
    import re

    found = {}
    for line in metrics.splitlines():
        match = re.match(r'agent_tool_runs_total\{(.*)\} (\S+)$', line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            found[(labels["tool"], labels["outcome"])] = float(match.group(2))
    return found


async def test_metrics_count_tool_runs_by_configured_name_and_outcome(loop, fake) -> None:
    fake.script({"tool_calls": [call("lookup", city="Ulm"), call("lookup", city="Ulm"), call("boom"),
                                call("slow", seconds=30),
                                {"name": "made_up_by_the_model", "input": {}, "undeclared": True}]},
                {"text": "Counted."})
    response = await loop.post("/agent", json={"message": "Count"})
    assert response.status_code == 200, response.text
    metrics = await loop.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert metrics.status_code == 200
    assert tool_runs(metrics.text) == {("lookup", "ok"): 2.0, ("boom", "error"): 1.0, ("slow", "timeout"): 1.0,
                                       ("unknown", "error"): 1.0}
    assert "made_up_by_the_model" not in metrics.text


# -- MCP over stdio, in the loop ---------------------------------------------------------------------------------


async def test_an_mcp_server_over_stdio_in_the_loop_and_after_it_crashed(database_url, fake, tmp_path) -> None:
    tools = write_tools(tmp_path, f"""
[mcp.docs]
command = "{sys.executable}"
args = ["{MCP_SCRIPT}", "stdio"]
allow = ["search", "crash", "whoami"]
""")
    settings = make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools))
    fake.script({"tool_calls": [call("docs__search", "toolu_s", query="tides")]},
                {"tool_calls": [call("docs__crash", "toolu_c")]},
                {"text": "The docs server crashed."})
    async with app_client(settings) as http:
        http.headers.update(auth())
        events = await stream(http, {"message": "Search the docs"})
        assert_numbered(events)
        assert events[-1].data["status"] == "complete" and events[-1].data["steps"] == 3
        uses = [e.data for e in events if e.name == "tool_use"]
        assert [(u["name"], u["kind"]) for u in uses] == [("docs__search", "mcp"), ("docs__crash", "mcp")]
        results = {e.data["tool_use_id"]: e.data for e in events if e.name == "tool_result"}
        assert results["toolu_s"]["is_error"] is False
        assert results["toolu_s"]["content"].startswith("results for 'tides' from pid ")
        assert results["toolu_c"]["is_error"] is True
        assert results["toolu_c"]["content"].startswith("the MCP server docs failed (")
        assert tool_names(fake.bodies()[0]) == ["docs__crash", "docs__search", "docs__whoami"]
        # The next reply finds the server restarted.
        fake.script({"tool_calls": [call("docs__whoami", "toolu_p")]}, {"text": "Back."})
        response = await http.post("/agent", json={"conversation_id": events[0].data["conversation_id"],
                                                   "message": "Again"})
        assert response.status_code == 200, response.text
        (whoami,) = response.json()["tool_calls"]
        assert whoami["is_error"] is False and whoami["kind"] == "mcp"
        old_pid = results["toolu_s"]["content"].rsplit(" ", 1)[1]
        assert whoami["content"].startswith("pid=") and whoami["content"].split()[0] != f"pid={old_pid}"
        record = await audit(http, events[0].data["conversation_id"])
        assert {r["name"]: r["kind"] for r in record["tool_runs"]} == {
            "docs__search": "mcp", "docs__crash": "mcp", "docs__whoami": "mcp"}
        assert fake.violations() == []


# -- the offline stub's demo loop -------------------------------------------------------------------------------------


async def test_the_offline_stub_runs_the_example_tools(database_url) -> None:
    settings = make_settings(database_url, None, AGENT_STUB_TOKEN_DELAY=0)
    async with app_client(settings) as http:
        http.headers.update(auth(ALICE))
        events = await stream(http, {"message": "what time is it?"})
        assert_numbered(events)
        (use,) = [e.data for e in events if e.name == "tool_use"]
        assert (use["name"], use["kind"]) == ("current_time", "python")
        (result,) = [e.data for e in events if e.name == "tool_result"]
        assert result["is_error"] is False and result["content"][:2] == "20"  # an ISO date and time
        done = events[-1].data
        assert done["status"] == "complete" and done["steps"] == 2
        text = "".join(e.data["text"] for e in events if e.name == "token")
        assert text.startswith("[offline stub] ") and f"The tool said: {result['content']}" in text
        response = await http.post("/agent", json={"message": "what is 12*7?"})
        assert response.status_code == 200, response.text
        body = response.json()
        (calc,) = body["tool_calls"]
        assert (calc["name"], calc["input"], calc["content"]) == ("calculator", {"expression": "12*7"}, "84")
        assert body["content"].endswith("The tool said: 84")


async def test_a_conversation_with_tool_blocks_goes_on_when_no_tool_is_configured_any_more(database_url, fake,
                                                                                            tmp_path) -> None:
    fake.script({"tool_calls": [call("lookup", "toolu_1", city="Bonn")]}, {"text": "Bonn."})
    async with app_client(make_settings(database_url, fake, AGENT_TOOLS_FILE=str(write_tools(tmp_path)))) as http:
        http.headers.update(auth())
        conversation = (await http.post("/agent", json={"message": "Look"})).json()["conversation_id"]
    # The operator removed the tools file; the history still holds tool blocks, which the API only takes with
    # tools declared: a placeholder is declared, and the model may not call it.
    async with app_client(make_settings(database_url, fake)) as http:
        http.headers.update(auth())
        body = await next_message_is_accepted(http, fake, conversation)
    assert tool_names(body) == ["no_tools_available"] and body["tool_choice"] == {"type": "none"}
