"""The database a run's agent-servers use: SQLite files in the work folder (the default), or databases of one
throwaway PostgreSQL cluster (``--database postgres``, ``bench/postgres.py``). Sections ask this module for a
database URL by name, for counts (plain SQL, the same on both) and for storage figures.

Storage figures: SQLite's file after a ``wal_checkpoint(TRUNCATE)`` (whole pages), and its tables' own bytes from
the ``dbstat`` virtual table; PostgreSQL's ``pg_total_relation_size`` of the tables (heap, TOAST and indexes,
whole 8 KiB pages) after a ``VACUUM`` (its free-space map lets new rows reuse freed pages, as SQLite's freelist does).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from .procs import Processes

KINDS = ("sqlite", "postgres")


def _safe(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9_]", "_", name.lower())
    return f"bench_{cleaned}"[:60]


class Sqlite:
    kind = "sqlite"

    def __init__(self, workdir: Path):
        self.workdir = workdir

    def path(self, name: str) -> Path:
        return self.workdir / f"{name}.db"

    def url(self, name: str) -> str:
        return f"sqlite+aiosqlite:///{self.path(name)}"

    def create(self, name: str) -> str:
        """A fresh database (an existing file of that name is removed; the server migrates it)."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path(name)}{suffix}").unlink(missing_ok=True)
        return self.url(name)

    def scalar(self, name: str, sql: str) -> Any:
        with sqlite3.connect(self.path(name), timeout=30) as conn:
            return conn.execute(sql).fetchone()[0]

    def rows(self, name: str, sql: str) -> list[tuple]:
        with sqlite3.connect(self.path(name), timeout=30) as conn:
            return conn.execute(sql).fetchall()

    def storage(self, name: str) -> dict:
        """The checkpointed file's size and what it holds."""
        conn = sqlite3.connect(self.path(name), timeout=60)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            turns, chars = conn.execute("SELECT count(*), coalesce(sum(length(content)), 0) FROM turns").fetchone()
            requests = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        finally:
            conn.close()
        return {"bytes": self.path(name).stat().st_size, "turns": turns, "content_chars": chars,
                "requests": requests, "page_size": page_size, "free_pages": free_pages}

    def table_bytes(self, name: str, table: str) -> int:
        """Bytes of the pages of ``table`` and its indexes (``dbstat``)."""
        with sqlite3.connect(self.path(name), timeout=60) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return conn.execute(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN "
                "(SELECT name FROM sqlite_master WHERE tbl_name = ?)", (table,)).fetchone()[0]

    def describe(self) -> dict:
        return {"kind": "sqlite", "version": sqlite3.sqlite_version}

    def close(self) -> None:
        pass


class Postgres:
    kind = "postgres"

    def __init__(self, procs: Processes, settings: tuple[str, ...] = ()):
        from .postgres import Cluster

        self.cluster = Cluster(procs, settings=settings).start()
        self._names: dict[str, str] = {}

    def url(self, name: str) -> str:
        if name not in self._names:
            return self.create(name)
        return self.cluster.url(self._names[name])

    def create(self, name: str) -> str:
        self._names[name] = _safe(name)
        return self.cluster.create_database(self._names[name])

    def _connect(self, name: str):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(self.cluster.dsn(self._names[name]), autocommit=True)

    def scalar(self, name: str, sql: str) -> Any:
        with self._connect(name) as conn:
            return conn.execute(sql).fetchone()[0]

    def rows(self, name: str, sql: str) -> list[tuple]:
        with self._connect(name) as conn:
            return list(conn.execute(sql).fetchall())

    def storage(self, name: str) -> dict:
        with self._connect(name) as conn:
            conn.execute("VACUUM")
            size = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'").fetchone()[0]
            turns, chars = conn.execute("SELECT count(*), coalesce(sum(length(content)), 0) FROM turns").fetchone()
            requests = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        return {"bytes": int(size), "turns": turns, "content_chars": int(chars), "requests": requests,
                "page_size": 8192, "free_pages": None}

    def table_bytes(self, name: str, table: str) -> int:
        with self._connect(name) as conn:
            conn.execute(f"VACUUM {table}")
            return int(conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0])

    def describe(self) -> dict:
        return {"kind": "postgres", "version": self.cluster.version, "settings": list(self.cluster.settings)}

    def close(self) -> None:
        self.cluster.stop()


def open_backend(kind: str, *, workdir: Path, procs: Processes, settings: tuple[str, ...] = ()) -> Sqlite | Postgres:
    if kind == "postgres":
        return Postgres(procs, settings)
    return Sqlite(workdir)
