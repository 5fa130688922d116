"""The audit: GET /conversations/{id} exactly as API.md shows it, and the caller's paginated list."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from agent_server.db import open_database, writes
from agent_server.db.models import new_id
from agent_server.fake_upstream import Behaviour
from tests.conftest import ALICE, BOB, auth

# Part 1's keys, then what Part 2 adds (additive: an old client ignores them).
TOP_KEYS = {"id", "owner", "model", "system", "created_at", "updated_at", "turns", "requests", "totals",
            "title", "tool_runs", "replies"}
TURN_KEYS = {"id", "seq", "role", "content", "status", "created_at", "blocks", "reply_id", "step"}
REQUEST_KEYS = {
    "id", "turn_id", "route", "model", "upstream_request_id", "status", "error_type", "stop_reason", "input_tokens",
    "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd", "latency_ms", "ttft_ms",
    "created_at",
}
TOTAL_KEYS = {"requests", "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
              "cost_usd", "server_tool_uses", "cache_savings_usd"}
SUMMARY_KEYS = {"id", "model", "created_at", "updated_at", "totals", "title"}
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


def exact(response: httpx.Response) -> dict:
    return json.loads(response.text, parse_float=Decimal)


def parse_time(value: str) -> datetime:
    assert ISO_Z.match(value), value
    return datetime.fromisoformat(value.removesuffix("Z")).replace(tzinfo=UTC)


def assert_recent(value: str) -> None:
    moment = parse_time(value)
    now = datetime.now(UTC)
    assert now - timedelta(minutes=5) < moment <= now + timedelta(seconds=1)


def assert_error(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": {"type": error_type, "message": response.json()["error"]["message"]}}
    assert response.json()["error"]["message"].strip()
    assert "Traceback" not in response.text and ALICE not in response.text


async def new_conversation(client: httpx.AsyncClient, message: str = "Hi", secret: str = ALICE, **extra) -> str:
    response = await client.post("/agent", json={"message": message, **extra}, headers=auth(secret))
    assert response.status_code == 200, response.text
    return response.json()["conversation_id"]


async def list_page(client: httpx.AsyncClient, secret: str = ALICE, **params) -> dict:
    response = await client.get("/conversations", params=params, headers=auth(secret))
    assert response.status_code == 200, response.text
    return exact(response)


# -- GET /conversations/{id} -----------------------------------------------------------------------


async def test_conversation_shape_and_totals(client, fake) -> None:
    fake.script(
        Behaviour(text="first answer", usage={"input_tokens": 12, "output_tokens": 40}),
        Behaviour(text="second answer", usage={
            "input_tokens": 30, "output_tokens": 5, "cache_read_input_tokens": 200,
            "cache_creation": {"ephemeral_5m_input_tokens": 8, "ephemeral_1h_input_tokens": 2},
        }),
        Behaviour(status=500, times=3, retry_after="0.01"),
    )
    conversation_id = await new_conversation(client, "first question", system="Be kind.")
    await client.post("/agent", json={"message": "second question", "conversation_id": conversation_id})
    failed = await client.post("/agent", json={"message": "third question", "conversation_id": conversation_id})
    assert failed.status_code == 502

    response = await client.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200
    body = exact(response)
    assert set(body) == TOP_KEYS
    assert body["id"] == conversation_id
    assert body["owner"] == "alice"
    assert body["model"] == "claude-sonnet-5-5"
    assert body["system"] == "Be kind."
    for key in ("created_at", "updated_at"):
        assert_recent(body[key])
    assert parse_time(body["updated_at"]) >= parse_time(body["created_at"])

    turns = body["turns"]
    for turn in turns:
        assert set(turn) == TURN_KEYS
        assert_recent(turn["created_at"])
    assert [(t["seq"], t["role"], t["content"], t["status"]) for t in turns] == [
        (1, "user", "first question", "complete"),
        (2, "assistant", "first answer", "complete"),
        (3, "user", "second question", "complete"),
        (4, "assistant", "second answer", "complete"),
        (5, "user", "third question", "complete"),
    ]
    assert len({t["id"] for t in turns}) == 5

    requests = body["requests"]
    assert len(requests) == 3
    for row in requests:
        assert REQUEST_KEYS <= set(row), REQUEST_KEYS - set(row)
        assert_recent(row["created_at"])
        assert row["route"] == "agent"
        assert row["model"] == "claude-sonnet-5-5"
        assert isinstance(row["id"], str) and isinstance(row["upstream_request_id"], str)
        for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                    "latency_ms"):
            assert isinstance(row[key], int) and row[key] >= 0, key
        assert row["ttft_ms"] is None or isinstance(row["ttft_ms"], int)
    assert [r["error_type"] for r in requests] == [None, None, "upstream_error"]
    assert [r["stop_reason"] for r in requests][:2] == ["end_turn", "end_turn"]
    assert [r["status"] for r in requests] == ["ok", "ok", "error"]
    assert [r["turn_id"] for r in requests] == [turns[1]["id"], turns[3]["id"], None]
    assert requests[1]["cache_creation_input_tokens"] == 10
    assert requests[1]["cache_read_input_tokens"] == 200
    # sonnet-5-5 per million: input 2, output 10, 5m write 2.50, 1h write 4, read 0.20 (reference table).
    assert requests[0]["cost_usd"] == Decimal("0.000424")
    assert requests[1]["cost_usd"] == (30 * 2 + 5 * 10 + 8 * Decimal("2.5") + 2 * 4 + 200 * Decimal("0.2")) / 10**6

    totals = body["totals"]
    assert set(totals) == TOTAL_KEYS
    assert totals["requests"] == len(requests)
    for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        assert totals[key] == sum(r[key] for r in requests), key
    assert totals["cost_usd"] == sum(r["cost_usd"] or 0 for r in requests)


async def test_updated_at_moves_with_each_reply(client, fake) -> None:
    conversation_id = await new_conversation(client)
    before = exact(await client.get(f"/conversations/{conversation_id}"))
    await client.post("/agent", json={"message": "more", "conversation_id": conversation_id})
    after = exact(await client.get(f"/conversations/{conversation_id}"))
    assert after["created_at"] == before["created_at"]
    assert parse_time(after["updated_at"]) >= parse_time(before["updated_at"])
    assert parse_time(after["updated_at"]) >= parse_time(after["turns"][-1]["created_at"])


async def test_empty_totals_of_a_conversation_whose_only_call_failed(client, fake) -> None:
    fake.script(Behaviour(status=400))
    response = await client.post("/agent", json={"message": "Hi"})
    assert response.status_code == 400
    [summary] = (await list_page(client))["conversations"]
    body = exact(await client.get(f"/conversations/{summary['id']}"))
    assert body["totals"]["requests"] == 1
    assert body["totals"]["input_tokens"] == body["requests"][0]["input_tokens"]
    assert summary["totals"] == body["totals"]


async def test_other_tenants_conversation_is_not_found(client, fake) -> None:
    bobs = await new_conversation(client, "Bob's secret plan", secret=BOB)
    response = await client.get(f"/conversations/{bobs}")
    assert_error(response, 404, "not_found_error")
    assert "secret plan" not in response.text
    missing = await client.get("/conversations/conv_nosuchthing")
    assert_error(missing, 404, "not_found_error")
    assert (await client.get(f"/conversations/{bobs}", headers=auth(BOB))).status_code == 200


async def test_conversations_need_a_client_key(client, fake) -> None:
    conversation_id = await new_conversation(client)
    for path in (f"/conversations/{conversation_id}", "/conversations"):
        request = client.build_request("GET", path)
        del request.headers["authorization"]
        assert_error(await client.send(request), 401, "authentication_error")


# -- GET /conversations ----------------------------------------------------------------------------


async def test_empty_list(client) -> None:
    assert await list_page(client) == {"conversations": [], "next_cursor": None}


async def test_list_holds_only_the_callers_newest_first_with_totals(client, fake) -> None:
    fake.script(
        Behaviour(text="a", usage={"input_tokens": 1, "output_tokens": 1}),
        Behaviour(text="b", usage={"input_tokens": 2, "output_tokens": 2}),
        Behaviour(text="c", usage={"input_tokens": 3, "output_tokens": 3}),
        Behaviour(text="d", usage={"input_tokens": 4, "output_tokens": 4}),
    )
    first = await new_conversation(client, "one")
    bobs = await new_conversation(client, "bob's", secret=BOB)
    second = await new_conversation(client, "two", model="claude-haiku-4-5")
    third = await new_conversation(client, "three")

    page = await list_page(client)
    assert page["next_cursor"] is None
    listed = page["conversations"]
    assert [c["id"] for c in listed] == [third, second, first]
    assert bobs not in [c["id"] for c in listed]
    for summary in listed:
        assert set(summary) == SUMMARY_KEYS
        assert set(summary["totals"]) == TOTAL_KEYS
        assert_recent(summary["created_at"])
        detail = exact(await client.get(f"/conversations/{summary['id']}"))
        assert summary["totals"] == detail["totals"]
        assert (summary["model"], summary["created_at"], summary["updated_at"]) == (
            detail["model"], detail["created_at"], detail["updated_at"],
        )
    assert listed[1]["model"] == "claude-haiku-4-5"
    assert [c["totals"]["input_tokens"] for c in listed] == [4, 3, 1]

    assert [c["id"] for c in (await list_page(client, secret=BOB))["conversations"]] == [bobs]


@pytest.fixture
async def many_conversations(client, database_url) -> list[str]:
    """Seven conversations of alice, five of them created in the same instant, and two of bob's."""
    db = open_database(database_url)
    same = datetime(2026, 11, 23, 22, 30, 0, 123000)
    ids = []
    ops = []
    for owner, now in [*(("alice", same + timedelta(seconds=offset)) for offset in (-2, -1)),
                       *(("alice", same) for _ in range(5)), *(("bob", same) for _ in range(2))]:
        conversation_id = new_id("conv")
        ops.append(conversation(conversation_id, owner, now))
        if owner == "alice":
            ids.append(conversation_id)
    try:
        await db.write(writes.apply, ops=ops)
    finally:
        await db.dispose()
    return ids


def conversation(conversation_id: str, owner: str, now: datetime):  # type: ignore[no-untyped-def]
    return writes.insert_conversation(id=conversation_id, owner=owner, model="claude-sonnet-5-5", system=None,
                                      created_at=now, updated_at=now)


async def test_same_instant_conversations_have_a_stable_order(client, many_conversations) -> None:
    full = [c["id"] for c in (await list_page(client, limit=200))["conversations"]]
    assert sorted(full) == sorted(many_conversations)
    assert full == [c["id"] for c in (await list_page(client, limit=200))["conversations"]]
    # The two older ones come last, oldest at the end.
    assert full[-2:] == [many_conversations[1], many_conversations[0]]


async def test_cursor_pagination_covers_everything_once(client, fake, many_conversations) -> None:
    # Two more through the API, newer than the seeded ones.
    newest = [await new_conversation(client, "x"), await new_conversation(client, "y")]
    full = [c["id"] for c in (await list_page(client, limit=200))["conversations"]]
    assert full[:2] == newest[::-1]
    assert len(full) == 9

    collected: list[str] = []
    pages = 0
    cursor = None
    while True:
        params = {"limit": 2} if cursor is None else {"limit": 2, "before": cursor}
        page = await list_page(client, **params)
        pages += 1
        assert 1 <= len(page["conversations"]) <= 2
        collected += [c["id"] for c in page["conversations"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 20
    assert pages == 5
    assert collected == full
    assert len(set(collected)) == len(collected)


async def test_exact_page_boundary_has_no_cursor(client, fake) -> None:
    ids = [await new_conversation(client, str(i)) for i in range(4)]
    first = await list_page(client, limit=2)
    assert [c["id"] for c in first["conversations"]] == ids[::-1][:2]
    second = await list_page(client, limit=2, before=first["next_cursor"])
    assert [c["id"] for c in second["conversations"]] == ids[::-1][2:]
    assert second["next_cursor"] is None
    assert (await list_page(client, limit=4))["next_cursor"] is None


async def test_paging_never_shows_another_tenants_conversations(client, fake) -> None:
    bobs = await new_conversation(client, "bob", secret=BOB)  # older than all of alice's
    alices = [await new_conversation(client, str(i)) for i in range(3)]
    collected, cursor = [], None
    for _ in range(5):
        page = await list_page(client, limit=1, **({"before": cursor} if cursor else {}))
        collected += [c["id"] for c in page["conversations"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert collected == alices[::-1]
    assert bobs not in collected


async def test_limit_bounds_are_accepted(client, fake) -> None:
    await new_conversation(client)
    for limit in ("1", "200"):
        response = await client.get("/conversations", params={"limit": limit})
        assert response.status_code == 200, limit
        assert len(response.json()["conversations"]) == 1


async def test_default_limit_is_fifty(client, database_url) -> None:
    db = open_database(database_url)
    try:
        await db.write(writes.apply, ops=[conversation(new_id("conv"), "alice", datetime(2026, 1, 1))
                                         for _ in range(51)])
    finally:
        await db.dispose()
    page = await list_page(client)
    assert len(page["conversations"]) == 50
    assert page["next_cursor"] is not None
    rest = await list_page(client, before=page["next_cursor"])
    assert len(rest["conversations"]) == 1 and rest["next_cursor"] is None


async def test_bad_limit_is_422(client) -> None:
    for limit in ("0", "201", "abc", "-1", "1.5", "1e2", "²", "٣"):
        response = await client.get("/conversations", params={"limit": limit})
        assert response.status_code == 422, limit
        assert_error(response, 422, "invalid_request_error")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_bad_cursor_is_422(client) -> None:
    for cursor in ("not a cursor!", "%%%", b64(b"hello"), b64(b"not-a-date|conv_x"), b64(b"\xff\xfe\xfd"), "a"):
        response = await client.get("/conversations", params={"before": cursor})
        assert response.status_code == 422, cursor
        assert_error(response, 422, "invalid_request_error")
