"""The notification channel between processes, for what must travel live: cancel a reply now, a reply has new
events. It carries ids only; what they name is read from the database. One interface (``base.Channel``), three
sides, chosen once at start-up: in-process (one process), PostgreSQL ``LISTEN/NOTIFY`` (any number of instances),
and a table polled by the workers that share one SQLite file."""

from __future__ import annotations

from .base import Channel, LocalChannel


def open_channel(db, *, workers: int) -> Channel:  # type: ignore[no-untyped-def]
    if db.dialect == "postgresql":
        from .postgres import PostgresChannel

        return PostgresChannel(db.url)
    if workers > 1:
        from .sqlite import SqliteChannel

        return SqliteChannel(db)
    return LocalChannel()


__all__ = ["Channel", "LocalChannel", "open_channel"]
