"""Prompt caching (API.md "Context and caching", AGENT_PROMPT_CACHE): the stable prefix is marked so that later
replies read it, within the API's rules, and the audit shows what it saved.

The fake models the cache as the API does (hashes of whole prefixes, a per-model minimum, TTLs on a clock the test
moves) and refuses a request with more than 4 breakpoints or a 1-hour one after a 5-minute one (``violations``).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from agent_server.fake_upstream import Behaviour, ToolCall
from tests.conftest import app_client, auth, make_settings

MODEL = "claude-sonnet-5-5"  # cache minimum 1,024 tokens
PRICE = {"input": Decimal("2"), "output": Decimal("10"), "5m": Decimal("2.50"), "1h": Decimal("4"),
         "read": Decimal("0.20")}  # USD per million tokens (the built-in table)
SYSTEM = "You answer in one short sentence and never apologise. " * 100  # ~5,400 characters: ~1,350 tokens
D = Decimal


def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.toml"
    path.write_text('[tools.calculator]\npython = "agent_server.tools.examples:calculator"\n\n'
                    '[tools.current_time]\npython = "agent_server.tools.examples:current_time"\n')
    return path


def exact(response: httpx.Response) -> dict:
    return json.loads(response.text, parse_float=Decimal)


def markers(body: dict) -> list[dict]:
    """Every ``cache_control`` of a request, in prompt order (tools, system, messages), the top-level one last."""
    found = [tool["cache_control"] for tool in body.get("tools") or [] if "cache_control" in tool]
    system = body.get("system")
    if isinstance(system, list):
        found += [block["cache_control"] for block in system if "cache_control" in block]
    for message in body["messages"]:
        if isinstance(message["content"], list):
            found += [block["cache_control"] for block in message["content"] if "cache_control" in block]
    if "cache_control" in body:
        found.append(body["cache_control"])
    return found


def ttl(marker: dict) -> str:
    return marker.get("ttl", "5m")


async def converse(client: httpx.AsyncClient, messages: list[str], *, conversation_id: str | None = None,
                   fake=None, before_each=None) -> tuple[str, list[dict]]:  # type: ignore[no-untyped-def]
    replies = []
    for number, message in enumerate(messages):
        if before_each is not None:
            before_each(number)
        body: dict = {"message": message, "system": SYSTEM}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        response = await client.post("/agent", json=body)
        assert response.status_code == 200, response.text
        replies.append(exact(response))
        conversation_id = replies[-1]["conversation_id"]
    assert conversation_id is not None
    return conversation_id, replies


def savings(row: dict) -> Decimal:
    """What one call's cache use saved against sending everything as plain input (API.md's definition)."""
    write_1h = row["cache_creation"]["ephemeral_1h_input_tokens"] or 0
    write_5m = row["cache_creation"]["ephemeral_5m_input_tokens"]
    write_5m = row["cache_creation_input_tokens"] - write_1h if write_5m is None else write_5m
    micro = (row["cache_read_input_tokens"] * (PRICE["input"] - PRICE["read"])
             - write_5m * (PRICE["5m"] - PRICE["input"]) - write_1h * (PRICE["1h"] - PRICE["input"]))
    return micro / D(1_000_000)


def call_cost(row: dict) -> Decimal:
    write_1h = row["cache_creation"]["ephemeral_1h_input_tokens"] or 0
    write_5m = row["cache_creation"]["ephemeral_5m_input_tokens"] or 0
    micro = (row["input_tokens"] * PRICE["input"] + row["output_tokens"] * PRICE["output"]
             + write_5m * PRICE["5m"] + write_1h * PRICE["1h"] + row["cache_read_input_tokens"] * PRICE["read"])
    return micro / D(1_000_000)


def usd(value: Decimal) -> Decimal:
    return value.quantize(D("0.000000001"))


@pytest.mark.parametrize("setting", ["5m", "1h", None])
async def test_every_reply_after_the_first_reads_the_prefix(database_url, fake, tmp_path, setting) -> None:
    """5m (the default, ``None`` here) and 1h: the first reply writes, every later one reads what the previous one
    wrote; never more than 4 breakpoints, all of the configured TTL (so no 1h after a 5m); savings in the audit."""
    extra = {} if setting is None else {"AGENT_PROMPT_CACHE": setting}
    expected_ttl = setting or "5m"
    async with app_client(make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools_file(tmp_path)),
                                        **extra)) as client:
        client.headers.update(auth())
        conversation_id, replies = await converse(client, [f"question {n}: what is {n} times {n}?" for n in range(6)])
        assert fake.violations() == []
        for number, body in enumerate(fake.bodies()):
            found = markers(body)
            assert 1 <= len(found) <= 4, found
            assert {ttl(marker) for marker in found} == {expected_ttl}
            assert all(marker["type"] == "ephemeral" for marker in found)
            assert body["tools"][-1].get("cache_control") is not None  # the tools are the start of the prefix
        usages = [reply["usage"] for reply in replies]
        assert usages[0]["cache_read_input_tokens"] == 0 and usages[0]["cache_creation_input_tokens"] > 1024
        for usage in usages[1:]:
            assert usage["cache_read_input_tokens"] > 1024, usages  # the system prompt and tools at least
            # Only what is new is written: the previous reply's question and answer, and this question.
            assert usage["cache_creation_input_tokens"] < 200, usages
        reads = [usage["cache_read_input_tokens"] for usage in usages[1:]]
        assert reads == sorted(reads) and reads[-1] > reads[0]  # the history is read from the cache as it grows

        audit = exact(await client.get(f"/conversations/{conversation_id}"))
        rows = audit["requests"]
        for row in rows:
            breakdown = row["cache_creation"]
            other = "ephemeral_5m_input_tokens" if expected_ttl == "1h" else "ephemeral_1h_input_tokens"
            assert breakdown[other] == 0
            assert row["cost_usd"] == usd(call_cost(row))  # 1-hour writes at the 1-hour rate
            assert row["cache_savings_usd"] == usd(savings(row))
        assert rows[0]["cache_savings_usd"] < 0  # the first call only paid the writes
        totals = audit["totals"]
        assert totals["cache_savings_usd"] == sum(row["cache_savings_usd"] for row in rows)
        assert totals["cache_savings_usd"] > 0  # reads dominate by now
        listed = exact(await client.get("/conversations"))["conversations"]
        assert [c["totals"]["cache_savings_usd"] for c in listed if c["id"] == conversation_id] == [
            totals["cache_savings_usd"]]


async def test_off_sends_no_cache_control_at_all(database_url, fake, tmp_path) -> None:
    async with app_client(make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools_file(tmp_path)),
                                        AGENT_PROMPT_CACHE="off")) as client:
        client.headers.update(auth())
        fake.script(Behaviour(), Behaviour(tool_calls=[ToolCall(name="calculator", input={"expression": "6*7"})]),
                    Behaviour(text="42"))
        conversation_id, replies = await converse(client, ["first", "second", "third"])
        sent = fake.bodies()
        assert len(sent) == 4
        for body in sent:
            assert "cache_control" not in json.dumps(body)
        assert all(reply["usage"]["cache_read_input_tokens"] == 0 for reply in replies)
        assert all(reply["usage"]["cache_creation_input_tokens"] == 0 for reply in replies)
        audit = exact(await client.get(f"/conversations/{conversation_id}"))
        assert audit["totals"]["cache_savings_usd"] == 0
        assert fake.violations() == []


async def test_a_tool_loop_reads_each_previous_step(database_url, fake, tmp_path) -> None:
    """Within one reply, each step reads what the step before it wrote."""
    async with app_client(make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools_file(tmp_path)))) as client:
        client.headers.update(auth())
        conversation_id, _ = await converse(client, ["warm up"])
        fake.script(*[Behaviour(tool_calls=[ToolCall(name="calculator", input={"expression": f"{n}*{n}"})])
                      for n in range(3)], Behaviour(text="done"))
        _, replies = await converse(client, ["three sums"], conversation_id=conversation_id)
        assert replies[0]["steps"] == 4
        audit = exact(await client.get(f"/conversations/{conversation_id}"))
        rows = [row for row in audit["requests"] if row["reply_id"] == replies[0]["reply_id"]]
        reads = [row["cache_read_input_tokens"] for row in rows]
        assert all(read > 1024 for read in reads) and reads == sorted(reads) and reads[-1] > reads[0]
        assert all(len(markers(body)) <= 4 for body in fake.bodies())
        assert fake.violations() == []


async def test_a_5_minute_cache_expires_after_5_minutes(database_url, fake, tmp_path) -> None:
    async with app_client(make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools_file(tmp_path)))) as client:
        client.headers.update(auth())
        conversation_id, _ = await converse(client, ["one", "two"])
        fake.advance_clock(299)  # still alive (each read refreshes it, too)
        _, replies = await converse(client, ["three"], conversation_id=conversation_id)
        assert replies[0]["usage"]["cache_read_input_tokens"] > 1024
        fake.advance_clock(301)
        _, replies = await converse(client, ["four", "five"], conversation_id=conversation_id)
        expired, again = replies[0]["usage"], replies[1]["usage"]
        assert expired["cache_read_input_tokens"] == 0 and expired["cache_creation_input_tokens"] > 1024
        assert again["cache_read_input_tokens"] > 1024  # written again, read again
        assert fake.violations() == []


async def test_a_1_hour_cache_outlives_5_minutes_not_an_hour(database_url, fake, tmp_path) -> None:
    async with app_client(make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools_file(tmp_path)),
                                        AGENT_PROMPT_CACHE="1h")) as client:
        client.headers.update(auth())
        conversation_id, _ = await converse(client, ["one"])
        fake.advance_clock(301)
        _, replies = await converse(client, ["two"], conversation_id=conversation_id)
        assert replies[0]["usage"]["cache_read_input_tokens"] > 1024
        fake.advance_clock(3601)
        _, replies = await converse(client, ["three"], conversation_id=conversation_id)
        assert replies[0]["usage"]["cache_read_input_tokens"] == 0
        assert fake.violations() == []


async def test_a_prefix_below_the_minimum_is_not_cached_and_costs_nothing_extra(database_url, fake) -> None:
    """A short prompt (no system, no tools) is below the 1,024-token minimum: the breakpoints are allowed, nothing
    is written or read, and the savings are zero rather than negative."""
    async with app_client(make_settings(database_url, fake)) as client:
        client.headers.update(auth())
        first = (await client.post("/agent", json={"message": "short"})).json()
        second = (await client.post("/agent", json={"message": "again", "conversation_id":
                                                    first["conversation_id"]})).json()
        for reply in (first, second):
            assert reply["usage"]["cache_read_input_tokens"] == 0
            assert reply["usage"]["cache_creation_input_tokens"] == 0
        audit = exact(await client.get(f"/conversations/{first['conversation_id']}"))
        assert audit["totals"]["cache_savings_usd"] == 0
        assert fake.violations() == []


async def test_after_a_context_cut_the_tools_and_system_are_still_read_and_the_new_prefix_soon_is(
        database_url, fake, tmp_path) -> None:
    """History cut in steps keeps the prefix stable: a cut costs one write of the history, never the tools and the
    system prompt (their breakpoints come first), and the replies after it read the new prefix."""
    window = 4096
    fake.set_models({MODEL: {"context_window": window}})
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {MODEL: {"input": "2", "output": "10", "cache_write_5m": "2.50",
                                                     "cache_write_1h": "4", "cache_read": "0.20",
                                                     "context_window": window}}}))
    settings = make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools_file(tmp_path)),
                             AGENT_PRICES_FILE=str(prices), AGENT_MAX_TOKENS=256)
    async with app_client(settings) as client:
        client.headers.update(auth())
        filler = "lorem ipsum dolor sit amet " * 15
        _, replies = await converse(client, [f"question {n}: {filler}" for n in range(16)])
        omitted = [reply["context"]["turns_omitted"] for reply in replies]
        cuts = [n for n in range(1, len(omitted)) if omitted[n] != omitted[n - 1]]
        assert cuts, omitted  # the window was reached
        prefix = replies[1]["usage"]["cache_read_input_tokens"]  # tools, system and the first exchange
        for number, reply in enumerate(replies[1:], start=1):
            read = reply["usage"]["cache_read_input_tokens"]
            assert read > 1024, (number, omitted, [r["usage"] for r in replies])
            if number in cuts:
                assert read < prefix  # the history is new: only tools and system were read
            elif number - 1 not in cuts and number > 1:
                assert read > prefix  # the history is read as well
        assert fake.violations() == []
