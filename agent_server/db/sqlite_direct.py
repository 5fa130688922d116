"""The SQLite side's direct path for the plain writes of ``db.writes``: compiled once, run on the driver's cursor.

Why: a reply's opening transaction is four one-row INSERTs, and SQLAlchemy's per-execution work around each
(parameter construction, the execution context, the result object, events) cost more than SQLite's own work:
0.9 ms for the transaction against 0.43 ms on the bare ``sqlite3`` cursor, on the way to every first token
(bench/ROUNDS.md, "Version 2, third round"). The statements stay SQLAlchemy Core, built once in ``db.writes``
and marked there with the execution option ``base.PLAIN``: this module compiles each one (per set of parameter
names) with SQLAlchemy's SQLite compiler and keeps its SQL, the order of its parameters and each parameter's
bind processor (``DateTime`` to SQLite's text form), so a row is bound exactly as SQLAlchemy would bind it.

Only statements that need nothing else of an execution take this path: no ``RETURNING``, no Python-side
defaults or ``onupdate`` to compute (those fall back to SQLAlchemy). The driver's errors are raised as
SQLAlchemy's (``DBAPIError.instance``), so the storage-failure handling above is the same on both paths.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError

from .base import PLAIN


class _Compiled:
    __slots__ = ("sql", "binders")

    def __init__(self, sql: str, binders: list[tuple[str, Callable[[Any], Any] | None]]) -> None:
        self.sql = sql
        self.binders = binders

    def bind(self, row: dict[str, Any]) -> tuple:
        return tuple(row[name] if process is None or row[name] is None else process(row[name])
                     for name, process in self.binders)


class DirectWrites:
    """Runs marked statements on ``conn``'s driver connection, in the transaction SQLAlchemy began on it."""

    def __init__(self, dialect) -> None:  # type: ignore[no-untyped-def]
        self._dialect = dialect
        self._compiled: dict[tuple[Any, tuple[str, ...]], _Compiled | None] = {}

    def accepts(self, statement: Any, parameters: Any) -> bool:
        return (isinstance(parameters, dict) or (isinstance(parameters, list) and bool(parameters))) and bool(
            getattr(statement, "_execution_options", {}).get(PLAIN))

    def execute(self, driver: sqlite3.Connection, statement: Any, parameters: dict | list[dict]) -> Any:
        """The statement run on ``driver``; a cursor (``rowcount``), or None when this path does not fit it."""
        rows = parameters if isinstance(parameters, list) else [parameters]
        compiled = self._compile(statement, tuple(rows[0]))
        if compiled is None:
            return None
        bound = [compiled.bind(row) for row in rows]
        try:
            if len(bound) == 1:
                return driver.execute(compiled.sql, bound[0])
            return driver.executemany(compiled.sql, bound)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(compiled.sql, None, exc, sqlite3.Error, hide_parameters=True) from exc

    def _compile(self, statement: Any, names: tuple[str, ...]) -> _Compiled | None:
        key = (statement, names)
        if key in self._compiled:
            return self._compiled[key]
        compiled = statement.compile(dialect=self._dialect, column_keys=list(names))
        plain = not (compiled.insert_prefetch or compiled.update_prefetch or compiled.returning
                     or compiled.positiontup is None)
        entry = None
        if plain:
            binders = []
            for name in compiled.positiontup:
                bind = compiled.binds[name]
                binders.append((name, bind.type.dialect_impl(self._dialect).bind_processor(self._dialect)))
            entry = _Compiled(compiled.string, binders)
        self._compiled[key] = entry
        return entry
