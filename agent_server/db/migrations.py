"""Alembic, driven from code: find the scripts, upgrade to head, tell whether the schema is at head."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from . import backend_of


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
    config.attributes["configure_logging"] = False
    return config


def upgrade_to_head(database_url: str) -> tuple[str | None, str | None]:
    """Upgrade; returns (revision before, revision after)."""
    if backend_of(database_url) == "sqlite":
        from .sqlite import ensure_parent_folder

        ensure_parent_folder(database_url)
    before = revision_of(database_url)
    command.upgrade(alembic_config(database_url), "head")
    return before, head_revision()


def revision_of(database_url: str) -> str | None:
    """The schema's revision (None for an empty database), read with a short-lived synchronous connection."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    sync = url.set(drivername="sqlite+pysqlite" if url.get_backend_name() == "sqlite" else "postgresql+psycopg")
    engine = create_engine(sync)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def schema_problem(engine: AsyncEngine) -> str | None:
    """None when the database answers and its schema is at head; else the reason, in one line."""
    try:
        current = await current_revision(engine)
    except Exception as exc:  # the database cannot be opened or read
        return f"database unreachable ({type(exc).__name__}); check DATABASE_URL"
    head = head_revision()
    if current != head:
        return (
            f"database schema is at {current or 'nothing'}, not at head {head}: "
            "run 'agent-server migrate' (or 'alembic upgrade head')"
        )
    return None


class MigrationRefused(Exception):
    """A reason not to migrate, in one line (the database is missing where it must exist, or cannot be written)."""


def migrate(database_url: str, *, require_existing: bool = False) -> tuple[str | None, str | None]:
    """``upgrade_to_head`` with the checks an operator needs: a SQLite file that must exist already (its volume may
    not be mounted) is never created; a database that cannot be written is said so in one line."""
    from sqlalchemy.exc import DBAPIError

    if backend_of(database_url) == "sqlite":
        from .sqlite import database_path

        path = database_path(database_url)
        if path is not None and require_existing and not path.exists():
            raise MigrationRefused(
                f"refusing to create a new database at {path}: AGENT_REQUIRE_EXISTING_DB is set (is the volume "
                "mounted?)")
        if path is not None and path.exists() and not os.access(path, os.W_OK):
            raise MigrationRefused(f"the database {path} is read-only for this user")
        if path is not None and not path.exists() and path.parent.exists() and not os.access(path.parent, os.W_OK):
            raise MigrationRefused(f"cannot create the database {path}: its folder is not writable")
    try:
        return upgrade_to_head(database_url)
    except (DBAPIError, OSError) as exc:
        original = getattr(exc, "orig", None) or exc
        first = str(original).splitlines()[0] if str(original) else type(original).__name__
        raise MigrationRefused(f"cannot migrate the database: {first[:200]}") from None
