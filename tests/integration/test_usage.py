"""GET /usage (API.md "Usage and budgets"): the caller's spend from the ledger, grouped by day, model or conversation
(admin keys: any owner's, or everyone's by owner). Every figure is checked against the sums of the ledger rows as the
audits show them, server-tool fees and deleted conversations included."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from agent_server.db.models import UpstreamCall
from agent_server.fake_upstream import Behaviour, ServerToolUse
from tests.conftest import ALICE, BOB, app_client, auth, make_settings

FIELDS = ("requests", "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
          "server_tool_uses", "cost_usd")
TODAY = datetime.now(UTC).date()


def exact(response: httpx.Response) -> dict:
    return json.loads(response.text, parse_float=Decimal)


def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.toml"
    path.write_text('[server_tools.web_search]\ntype = "web_search_20250305"\nmax_uses = 3\n')
    return path


def expected(rows: list[dict], key) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """The ledger rows summed per ``key(row)``, as /usage reports a group."""
    groups: dict[str, dict] = defaultdict(lambda: {name: 0 for name in FIELDS})
    for row in rows:
        group = groups[key(row)]
        group["requests"] += 1
        for name in FIELDS[1:-1]:
            group[name] += row[name]
        group["cost_usd"] += row["cost_usd"] or 0
    return dict(groups)


def total(rows: list[dict]) -> dict:
    return expected(rows, lambda row: "all").get("all", {name: 0 for name in FIELDS})


def reported(body: dict) -> dict[str, dict]:
    return {group["group"]: {name: group[name] for name in FIELDS} for group in body["groups"]}


async def usage(client: httpx.AsyncClient, secret: str = ALICE, **params) -> dict:
    response = await client.get("/usage", params=params, headers=auth(secret))
    assert response.status_code == 200, response.text
    body = exact(response)
    assert set(body) == {"owner", "since", "until", "groups", "totals"}
    return body


async def ledger(client: httpx.AsyncClient, conversation_ids: list[str], secret: str = ALICE) -> list[dict]:
    rows = []
    for conversation_id in conversation_ids:
        response = await client.get(f"/conversations/{conversation_id}", headers=auth(secret))
        assert response.status_code == 200, response.text
        # The audit's rows do not repeat their conversation: say which it is, for the grouping by conversation.
        rows += [{**row, "conversation_id": conversation_id} for row in exact(response)["requests"]]
    return rows


async def move_calls(client: httpx.AsyncClient, conversation_id: str, days_ago: int) -> None:
    """Date a conversation's calls some days back (the ledger of earlier days, without waiting for them)."""
    async def shift(conn) -> None:  # type: ignore[no-untyped-def]
        calls = list(await conn.execute(select(UpstreamCall.id, UpstreamCall.created_at)
                                        .where(UpstreamCall.conversation_id == conversation_id)))
        for call_id, created_at in calls:
            await conn.execute(update(UpstreamCall).where(UpstreamCall.id == call_id)
                               .values(created_at=created_at - timedelta(days=days_ago)))

    await client.app.runtime.db.write(shift)  # type: ignore[attr-defined]


async def reply(client: httpx.AsyncClient, secret: str = ALICE, **body) -> dict:
    response = await client.post("/agent", json=body, headers=auth(secret))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def spent(database_url, fake, tmp_path):  # type: ignore[no-untyped-def]
    """Alice's spend over three days, two models, a web search, a failed call and a deleted conversation;
    Bob's too; ``root`` is an admin key."""
    settings = make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools_file(tmp_path)),
                             AGENT_API_KEYS=f"alice:{ALICE},bob:{BOB},root:root-secret-0123456789",
                             AGENT_ADMIN_KEYS="root", AGENT_UPSTREAM_MAX_RETRIES=0)
    async with app_client(settings) as client:
        conversations: dict[str, list[str]] = {"alice": [], "bob": []}
        fake.script(Behaviour(text="one", usage={"input_tokens": 120, "output_tokens": 30,
                                                 "cache_read_input_tokens": 400,
                                                 "cache_creation": {"ephemeral_5m_input_tokens": 50,
                                                                    "ephemeral_1h_input_tokens": 0}}))
        first = await reply(client, message="hello")
        conversations["alice"].append(first["conversation_id"])
        await reply(client, message="again", conversation_id=first["conversation_id"])
        fake.script(Behaviour(server_tool_uses=[ServerToolUse(input={"query": "weather"}),
                                                ServerToolUse(input={"query": "news"})], text="searched"))
        haiku = await reply(client, message="search twice", model="claude-haiku-4-5")
        assert haiku["usage"]["server_tool_uses"] == 2
        conversations["alice"].append(haiku["conversation_id"])
        fake.script(Behaviour(status=500))
        failed = await client.post("/agent", json={"message": "fails"}, headers=auth(ALICE))
        assert failed.status_code == 502
        listed = exact(await client.get("/conversations", headers=auth(ALICE)))["conversations"]
        failed_id = next(c["id"] for c in listed if c["id"] not in conversations["alice"])
        conversations["alice"].append(failed_id)
        doomed = await reply(client, message="to be deleted", model="claude-haiku-4-5")
        conversations["alice"].append(doomed["conversation_id"])
        bobs = await reply(client, BOB, message="bob's")
        conversations["bob"].append(bobs["conversation_id"])

        await move_calls(client, first["conversation_id"], 2)
        await move_calls(client, haiku["conversation_id"], 1)
        rows = {owner: await ledger(client, ids, ALICE if owner == "alice" else BOB)
                for owner, ids in conversations.items()}
        deleted = await client.delete(f"/conversations/{doomed['conversation_id']}", headers=auth(ALICE))
        assert deleted.status_code == 204
        assert len(rows["alice"]) == 5 and len(rows["bob"]) == 1
        yield client, rows


async def test_groups_equal_the_sums_of_the_ledger_rows(spent) -> None:
    client, rows = spent
    alice = rows["alice"]
    since = (TODAY - timedelta(days=7)).isoformat()
    keys = {
        "day": lambda row: row["created_at"][:10],
        "model": lambda row: row["model"],
        "conversation": lambda row: row["conversation_id"],
    }
    for group_by, key in keys.items():
        body = await usage(client, since=since, group_by=group_by)
        assert body["owner"] == "alice" and body["since"] == since and body["until"] == TODAY.isoformat()
        assert reported(body) == expected(alice, key), group_by
        assert body["totals"] == total(alice)
        assert [group["group"] for group in body["groups"]] == sorted(reported(body))
    assert len(reported(await usage(client, since=since, group_by="day"))) == 3  # three days


async def test_by_conversation_counts_deleted_conversations_and_their_web_searches(spent) -> None:
    client, rows = spent
    since = (TODAY - timedelta(days=7)).isoformat()
    body = await usage(client, since=since, group_by="conversation")
    groups = reported(body)
    assert len(groups) == 4  # the deleted conversation is still there
    assert body["totals"] == total(rows["alice"])
    assert sum(group["requests"] for group in groups.values()) == 5
    # The web search: two uses at $10 per 1,000, on top of the tokens of claude-haiku-4-5 ($1/$5 per million).
    search = next(row for row in rows["alice"] if row["server_tool_uses"] == 2)
    tokens = (Decimal(search["input_tokens"]) * 1 + Decimal(search["output_tokens"]) * 5) / 1_000_000
    assert search["cost_usd"] == tokens + Decimal("0.02")
    assert body["totals"]["server_tool_uses"] == 2
    assert sum(group["cost_usd"] for group in groups.values()) == body["totals"]["cost_usd"]


async def test_since_and_until_are_inclusive_utc_days(spent) -> None:
    client, rows = spent
    alice = rows["alice"]
    yesterday = (TODAY - timedelta(days=1)).isoformat()
    two_days_ago = (TODAY - timedelta(days=2)).isoformat()
    only_yesterday = await usage(client, since=yesterday, until=yesterday)
    assert only_yesterday["totals"] == total([row for row in alice if row["created_at"][:10] == yesterday])
    assert only_yesterday["totals"]["requests"] == 1
    both = await usage(client, since=two_days_ago, until=yesterday, group_by="model")
    assert both["totals"] == total([row for row in alice if row["created_at"][:10] in (two_days_ago, yesterday)])
    default = await usage(client)  # from the first of this month to today
    this_month = [row for row in alice if row["created_at"][:7] == TODAY.isoformat()[:7]]
    assert default["since"] == TODAY.replace(day=1).isoformat() and default["until"] == TODAY.isoformat()
    assert default["totals"] == total(this_month)
    empty = await usage(client, since="2020-01-01", until="2020-01-31")
    assert empty["groups"] == [] and empty["totals"] == {name: 0 for name in FIELDS}
    far = await usage(client, since="2000-01-01", until="9999-12-31")  # the last day there is
    assert far["totals"] == total(alice)


async def test_admin_keys_read_any_owner_and_everyone_by_owner(spent) -> None:
    client, rows = spent
    root = "root-secret-0123456789"
    since = (TODAY - timedelta(days=7)).isoformat()
    for owner in ("alice", "bob"):
        body = await usage(client, root, since=since, owner=owner, group_by="model")
        assert body["owner"] == owner
        assert reported(body) == expected(rows[owner], lambda row: row["model"])
    everyone = await usage(client, root, since=since, owner="*", group_by="owner")
    assert everyone["owner"] == "*"
    assert reported(everyone) == {"alice": total(rows["alice"]), "bob": total(rows["bob"])}
    assert everyone["totals"] == total(rows["alice"] + rows["bob"])
    by_day = await usage(client, root, since=since, owner="*", group_by="day")
    assert by_day["totals"] == everyone["totals"]
    own = await usage(client, root, since=since)  # an admin key's own usage: none
    assert own["owner"] == "root" and own["totals"]["requests"] == 0


OWNER_FROM_OTHERS = [{"owner": "bob"}, {"owner": "alice"}, {"owner": "*"}, {"owner": "*", "group_by": "owner"},
                     {"group_by": "owner"}]
BAD = [{"since": "yesterday"}, {"since": "2026-13-01"}, {"until": "2026-02-30"}, {"since": "20261201"},
       {"until": "2026-W01-1"}, {"since": "2026-12-01T00:00:00"}, {"since": " 2026-12-01"}, {"since": "２０２６-12-01"},
       {"since": "2026-12-05", "until": "2026-12-01"}, {"group_by": "week"}, {"group_by": "DAY"}]


async def test_owner_from_any_other_key_and_bad_dates_are_422(spent) -> None:
    client, _ = spent
    problems = []
    for params in OWNER_FROM_OTHERS + BAD:
        response = await client.get("/usage", params=params, headers=auth(ALICE))
        body = response.json()
        if response.status_code != 422 or body["error"]["type"] != "invalid_request_error" or \
                not body["error"]["message"].strip():
            problems.append(f"{params}: {response.status_code} {response.text[:200]}")
    assert not problems, "\n".join(problems)
    # An admin key may name an owner, but not a bad date.
    response = await client.get("/usage", params={"owner": "*", "since": "2026-1-1"},
                                headers=auth("root-secret-0123456789"))
    assert response.status_code == 422


async def test_usage_needs_a_key(spent) -> None:
    client, _ = spent
    response = await client.get("/usage")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
