"""Write-side statements: dialect-neutral SQLAlchemy Core, no rules. The engine gathers what one moment of a
reply changes as a list of ``Op`` (a statement and its parameters) and stores them in one transaction with
``apply``; the few transactions that must read before they write (opening a reply) live with their rules in
the service and use these builders too.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.dialects import postgresql, sqlite

from .base import PLAIN
from .models import Conversation, DailySpend, Lease, Notification, Reply, ReplyEvent, ToolRun, Turn, UpstreamCall

Op = tuple[Any, Any]  # (statement, parameters: a dict, or a list of dicts for executemany)

TURNS = Turn.__table__
CALLS = UpstreamCall.__table__
REPLIES = Reply.__table__
TOOL_RUNS = ToolRun.__table__
EVENTS = ReplyEvent.__table__
CONVERSATIONS = Conversation.__table__
SPEND = DailySpend.__table__
NOTIFICATIONS = Notification.__table__
LEASES = Lease.__table__

_INSERT = {table.name: insert(table).execution_options(**{PLAIN: True})
           for table in (TURNS, CALLS, REPLIES, TOOL_RUNS, EVENTS, CONVERSATIONS, NOTIFICATIONS)}
_DEFAULTS = {
    table.name: {column.key: column.default.arg if column.default is not None and not callable(column.default.arg)
                 else None for column in table.columns}
    for table in (TURNS, CALLS, REPLIES, TOOL_RUNS, CONVERSATIONS)
}


async def apply(conn, *, ops: list[Op]) -> None:
    """Run ``ops`` in order, in the caller's transaction."""
    for statement, parameters in ops:
        if isinstance(parameters, list) and not parameters:
            continue
        await conn.execute(statement, parameters)


def _row(table: str, values: dict[str, Any]) -> dict[str, Any]:
    unknown = set(values) - set(_DEFAULTS[table])
    if unknown:
        raise ValueError(f"{table} has no column {sorted(unknown)}")
    return {**_DEFAULTS[table], **values}


def insert_conversation(**values: Any) -> Op:
    return _INSERT["conversations"], _row("conversations", values)


def insert_reply(**values: Any) -> Op:
    return _INSERT["replies"], _row("replies", values)


def insert_turn(**values: Any) -> Op:
    return _INSERT["turns"], _row("turns", values)


def insert_call(**values: Any) -> Op:
    return _INSERT["requests"], _row("requests", values)


def insert_tool_runs(rows: list[dict[str, Any]]) -> Op:
    return _INSERT["tool_runs"], [_row("tool_runs", row) for row in rows]


def insert_events(rows: list[dict[str, Any]]) -> Op:
    """``rows``: ``reply_id, seq, type, data, created_at`` each."""
    return _INSERT["reply_events"], rows


def insert_notification(*, topic: str, payload: str, now: datetime) -> Op:
    return _INSERT["notifications"], {"topic": topic, "payload": payload, "created_at": now}


@functools.cache
def _update_statement(table, key: str, names: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """One UPDATE per set of columns, built once: building it (and its cache key) on every call showed in the
    throughput profile."""
    return update(table).where(table.c[key] == bindparam("b_key")).values(
        {name: bindparam(f"b_{name}") for name in names}).execution_options(**{PLAIN: True})


def _update_by_id(table, key: str, key_value: str, values: dict[str, Any]) -> Op:
    return _update_statement(table, key, tuple(values)), {
        "b_key": key_value, **{f"b_{name}": value for name, value in values.items()}}


def update_call(call_id: str, **values: Any) -> Op:
    return _update_by_id(CALLS, "id", call_id, values)


def update_reply(reply_id: str, **values: Any) -> Op:
    return _update_by_id(REPLIES, "id", reply_id, values)


def update_turn(turn_id: str, **values: Any) -> Op:
    return _update_by_id(TURNS, "id", turn_id, values)


def update_tool_run(run_id: str, **values: Any) -> Op:
    return _update_by_id(TOOL_RUNS, "id", run_id, values)


def update_conversation(conversation_id: str, **values: Any) -> Op:
    return _update_by_id(CONVERSATIONS, "id", conversation_id, values)


class _DialectOp:
    """A statement that differs by dialect (an upsert): built when the connection says which it is."""

    def __init__(self, build) -> None:  # type: ignore[no-untyped-def]
        self._build = build
        self._built: dict[str, Any] = {}

    def for_dialect(self, name: str):  # type: ignore[no-untyped-def]
        if name not in self._built:
            self._built[name] = self._build(postgresql.insert if name == "postgresql" else sqlite.insert)
        return self._built[name]


def _spend_upsert(insert_for):  # type: ignore[no-untyped-def]
    statement = insert_for(SPEND).values(owner=bindparam("owner"), day=bindparam("day"),
                                         cost_nano_usd=bindparam("cost"))
    return statement.on_conflict_do_update(
        index_elements=[SPEND.c.owner, SPEND.c.day],
        set_={"cost_nano_usd": SPEND.c.cost_nano_usd + statement.excluded.cost_nano_usd},
    )


def _lease_upsert(insert_for):  # type: ignore[no-untyped-def]
    statement = insert_for(LEASES).values(name=bindparam("name"), holder=bindparam("holder"),
                                          expires_at=bindparam("expires_at"))
    return statement.on_conflict_do_update(
        index_elements=[LEASES.c.name],
        set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
        where=(LEASES.c.holder == statement.excluded.holder) | (LEASES.c.expires_at < bindparam("now")),
    ).returning(LEASES.c.name)  # a row back when taken: an INSERT's rowcount is -1 on psycopg


SPEND_UPSERT = _DialectOp(_spend_upsert)
LEASE_UPSERT = _DialectOp(_lease_upsert)


async def add_spend(conn, *, owner: str, day: str, cost_nano_usd: int) -> None:
    await conn.execute(SPEND_UPSERT.for_dialect(conn.dialect.name),
                       {"owner": owner, "day": day, "cost": cost_nano_usd})


async def apply_with_spend(conn, *, ops: list[Op], spend: list[tuple[str, str, int]]) -> None:
    """``apply`` plus each ``(owner, day, nano-dollars)`` added to the daily spend."""
    await apply(conn, ops=ops)
    for owner, day, cost in spend:
        if cost:
            await add_spend(conn, owner=owner, day=day, cost_nano_usd=cost)


async def take_job_lease(conn, *, name: str, holder: str, now: datetime, expires_at: datetime) -> bool:
    """Hold the named job lease until ``expires_at`` if it is free, expired or already ours."""
    result = await conn.execute(LEASE_UPSERT.for_dialect(conn.dialect.name),
                                {"name": name, "holder": holder, "expires_at": expires_at, "now": now})
    return result.first() is not None
