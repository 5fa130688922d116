"""Alembic, driven from code: find the scripts, upgrade to head, tell whether the schema is at head."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .engine import Database, ensure_parent_folder


def script_location() -> Path:
    """The migrations folder: the repository's ``migrations/`` (packaged as ``agent_server._migrations``)."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").exists():
        return checkout
    return Path(str(resources.files("agent_server._migrations")))


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str) -> None:
    ensure_parent_folder(database_url)
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(db: Database) -> str | None:
    async with db.reader.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def schema_problem(db: Database) -> str | None:
    """None when the database answers and its schema is at head; else the reason, in one line."""
    try:
        current = await current_revision(db)
    except Exception as exc:  # the database file cannot be opened or read
        return f"database unreachable ({type(exc).__name__}); check DATABASE_URL"
    head = head_revision()
    if current != head:
        return (
            f"database schema is at {current or 'nothing'}, not at head {head}: "
            "run 'agent-server migrate' (or 'alembic upgrade head')"
        )
    return None
