"""Migration 0002 on a database that version 1 filled: its rows, read back through the API, say what they said;
its history goes upstream as it did; downgrading keeps version 1's rows.

The rows are written as version 1's code wrote them (its schema is revision 0001; text turns, no blocks; one call
per reply; failed and cancelled replies).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from alembic import command

from agent_server.db.migrations import alembic_config, head_revision
from tests.conftest import ALICE, app_client, auth, make_settings, plain_messages

pytestmark = pytest.mark.sqlite_only("version 1 ran on SQLite only: its databases are SQLite files")

T = "2026-11-20 10:00:0{}.000000"
V1_ROWS = {
    "conversations": [
        ("conv_v1a", "alice", "claude-sonnet-4-6", "Be brief.", T.format(0), T.format(9)),
        ("conv_v1b", "bob", "claude-sonnet-5-5", None, T.format(1), T.format(2)),
    ],
    "turns": [  # id, conversation, seq, role, content, status
        ("turn_a1", "conv_v1a", 1, "user", "First question", "complete"),
        ("turn_a2", "conv_v1a", 2, "assistant", "First answer", "complete"),
        ("turn_a3", "conv_v1a", 3, "user", "Second question", "complete"),
        ("turn_a4", "conv_v1a", 4, "assistant", "Half an ans", "incomplete"),
        ("turn_a5", "conv_v1a", 5, "user", "Third question", "complete"),
        ("turn_a6", "conv_v1a", 6, "user", "Fourth question", "complete"),
        ("turn_a7", "conv_v1a", 7, "assistant", "Fourth answer", "complete"),
        ("turn_b1", "conv_v1b", 1, "user", "Bob's question", "complete"),
        ("turn_b2", "conv_v1b", 2, "assistant", "Bob's answer", "complete"),
    ],
    "requests": [  # id, conversation, prompt turn, turn, route, model, status, error, in, out, cost nano
        ("call_a1", "conv_v1a", "turn_a1", "turn_a2", "agent", "claude-sonnet-4-6", "ok", None, 10, 20, 330000),
        ("call_a2", "conv_v1a", "turn_a3", "turn_a4", "stream", "claude-sonnet-4-6", "cancelled", None, 30, 4, 150000),
        ("call_a3", "conv_v1a", "turn_a5", None, "ws", "claude-sonnet-4-6", "error", "upstream_error", 0, 0, 0),
        ("call_a4", "conv_v1a", "turn_a6", "turn_a7", "agent", "claude-sonnet-4-6", "ok", None, 40, 9, 255000),
        ("call_b1", "conv_v1b", "turn_b1", "turn_b2", "agent", "claude-sonnet-5-5", "ok", None, 5, 6, 70000),
    ],
}


def fill_v1(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO conversations (id, owner, model, system, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", V1_ROWS["conversations"])
        conn.executemany("INSERT INTO turns (id, conversation_id, seq, role, content, status, created_at, updated_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [(*row, T.format(row[2]), T.format(row[2])) for row in V1_ROWS["turns"]])
        conn.executemany(
            "INSERT INTO requests (id, conversation_id, prompt_turn_id, turn_id, route, model, status, error_type, "
            "input_tokens, output_tokens, cost_nano_usd, attempts, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            [(*row, T.format(i)) for i, row in enumerate(V1_ROWS["requests"])])


@pytest.fixture
def v1_database(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "v1.db"
    url = f"sqlite+aiosqlite:///{path}"
    command.upgrade(alembic_config(url), "0001")
    fill_v1(path)
    command.upgrade(alembic_config(url), "head")
    return path, url


async def test_v1_rows_read_back_through_the_api_unchanged(v1_database, fake) -> None:
    path, url = v1_database
    async with app_client(make_settings(url, fake)) as client:
        client.headers.update(auth(ALICE))
        audit = (await client.get("/conversations/conv_v1a")).json()
        assert [(t["seq"], t["role"], t["content"], t["status"]) for t in audit["turns"]] == [
            (row[2], row[3], row[4], row[5]) for row in V1_ROWS["turns"] if row[1] == "conv_v1a"]
        assert all(t["blocks"] == [{"type": "text", "text": t["content"]}] for t in audit["turns"])
        assert (audit["system"], audit["model"], audit["title"]) == ("Be brief.", "claude-sonnet-4-6",
                                                                      "First question")
        calls = {c["id"]: c for c in audit["requests"]}
        assert set(calls) == {"call_a1", "call_a2", "call_a3", "call_a4"}
        assert all(c["step"] == 1 and c["reply_id"] for c in calls.values())
        assert [calls[c]["status"] for c in ("call_a1", "call_a2", "call_a3", "call_a4")] == [
            "ok", "cancelled", "error", "ok"]
        assert audit["totals"]["cost_usd"] == pytest.approx((330000 + 150000 + 0 + 255000) / 1e9)
        assert [r["status"] for r in audit["replies"]] == ["complete", "cancelled", "failed", "complete"]
        listed = (await client.get("/conversations")).json()["conversations"]
        assert [c["id"] for c in listed] == ["conv_v1a"]

        # The next message sends version 1's history by version 1's rule: complete exchanges only.
        again = await client.post("/agent", json={"message": "Fifth question", "conversation_id": "conv_v1a"})
        assert again.status_code == 200, again.text
        assert plain_messages(fake.requests()[-1]["body"]["messages"]) == [
            {"role": "user", "content": "First question"}, {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": "Fourth question"}, {"role": "assistant", "content": "Fourth answer"},
            {"role": "user", "content": "Fifth question"}]
        bobs = (await client.get("/conversations/conv_v1b", headers=auth("bob-secret-0123456789abc"))).json()
        assert bobs["totals"]["requests"] == 1


def test_downgrade_keeps_version_1s_rows_and_upgrades_again(v1_database) -> None:
    path, url = v1_database
    command.downgrade(alembic_config(url), "0001")
    with sqlite3.connect(path) as conn:
        turns = conn.execute("SELECT id, conversation_id, seq, role, content, status FROM turns ORDER BY id").fetchall()
        calls = conn.execute("SELECT id, status, cost_nano_usd FROM requests ORDER BY id").fetchall()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert turns == sorted(V1_ROWS["turns"])
    assert calls == sorted((row[0], row[6], row[10]) for row in V1_ROWS["requests"])
    assert "reply_id" not in columns and "replies" not in tables
    command.upgrade(alembic_config(url), "head")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == head_revision()
        blocks = json.loads(conn.execute("SELECT content_blocks FROM turns WHERE id = 'turn_a1'").fetchone()[0])
    assert blocks == [{"type": "text", "text": "First question"}]
