"""No statement the server runs reads a whole table: every one is answered through a key or an index.

A reply's cost must not grow with the size of the database (issue #6), and a table scan on the event loop
blocks every other stream while it runs. The statements are the ones the app really executes while serving
each route (captured from its connections), planned by SQLite with ``EXPLAIN QUERY PLAN``.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import timedelta

from sqlalchemy import event
from sqlalchemy.engine import make_url

import pytest

from agent_server.db import lease
from agent_server.db.models import utcnow

from ..conftest import app_client, auth, make_settings

TABLE_SCAN = re.compile(r"\bSCAN (conversations|turns|requests|replies|tool_runs|reply_events|daily_spend)\b")
pytestmark = pytest.mark.sqlite_only("planned by SQLite's EXPLAIN QUERY PLAN")
DATA_STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


def capture_statements(runtime) -> list[tuple[str, object]]:
    """Every data statement the app's connections run from now on: (SQL, parameters)."""
    seen: list[tuple[str, object]] = []

    def on_execute(_conn, _cursor, statement, parameters, _context, executemany):  # type: ignore[no-untyped-def]
        if DATA_STATEMENT.match(statement):
            seen.append((statement, parameters[0] if executemany and parameters else parameters))

    for engine in (runtime.db.reader.sync_engine, runtime.db._loop_engine, runtime.db._thread_engine):
        event.listen(engine, "before_cursor_execute", on_execute)
    direct = runtime.db._direct  # the plain writes that go straight to the driver (db/sqlite_direct.py)
    run_direct = direct.execute

    def on_direct(driver, statement, parameters):  # type: ignore[no-untyped-def]
        rows = parameters if isinstance(parameters, list) else [parameters]
        compiled = direct._compile(statement, tuple(rows[0]))
        if compiled is not None:
            seen.append((compiled.sql, compiled.bind(rows[0])))
        return run_direct(driver, statement, parameters)

    direct.execute = on_direct
    return seen


def scans(database_url: str, statements: list[tuple[str, object]]) -> dict[str, list[str]]:
    """Statement -> the plan lines that read a whole table."""
    found: dict[str, list[str]] = {}
    with sqlite3.connect(make_url(database_url).database or "") as conn:
        for sql, parameters in statements:
            plan = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", parameters or ())]
            bad = [line for line in plan if TABLE_SCAN.search(line)]
            if bad:
                found[sql] = bad
    return found


async def test_every_statement_of_every_route_uses_a_key_or_an_index(database_url, fake):
    async with app_client(make_settings(database_url, fake)) as client:
        client.headers.update(auth())
        runtime = client.app.runtime
        statements = capture_statements(runtime)

        first = await client.post("/agent", json={"message": "hello"})
        conversation_id = first.json()["conversation_id"]
        await client.post("/agent", json={"message": "and again", "conversation_id": conversation_id})
        async with client.stream("POST", "/agent/stream", json={"message": "stream it"}) as stream:
            await stream.aread()
        await client.get(f"/conversations/{conversation_id}")
        page = (await client.get("/conversations", params={"limit": 1})).json()
        await client.get("/conversations", params={"limit": 1, "before": page["next_cursor"]})
        await client.get(f"/conversations/{conversation_id}/turns", params={"limit": 2, "before": 3})
        reply_id = first.json()["reply_id"]
        await client.get(f"/replies/{reply_id}")
        async with client.stream("GET", f"/replies/{reply_id}/events", params={"after": 1}) as replay:
            await replay.aread()
        # The periodic lease renewal and the sweep for replies of dead processes (every 10 s), asked for directly.
        await runtime.db.write(lease.renew, held=[(conversation_id, "some-token")],
                               now=utcnow() + timedelta(seconds=1))
        await runtime.supervisor.sweep()

    kinds = {sql.split()[0].upper() for sql, _ in statements}
    assert {"SELECT", "INSERT", "UPDATE"} <= kinds, f"the scenario ran too little to judge: {kinds}"
    assert any("lock_expires_at" in sql and sql.upper().startswith("UPDATE") for sql, _ in statements)
    assert any("reply_events" in sql for sql, _ in statements)
    assert scans(database_url, statements) == {}
