"""Persistence: the database interface (``base``), its SQLite and PostgreSQL sides, the tables and the
statements. ``open_database`` picks the side from the URL, once, at start-up."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from .base import Database, StorageError


def backend_of(database_url: str) -> str:
    """``sqlite`` or ``postgresql``: the database a URL names."""
    return make_url(database_url).get_backend_name()


def open_database(database_url: str, *, on_write=None) -> Database:  # type: ignore[no-untyped-def]
    if backend_of(database_url) == "postgresql":
        from .postgres import PostgresDatabase

        return PostgresDatabase(database_url, on_write=on_write)
    from .sqlite import SqliteDatabase

    return SqliteDatabase(database_url, on_write=on_write)


__all__ = ["Database", "StorageError", "backend_of", "open_database"]
