"""``agent-server copy``: a deployment filled through the real app on SQLite, copied to a fresh database of the test's
backend (PostgreSQL with ``--databases=postgresql``), must read back through the API exactly as it did on the source;
a target that holds data is refused; a difference found by the verification is exit 1.

``run_copy`` migrates the target with Alembic, which runs its own event loop: the tests call it on a thread.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, delete, select, text, update

from agent_server import cli
from agent_server.db import copy as copy_mod
from agent_server.db.migrations import alembic_config, revision_of, upgrade_to_head
from agent_server.db.models import Turn, UpstreamCall
from agent_server.fake_upstream import Behaviour
from tests.conftest import ALICE, BOB, app_client, auth, make_settings, sync_url
from tests.servers import PG_PASSWORD

TOOLS = '[tools.calculator]\npython = "agent_server.tools.examples:calculator"\n'
DELETED: dict[str, bool] = {}  # source URL -> whether its fixture could delete a conversation


@pytest.fixture
def new_target(database_backend: str, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Factory: an empty database of the test's backend (not even migrated: the copy migrates it)."""
    numbers = itertools.count(1)

    def make() -> str:
        if database_backend == "postgresql":
            return request.getfixturevalue("new_postgres_database")()
        return f"sqlite+aiosqlite:///{tmp_path / f'target{next(numbers)}.db'}"

    return make


@pytest.fixture
async def source(tmp_path: Path, fake) -> str:  # type: ignore[no-untyped-def]
    """A SQLite deployment with a few conversations of several turns, two owners, a stream, a tool loop and the
    ledger of a deleted conversation."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'source' / 'agent.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    tools = tmp_path / "tools.toml"
    tools.write_text(TOOLS)
    async with app_client(make_settings(url, fake, AGENT_TOOLS_FILE=str(tools))) as http:
        for n in range(3):
            first = await http.post("/agent", json={"message": f"Bonjour n°{n} — ünïcode 🙂", "system": "Be brief."},
                                    headers=auth())
            assert first.status_code == 200, first.text
            for k in range(2):
                more = await http.post("/agent", json={"message": f"and then {k}?",
                                                       "conversation_id": first.json()["conversation_id"]},
                                       headers=auth())
                assert more.status_code == 200, more.text
        streamed = await http.post("/agent/stream", json={"message": "Stream to me"}, headers=auth(BOB))
        assert streamed.status_code == 200 and "event: done" in streamed.text, streamed.text
        fake.script(Behaviour(text="Let me compute.", tool_calls=[{"name": "calculator",
                                                                  "input": {"expression": "12*7"}}]))
        tool = await http.post("/agent", json={"message": "What is 12*7?"}, headers=auth())
        assert tool.status_code == 200 and tool.json()["tool_calls"], tool.text
        doomed = await http.post("/agent", json={"message": "Forget me"}, headers=auth(BOB))
        gone = await http.delete(f"/conversations/{doomed.json()['conversation_id']}", headers=auth(BOB))
        assert gone.status_code in (200, 204, 405), gone.text  # 405: not routed in this version yet
        DELETED[url] = gone.status_code != 405
    return url


async def through_the_api(url: str, fake) -> dict:  # type: ignore[no-untyped-def]
    """Every conversation of both owners, as GET /conversations and GET /conversations/{id} return them."""
    seen: dict = {}
    async with app_client(make_settings(url, fake)) as http:
        for owner, secret in (("alice", ALICE), ("bob", BOB)):
            listing = await http.get("/conversations", headers=auth(secret))
            assert listing.status_code == 200, listing.text
            audits = {}
            for conversation in listing.json()["conversations"]:
                audit = await http.get(f"/conversations/{conversation['id']}", headers=auth(secret))
                assert audit.status_code == 200, audit.text
                audits[conversation["id"]] = audit.json()
            seen[owner] = {"list": listing.json(), "audits": audits}
    return seen


def every_row(url: str) -> dict[str, list[dict]]:
    """Every row of every copied table, in primary-key order, through the models' column types."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return {table.name: [dict(row._mapping) for row in conn.execute(
                select(table).order_by(*table.primary_key.columns))] for table in copy_mod.TABLES}
    finally:
        engine.dispose()


async def copy(source_url: str, target_url: str, **options) -> int:  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(copy_mod.run_copy, source_url, target_url, **options)


async def test_a_copy_reads_back_through_the_api_exactly(source, new_target, fake, capsys) -> None:
    before = await through_the_api(source, fake)
    assert len(before["alice"]["audits"]) == 4 and len(before["bob"]["audits"]) == 1 + (not DELETED[source])
    assert sum(len(audit["turns"]) for audit in before["alice"]["audits"].values()) == 3 * 6 + 4
    rows = every_row(source)
    target = new_target()

    assert await copy(source, target) == 0
    out, err = capsys.readouterr()
    assert PG_PASSWORD not in out + err
    assert "requests.cost_nano_usd" in out and "verified" in err.splitlines()[-1]

    assert every_row(target) == rows  # every column of every row, ids, times, JSON text and nulls included
    assert await through_the_api(target, fake) == before
    assert every_row(source) == rows  # the source is only read
    assert rows["tool_runs"] and rows["reply_events"] and rows["daily_spend"]
    if DELETED[source]:  # the ledger of a deleted conversation is copied too
        assert {call["conversation_id"] for call in rows["requests"]} - {c["id"] for c in rows["conversations"]}


async def test_and_back_again_from_the_copy(source, new_target, fake, tmp_path) -> None:
    """Any direction: the copy (PostgreSQL on that backend) copied to a new SQLite file is the source again."""
    target, back = new_target(), f"sqlite+aiosqlite:///{tmp_path / 'back' / 'agent.db'}"
    assert await copy(source, target) == 0
    assert await copy(target, back) == 0
    assert every_row(back) == every_row(source)
    assert await through_the_api(back, fake) == await through_the_api(source, fake)


async def test_a_target_that_holds_data_is_refused(source, new_target, capsys) -> None:
    target = new_target()
    assert await copy(source, target) == 0
    copied = every_row(target)
    capsys.readouterr()

    assert await copy(source, target) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("agent-server copy: refusing to copy into ") and "conversations" in err
    assert PG_PASSWORD not in err
    assert every_row(target) == copied


async def test_an_older_target_with_data_is_refused_before_it_is_migrated(source, new_target, capsys) -> None:
    target = new_target()
    await asyncio.to_thread(command.upgrade, alembic_config(target), "0001")
    engine = create_engine(sync_url(target))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO conversations (id, owner, model, created_at, updated_at) "
                          "VALUES ('conv_old', 'alice', 'm', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
    engine.dispose()
    assert await copy(source, target) == 1
    assert "it already holds 1 conversations" in capsys.readouterr().err
    assert revision_of(target) == "0001"  # left exactly as it was


@pytest.mark.parametrize("tamper", ["delete a turn", "change a cost"])
async def test_a_difference_found_by_the_verification_is_exit_1(source, new_target, monkeypatch, capsys,
                                                                tamper: str) -> None:
    real = copy_mod.copy_table

    def then_tamper(conn, target, table, *, batch):  # type: ignore[no-untyped-def]
        copied = real(conn, target, table, batch=batch)
        if table.name == copy_mod.TABLES[-1].name:  # the copy is done; the verification comes next
            with target.begin() as out:
                if tamper == "delete a turn":
                    last = out.execute(select(Turn.id).order_by(Turn.id.desc()).limit(1)).scalar_one()
                    out.execute(delete(Turn).where(Turn.id == last))
                else:
                    first = out.execute(select(UpstreamCall.id).order_by(UpstreamCall.id).limit(1)).scalar_one()
                    out.execute(update(UpstreamCall).where(UpstreamCall.id == first)
                                .values(cost_nano_usd=UpstreamCall.cost_nano_usd + 1))
        return copied

    monkeypatch.setattr(copy_mod, "copy_table", then_tamper)
    assert await copy(source, new_target()) == 1
    out, err = capsys.readouterr()
    last = err.splitlines()[-1]
    assert last.startswith("agent-server copy: the target differs from the source: ")
    if tamper == "delete a turn":
        assert "turns" in last and "requests." not in last
        assert "differs" in next(line for line in out.splitlines() if line.startswith("turns"))
    else:
        assert "requests.cost_nano_usd" in last and "turns" not in last


async def test_small_batches_through_the_command_give_the_same_copy(source, new_target, fake, monkeypatch) -> None:
    batches: dict[str, int] = {}
    real_insert = copy_mod.insert

    def counted(table):  # type: ignore[no-untyped-def]
        batches[table.name] = batches.get(table.name, 0) + 1
        return real_insert(table)

    monkeypatch.setattr(copy_mod, "insert", counted)
    target = new_target()
    assert await asyncio.to_thread(cli.main, ["copy", "--from", source, "--to", target, "--batch", "2"]) == 0
    rows = every_row(source)
    assert every_row(target) == rows
    assert batches == {name: -(-len(table_rows) // 2) for name, table_rows in rows.items() if table_rows}
    assert await through_the_api(target, fake) == await through_the_api(source, fake)


async def test_a_source_that_is_missing_or_behind_is_refused(tmp_path, new_target, capsys) -> None:
    missing = f"sqlite+aiosqlite:///{tmp_path / 'nowhere.db'}"
    assert await copy(missing, new_target()) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nowhere.db").exists()
    behind = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(command.upgrade, alembic_config(behind), "0001")
    assert await copy(behind, new_target()) == 1
    assert "run 'agent-server migrate' on it first" in capsys.readouterr().err
    assert await copy(behind, new_target(), batch=0) == 1
