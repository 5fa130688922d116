"""Alembic owns the schema: upgrade, downgrade and upgrade again; the models match; the CLI works."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from agent_server.db.migrations import alembic_config, head_revision, upgrade_to_head
from agent_server.db import open_database
from agent_server.db.sqlite import SqliteDatabase
from agent_server.db.models import Base

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = {"conversations", "turns", "requests", "replies", "tool_runs", "reply_events", "daily_spend",
          "notifications", "leases"}


def url_for(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def version(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


def test_upgrade_creates_the_schema_in_an_empty_file_and_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "agent.db"
    upgrade_to_head(url_for(path))
    assert path.exists()
    assert TABLES | {"alembic_version"} <= tables(path)
    assert version(path) == [head_revision()]


def test_downgrade_to_base_and_up_again(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    config = alembic_config(url_for(path))
    command.upgrade(config, "head")
    assert TABLES <= tables(path)

    command.downgrade(config, "base")
    assert tables(path) & TABLES == set()
    assert version(path) == []

    command.upgrade(config, "head")
    assert TABLES <= tables(path)
    assert version(path) == [head_revision()]


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    upgrade_to_head(url_for(path))
    upgrade_to_head(url_for(path))
    assert version(path) == [head_revision()]


def schema_diff(path: Path) -> list:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    upgrade_to_head(url_for(path))
    assert schema_diff(path) == []
    # The comparison does see differences: against an empty schema every table is missing.
    command.downgrade(alembic_config(url_for(path)), "base")
    added = {entry[1].name for entry in schema_diff(path) if entry[0] == "add_table"}
    assert added == TABLES


def test_alembic_cli_from_the_repository_root(tmp_path: Path) -> None:
    path = tmp_path / "cli" / "agent.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "ANTHROPIC_"))}
    env["DATABASE_URL"] = url_for(path)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert TABLES | {"alembic_version"} <= tables(path)
    assert version(path) == [head_revision()]


@pytest.mark.sqlite_only("reads SQLite's pragmas")
async def test_app_connections_use_wal_and_enforce_foreign_keys(database_url: str) -> None:
    db = SqliteDatabase(database_url)
    try:
        async with db.read() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() > 0
            assert (await conn.exec_driver_sql("PRAGMA secure_delete")).scalar() == 1

        async def pragmas(conn) -> tuple:
            return tuple([(await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                          for name in ("journal_mode", "foreign_keys", "busy_timeout", "secure_delete")])

        # Writes run on the event loop, so that connection never waits (busy timeout 0): a held lock is retried
        # (tests/integration/test_write_path.py).
        assert await db.write(pragmas) == ("wal", 1, 0, 1)
    finally:
        await db.dispose()


async def test_foreign_keys_are_enforced_on_writes(database_url: str) -> None:
    db = open_database(database_url)
    try:
        async def orphan_turn(conn) -> None:
            await conn.exec_driver_sql(
                "INSERT INTO turns (id, conversation_id, seq, role, content, status, created_at, updated_at)"
                " VALUES ('turn_x', 'conv_missing', 1, 'user', 'hi', 'complete',"
                " '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )

        with pytest.raises(IntegrityError):
            await db.write(orphan_turn)
        async with db.read() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM turns"))).scalar() == 0
    finally:
        await db.dispose()
