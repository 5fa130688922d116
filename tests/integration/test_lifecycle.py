"""A conversation's lifecycle (API.md "Conversation lifecycle"): its title, PATCH, DELETE (every piece of content
gone, on SQLite overwritten in the file; the ledger kept), GET /export (NDJSON, streamed, in bounded memory) and the
retention sweeper (AGENT_RETENTION_DAYS: small batches, beside running replies, one instance at a time)."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from agent_server.db import writes
from agent_server.db.models import Base, Conversation, Reply, ReplyEvent, Turn, UpstreamCall, new_id, utcnow
from agent_server.fake_upstream import Behaviour, ToolCall
from agent_server.service import lifecycle as lifecycle_module
from tests.conftest import ALICE, BOB, app_client, auth, make_settings

SUMMARY_KEYS = {"id", "title", "model", "created_at", "updated_at", "totals"}


def echo(text: str) -> str:
    """A tool that gives its input back (so the marker is in a tool run's input and output)."""
    return f"echoed {text}"


def tools_file(tmp_path: Path) -> Path:
    path = tmp_path / "tools.toml"
    path.write_text('[tools.echo]\npython = "tests.integration.test_lifecycle:echo"\n')
    return path


def exact(response: httpx.Response) -> dict:
    return json.loads(response.text, parse_float=Decimal)


async def new_conversation(client: httpx.AsyncClient, message: str, secret: str = ALICE, **extra) -> dict:
    response = await client.post("/agent", json={"message": message, **extra}, headers=auth(secret))
    assert response.status_code == 200, response.text
    return response.json()


async def listed(client: httpx.AsyncClient, secret: str = ALICE) -> list[dict]:
    response = await client.get("/conversations", params={"limit": 200}, headers=auth(secret))
    assert response.status_code == 200, response.text
    return exact(response)["conversations"]


async def all_rows(client: httpx.AsyncClient) -> dict[str, list[dict]]:
    """Every row of every table, as dicts."""
    rows = {}
    async with client.app.runtime.db.read() as conn:  # type: ignore[attr-defined]
        for table in Base.metadata.sorted_tables:
            rows[table.name] = [dict(row._mapping) for row in await conn.execute(select(table))]
    return rows


def mentions(value: object, needle: str) -> bool:
    return needle in str(value)


async def usage(client: httpx.AsyncClient, secret: str = ALICE) -> dict:
    response = await client.get("/usage", params={"since": "2000-01-01", "group_by": "conversation"},
                                headers=auth(secret))
    assert response.status_code == 200, response.text
    return exact(response)


async def finished(client: httpx.AsyncClient, reply_id: str) -> list[str]:
    """Follow a reply's events until it ends (bounded): the names of the events."""
    response = await asyncio.wait_for(client.get(f"/replies/{reply_id}/events"), 30)
    assert response.status_code == 200, response.text
    return [line.removeprefix("event: ") for line in response.text.splitlines() if line.startswith("event: ")]


# -- titles ------------------------------------------------------------------------------------------------------


async def test_the_title_is_the_first_80_characters_of_the_first_message(client, fake) -> None:
    first = "Plan a trip to Lisbon: three days, museums, food, and a day at the beach if the weather holds up, please."
    reply = await new_conversation(client, first)
    conversation_id = reply["conversation_id"]
    await client.post("/agent", json={"message": "A second message never renames it.", "conversation_id":
                                      conversation_id})
    expected = first[:80]
    assert len(expected) == 80
    entry = next(c for c in await listed(client) if c["id"] == conversation_id)
    assert entry["title"] == expected and set(entry) == SUMMARY_KEYS
    audit = exact(await client.get(f"/conversations/{conversation_id}"))
    assert audit["title"] == expected
    # Whitespace (newlines, tabs) is folded, as a one-line title needs; short messages are whole.
    short = await new_conversation(client, "  Hello\n\tthere  ")
    assert exact(await client.get(f"/conversations/{short['conversation_id']}"))["title"] == "Hello there"


async def test_patch_sets_the_title_everywhere_it_is_shown(client, fake) -> None:
    conversation_id = (await new_conversation(client, "hello"))["conversation_id"]
    response = await client.patch(f"/conversations/{conversation_id}", json={"title": "  Trip\nplanning  "})
    assert response.status_code == 200, response.text
    patched = exact(response)
    assert patched["title"] == "Trip planning"
    entry = next(c for c in await listed(client) if c["id"] == conversation_id)
    assert patched == entry  # the conversation as in the list
    assert exact(await client.get(f"/conversations/{conversation_id}"))["title"] == "Trip planning"
    export = await client.get("/export")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert [line["title"] for line in lines if line["id"] == conversation_id] == ["Trip planning"]
    # Renaming again replaces it; a later message does not.
    assert (await client.patch(f"/conversations/{conversation_id}", json={"title": "Lisbon"})).status_code == 200
    await client.post("/agent", json={"message": "more", "conversation_id": conversation_id})
    assert exact(await client.get(f"/conversations/{conversation_id}"))["title"] == "Lisbon"


async def test_patch_refuses_a_body_of_the_wrong_shape(client, fake) -> None:
    conversation_id = (await new_conversation(client, "hello"))["conversation_id"]
    problems = []
    for body in ({}, {"title": ""}, {"title": "   \n "}, {"title": None}, {"title": 5}, {"title": ["a"]},
                 {"title": "x" * 201}, {"title": "ok", "model": "claude-haiku-4-5"}, {"name": "x"}, ["title"]):
        response = await client.patch(f"/conversations/{conversation_id}", json=body)
        if response.status_code != 422 or response.json()["error"]["type"] != "invalid_request_error":
            problems.append(f"{body!r}: {response.status_code} {response.text[:200]}")
    assert not problems, "\n".join(problems)
    assert exact(await client.get(f"/conversations/{conversation_id}"))["title"] == "hello"


async def test_patch_of_an_unknown_or_foreign_conversation_is_404(client, fake) -> None:
    conversation_id = (await new_conversation(client, "hello"))["conversation_id"]
    for target, secret in ((conversation_id, BOB), ("conv_nope", ALICE)):
        response = await client.patch(f"/conversations/{target}", json={"title": "mine"}, headers=auth(secret))
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found_error"
    assert exact(await client.get(f"/conversations/{conversation_id}"))["title"] == "hello"
    not_json = await client.patch(f"/conversations/{conversation_id}", content=b"{nope",
                                  headers={"content-type": "application/json"})
    assert not_json.status_code == 400


# -- delete ------------------------------------------------------------------------------------------------------


async def make_rich_conversation(client: httpx.AsyncClient, fake, marker: str) -> dict:  # type: ignore[no-untyped-def]
    """A conversation whose every kind of content holds ``marker``: system prompt, messages, a tool run, a thinking
    block, replies and their events, a title; returns its audit."""
    fake.script(Behaviour(tool_calls=[ToolCall(name="echo", input={"text": f"tool {marker}"})]),
                Behaviour(text=f"the tool said {marker}"))
    response = await client.post("/agent/stream", json={"message": f"first {marker}", "system": f"system {marker}"})
    assert response.status_code == 200 and "event: done" in response.text, response.text
    conversation_id = json.loads(response.text.split("data: ", 1)[1].split("\n", 1)[0])["conversation_id"]
    fake.script(Behaviour(thinking=f"thinking about {marker}", text=f"second answer {marker}"))
    second = await client.post("/agent", json={"message": f"second {marker}", "conversation_id": conversation_id,
                                               "max_tokens": 2048, "thinking": {"budget_tokens": 1024}})
    assert second.status_code == 200, second.text
    assert (await client.patch(f"/conversations/{conversation_id}", json={"title": f"title {marker}"})).status_code \
        == 200
    audit = exact(await client.get(f"/conversations/{conversation_id}"))
    assert len(audit["turns"]) == 6 and len(audit["tool_runs"]) == 1 and len(audit["replies"]) == 2
    return audit


async def test_delete_removes_every_piece_of_content_and_keeps_the_ledger(database_url, fake, tmp_path) -> None:
    settings = make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools_file(tmp_path)), AGENT_MAX_TOKENS=4096)
    async with app_client(settings) as client:
        client.headers.update(auth())
        marker = f"MARK{uuid.uuid4().hex}"
        audit = await make_rich_conversation(client, fake, marker)
        conversation_id = audit["id"]
        kept = await new_conversation(client, "another conversation, kept")
        before_rows = await all_rows(client)
        assert any(mentions(row, marker) for rows in before_rows.values() for row in rows)
        assert before_rows["reply_events"]
        usage_before = await usage(client)
        spend_before = before_rows["daily_spend"]

        assert (await client.delete(f"/conversations/{conversation_id}", headers=auth(BOB))).status_code == 404
        response = await client.delete(f"/conversations/{conversation_id}")
        assert response.status_code == 204 and response.content == b""

        rows = await all_rows(client)
        ids = {conversation_id, *(t["id"] for t in audit["turns"]), *(r["id"] for r in audit["replies"]),
               *(r["id"] for r in audit["tool_runs"])}
        ledger_ids = {r["id"] for r in audit["requests"]}
        for table, table_rows in rows.items():
            for row in table_rows:
                assert not mentions(row, marker), (table, row)  # no content anywhere
                if table == "requests":
                    continue
                assert not ids & {str(v) for v in row.values()}, (table, row)  # nothing points at it
        # The ledger keeps every call, without any link to content.
        calls = [row for row in rows["requests"] if row["conversation_id"] == conversation_id]
        assert {row["id"] for row in calls} == ledger_ids and len(calls) == 3
        assert all(row["turn_id"] is None and row["prompt_turn_id"] is None for row in calls)
        assert [row["cost_nano_usd"] for row in sorted(calls, key=lambda r: r["id"])] == [
            row["cost_nano_usd"] for row in sorted(before_rows["requests"], key=lambda r: r["id"])
            if row["conversation_id"] == conversation_id]
        assert await usage(client) == usage_before  # usage (and budgets) unchanged by a delete
        assert rows["daily_spend"] == spend_before
        # The other conversation is untouched.
        assert (await client.get(f"/conversations/{kept['conversation_id']}")).status_code == 200
        assert len([row for row in rows["turns"] if row["conversation_id"] == kept["conversation_id"]]) == 2

        for path in (f"/conversations/{conversation_id}", f"/conversations/{conversation_id}/turns",
                     f"/replies/{audit['replies'][0]['id']}", f"/replies/{audit['replies'][0]['id']}/events"):
            gone = await client.get(path)
            assert gone.status_code == 404, (path, gone.text)
        again = await client.delete(f"/conversations/{conversation_id}")
        assert again.status_code == 404 and again.json()["error"]["type"] == "not_found_error"
        continued = await client.post("/agent", json={"message": "hi", "conversation_id": conversation_id})
        assert continued.status_code == 404
        assert conversation_id not in [c["id"] for c in await listed(client)]
        assert marker not in (await client.get("/export")).text


async def test_delete_cancels_a_running_reply_first(client, fake) -> None:
    conversation_id = (await new_conversation(client, "hello"))["conversation_id"]
    fake.script(Behaviour(n_tokens=2000, token_delay=0.01))  # 20 s unless cancelled
    started = await client.post("/agent", json={"message": "a long one", "conversation_id": conversation_id,
                                                "background": True})
    assert started.status_code == 202, started.text
    reply_id = started.json()["reply_id"]
    await asyncio.to_thread(fake.wait_for_requests, 2)
    process = client.app.runtime.supervisor.get(reply_id)
    assert process is not None and not process.done

    response = await asyncio.wait_for(client.delete(f"/conversations/{conversation_id}"), 15)
    assert response.status_code == 204, response.text
    assert process.done and process.status == "cancelled"
    await asyncio.to_thread(fake.wait_for, "disconnected", 1)  # the upstream call was stopped
    assert (await client.get(f"/replies/{reply_id}")).status_code == 404
    assert (await client.get(f"/conversations/{conversation_id}")).status_code == 404
    async with client.app.runtime.db.read() as conn:
        calls = list(await conn.execute(select(UpstreamCall.reply_id, UpstreamCall.status, UpstreamCall.turn_id)
                                        .where(UpstreamCall.conversation_id == conversation_id)
                                        .order_by(UpstreamCall.created_at)))
        left = [(await conn.execute(select(func.count()).where(column == conversation_id))).scalar()
                for column in (Conversation.id, Turn.conversation_id, Reply.conversation_id)]
    assert [(c.status, c.turn_id) for c in calls] == [("ok", None), ("cancelled", None)]
    assert calls[1].reply_id == reply_id
    assert left == [0, 0, 0]


@pytest.mark.sqlite_only("reads the raw bytes of the SQLite file")
async def test_a_deleted_conversation_is_nowhere_in_the_sqlite_file(database_url, fake, tmp_path) -> None:
    settings = make_settings(database_url, fake, AGENT_TOOLS_FILE=str(tools_file(tmp_path)), AGENT_MAX_TOKENS=4096)
    path = Path(database_url.split("///", 1)[1])

    def checkpoint_and_read() -> bytes:
        with sqlite3.connect(path) as conn:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0
        wal = Path(f"{path}-wal")
        return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")

    async with app_client(settings) as client:
        client.headers.update(auth())
        marker = f"MARK{uuid.uuid4().hex}"
        others = [await new_conversation(client, f"filler {n} " + "f" * 3000) for n in range(3)]
        audit = await make_rich_conversation(client, fake, marker)
        # Content large enough for overflow pages, too.
        big = await client.post("/agent", json={"message": f"{marker} " + "b" * 20_000, "conversation_id":
                                                audit["id"]})
        assert big.status_code == 200, big.text
        others.append(await new_conversation(client, "after " + "a" * 3000))
        assert marker.encode() in checkpoint_and_read()  # (the search would find it)

        assert (await client.delete(f"/conversations/{audit['id']}")).status_code == 204
        raw = checkpoint_and_read()
        assert marker.encode() not in raw
        assert marker[4:].encode() not in raw  # not even its hex part
        assert marker.encode("utf-16-le") not in raw
        for other in others:  # the rest of the database is intact
            assert (await client.get(f"/conversations/{other['conversation_id']}")).status_code == 200
    assert marker.encode() not in checkpoint_and_read()  # and after the app closed its connections


# -- export ------------------------------------------------------------------------------------------------------


async def test_export_is_ndjson_one_audit_a_line_oldest_first_only_the_callers(client, fake) -> None:
    mine = [(await new_conversation(client, f"mine {n}"))["conversation_id"] for n in range(3)]
    await new_conversation(client, "bob's", BOB)
    await client.post("/agent", json={"message": "more", "conversation_id": mine[0]})
    response = await client.get("/export")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["content-disposition"]
    assert response.text.endswith("\n")
    lines = response.text.splitlines()
    assert len(lines) == 3
    exported = [json.loads(line, parse_float=Decimal) for line in lines]
    assert [item["id"] for item in exported] == mine  # oldest first
    for item in exported:
        assert item == exact(await client.get(f"/conversations/{item['id']}"))  # each line is the audit
    bob = await client.get("/export", headers=auth(BOB))
    assert [json.loads(line)["title"] for line in bob.text.splitlines()] == ["bob's"]
    assert (await client.get("/export", headers={"Authorization": "Bearer nope-nope-nope-nope"})).status_code == 401


def _status_kib(name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name):
                return int(line.split()[1])
    raise KeyError(name)


async def test_export_of_10000_conversations_is_streamed_in_bounded_memory(database_url, fake) -> None:
    async with app_client(make_settings(database_url, fake)) as client:
        runtime = client.app.runtime
        now = utcnow()
        text = "x" * 1500
        for batch in range(10):  # 10,000 conversations, two turns each, in ten transactions
            ops = []
            for n in range(1000):
                conversation_id = new_id("conv")
                ops.append(writes.insert_conversation(
                    id=conversation_id, owner="alice", model="claude-sonnet-5-5", system=None, title=f"c{n}",
                    created_at=now + timedelta(microseconds=batch * 1000 + n), updated_at=now))
                for seq, role in ((1, "user"), (2, "assistant")):
                    blocks = json.dumps([{"type": "text", "text": f"{role} {n} {text}"}])
                    ops.append(writes.insert_turn(
                        id=new_id("turn"), conversation_id=conversation_id, reply_id=None, seq=seq, step=None,
                        role=role, content=f"{role} {n} {text}", content_blocks=blocks, tokens=400,
                        status="complete", created_at=now, updated_at=now))
            await runtime.db.write(writes.apply, ops=ops)

        # The app called as a server would: body chunks are counted and dropped as they come.
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/export", "raw_path": b"/export", "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {ALICE}".encode())],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {}}
        seen = {"status": None, "bytes": 0, "chunks": 0, "lines": 0, "first": b"", "tail": b""}
        asked, never = [], asyncio.Event()

        async def receive() -> dict:
            if not asked:
                asked.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await never.wait()  # the client stays connected
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if not seen["first"]:
                    seen["first"] = body
                seen["bytes"] += len(body)
                seen["chunks"] += 1
                seen["lines"] += body.count(b"\n")
                seen["tail"] = (seen["tail"] + body)[-200:]

        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # reset this process's peak resident size
            rss_before = _status_kib("VmRSS:")
            tracing = False
        except OSError:  # not Linux: trace Python's allocations instead (slower)
            import tracemalloc

            tracemalloc.start()
            tracing = True
        await asyncio.wait_for(client.app(scope, receive, send), 120)
        if tracing:
            peak_kib = tracemalloc.get_traced_memory()[1] // 1024
            tracemalloc.stop()
        else:
            peak_kib = _status_kib("VmHWM:") - rss_before

        assert seen["status"] == 200
        assert seen["lines"] == 10_000 and seen["tail"].endswith(b"\n")
        assert seen["chunks"] >= 10_000  # streamed: a line at a time, not one body at the end
        first = json.loads(seen["first"].split(b"\n", 1)[0])
        assert first["title"] == "c0" and len(first["turns"]) == 2
        total_kib = seen["bytes"] // 1024
        assert total_kib > 30_000  # 10,000 audits: over 30 MB of JSON
        # Holding the audits (or the body) would take more than the export's size; it took a small part of it.
        assert peak_kib < total_kib // 4, (peak_kib, total_kib)


# -- retention ---------------------------------------------------------------------------------------------------


async def insert_old(client: httpx.AsyncClient, count: int, *, days: int, owner: str = "alice") -> list[str]:
    """``count`` conversations (a turn each) last updated ``days`` ago."""
    then = utcnow() - timedelta(days=days)
    ids, ops = [], []
    for n in range(count):
        conversation_id = new_id("conv")
        ids.append(conversation_id)
        ops.append(writes.insert_conversation(id=conversation_id, owner=owner, model="claude-sonnet-5-5",
                                              system=None, title=f"old {n}", created_at=then, updated_at=then))
        ops.append(writes.insert_turn(id=new_id("turn"), conversation_id=conversation_id, reply_id=None, seq=1,
                                      step=None, role="user", content="old", content_blocks='[{"type":"text",'
                                      '"text":"old"}]', tokens=2, status="complete", created_at=then,
                                      updated_at=then))
    await client.app.runtime.db.write(writes.apply, ops=ops)  # type: ignore[attr-defined]
    return ids


async def make_old(client: httpx.AsyncClient, conversation_id: str, *, days: int) -> None:
    then = utcnow() - timedelta(days=days)

    async def backdate(conn) -> None:  # type: ignore[no-untyped-def]
        await conn.execute(Conversation.__table__.update().where(Conversation.id == conversation_id)
                           .values(updated_at=then))

    await client.app.runtime.db.write(backdate)  # type: ignore[attr-defined]


async def existing(client: httpx.AsyncClient, ids: list[str]) -> set[str]:
    async with client.app.runtime.db.read() as conn:  # type: ignore[attr-defined]
        return {row[0] for row in await conn.execute(select(Conversation.id).where(Conversation.id.in_(ids)))}


async def test_the_sweeper_deletes_what_retention_says_in_small_batches_beside_running_replies(
        database_url, fake, monkeypatch) -> None:
    batches: list[int] = []
    real_delete = lifecycle_module.delete_conversations

    async def counted(conn, *, conversation_ids):  # type: ignore[no-untyped-def]
        batches.append(len(conversation_ids))
        return await real_delete(conn, conversation_ids=conversation_ids)

    monkeypatch.setattr(lifecycle_module, "delete_conversations", counted)
    async with app_client(make_settings(database_url, fake, AGENT_RETENTION_DAYS=30)) as client:
        client.headers.update(auth())
        lifecycle = client.app.runtime.lifecycle
        lifecycle.clock = utcnow
        old = await insert_old(client, 45, days=40)
        bobs_old = await insert_old(client, 3, days=31, owner="bob")
        recent = await insert_old(client, 5, days=29)
        used = await new_conversation(client, "used 40 days ago")
        await make_old(client, used["conversation_id"], days=40)
        running = await new_conversation(client, "busy now")
        await make_old(client, running["conversation_id"], days=40)
        usage_before = await usage(client)

        fake.script(Behaviour(n_tokens=150, token_delay=0.02))  # ~3 s: it runs through the sweep
        started = await client.post("/agent", json={"message": "keep going", "conversation_id":
                                                    running["conversation_id"], "background": True})
        assert started.status_code == 202, started.text
        await asyncio.to_thread(fake.wait_for_requests, 3)
        process = client.app.runtime.supervisor.get(started.json()["reply_id"])
        assert process is not None and not process.done

        result = await lifecycle.sweep()
        assert not process.done  # the sweep did not wait for the reply, nor stop it
        assert result["conversations"] == 45 + 3 + 1
        assert batches and max(batches) <= lifecycle_module.BATCH and len(batches) >= 3
        assert await existing(client, old + bobs_old + [used["conversation_id"]]) == set()
        assert await existing(client, recent + [running["conversation_id"]]) == {*recent, running["conversation_id"]}

        assert (await finished(client, started.json()["reply_id"]))[-1] == "done"
        audit = exact(await client.get(f"/conversations/{running['conversation_id']}"))
        assert [turn["status"] for turn in audit["turns"]] == ["complete"] * 4
        # Just updated: the next sweep keeps it.
        assert (await lifecycle.sweep())["conversations"] == 0
        assert await existing(client, [running["conversation_id"]]) == {running["conversation_id"]}
        # The calls of what was swept stay in the ledger.
        after = await usage(client)
        assert [g for g in after["groups"] if g["group"] == used["conversation_id"]] == [
            g for g in usage_before["groups"] if g["group"] == used["conversation_id"]]


async def test_only_one_instance_sweeps_in_a_period(database_url, fake) -> None:
    settings = make_settings(database_url, fake, AGENT_RETENTION_DAYS=30)
    async with app_client(settings) as one, app_client(settings) as two:
        now = utcnow()
        first, second = one.app.runtime.lifecycle, two.app.runtime.lifecycle
        first.clock = lambda: now
        batch = await insert_old(one, 5, days=40)
        assert (await first.sweep())["conversations"] == 5
        later = await insert_old(one, 4, days=40)
        second.clock = lambda: now + timedelta(minutes=40)
        assert (await second.sweep())["conversations"] == 0  # the first holds the job for most of the hour
        assert await existing(one, later) == set(later)
        first.clock = lambda: now + timedelta(minutes=60)
        assert (await first.sweep())["conversations"] == 4  # its next pass: its own lease, taken again
        last = await insert_old(one, 2, days=40)
        second.clock = lambda: now + timedelta(minutes=100)
        assert (await second.sweep())["conversations"] == 0  # one sweep an hour across instances
        second.clock = lambda: now + timedelta(minutes=60 + 55)  # the first stopped sweeping: its lease ran out
        assert (await second.sweep())["conversations"] == 2
        first.clock = lambda: now + timedelta(minutes=60 + 60)
        assert (await first.sweep())["conversations"] == 0  # now the second holds it
        assert await existing(one, batch + later + last) == set()


async def test_without_retention_nothing_is_swept(database_url, fake) -> None:
    async with app_client(make_settings(database_url, fake)) as client:
        old = await insert_old(client, 3, days=4000)
        assert (await client.app.runtime.lifecycle.sweep())["conversations"] == 0
        assert await existing(client, old) == set(old)


async def test_reply_events_expire_but_the_last_one_stays(database_url, fake) -> None:
    async with app_client(make_settings(database_url, fake, AGENT_REPLY_EVENTS_HOURS=1)) as client:
        client.headers.update(auth())
        response = await client.post("/agent/stream", json={"message": "stream me"})
        assert response.status_code == 200
        reply_id = json.loads(response.text.split("data: ", 1)[1].split("\n", 1)[0])["reply_id"]
        replayed = await finished(client, reply_id)
        assert replayed[0] == "start" and replayed[-1] == "done" and len(replayed) > 3
        lifecycle = client.app.runtime.lifecycle
        lifecycle.clock = lambda: utcnow() + timedelta(minutes=59)
        assert (await lifecycle.sweep())["reply_events"] == 0
        lifecycle.clock = lambda: utcnow() + timedelta(hours=2)  # (also past the sweeper's own lease)
        assert (await lifecycle.sweep())["reply_events"] == len(replayed) - 1
        assert await finished(client, reply_id) == ["done"]
        async with client.app.runtime.db.read() as conn:
            left = list(await conn.execute(select(ReplyEvent.type).where(ReplyEvent.reply_id == reply_id)))
        assert [row[0] for row in left] == ["done"]
        # The turns and calls stay.
        conversation_id = json.loads(response.text.split("data: ", 1)[1].split("\n", 1)[0])["conversation_id"]
        audit = exact(await client.get(f"/conversations/{conversation_id}"))
        assert len(audit["turns"]) == 2 and len(audit["requests"]) == 1
