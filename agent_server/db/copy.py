"""``agent-server copy --from URL --to URL``: move a deployment from one database to another (SQLite to PostgreSQL is
the use; any direction works), then prove that nothing was lost.

Why it is built this way:

- the target is migrated to head first, by the same Alembic history the server runs, so the copy lands in exactly
  the schema the server expects; the source is only read (it must be at head already: we never migrate it);
- a target that already holds data is refused: merging two deployments is not a copy, and a half-done earlier copy
  must be emptied on purpose, not topped up by accident;
- tables go in foreign-key order (a turn after its conversation, a call after its turns), one transaction per
  table on the target, and rows are streamed: read ``batch`` at a time (a server-side cursor on PostgreSQL,
  SQLite's own stepping) and written with one ``executemany`` per batch, so a million turns never sit in memory;
- the whole source is read in one transaction (REPEATABLE READ on PostgreSQL, one SQLite read transaction):
  every table comes from the same snapshot, even if a server is still writing;
- values go through the models' column types (SQLAlchemy Core, synchronous drivers: this is a CLI, not the
  server), so ids, times, JSON text and nulls arrive as they were;
- the verification counts the rows of every copied table and sums the ledger (cost, input and output tokens) on
  both sides, prints both, and exits 1 on any difference. Passwords in URLs are never printed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, create_engine, func, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .models import Conversation, DailySpend, Reply, ReplyEvent, ToolRun, Turn, UpstreamCall

# Foreign-key order. Not copied: notifications (live messages between workers) and leases (who runs the sweeper).
TABLES: tuple[Table, ...] = tuple(model.__table__ for model in (  # type: ignore[misc]
    Conversation, Reply, Turn, UpstreamCall, ToolRun, ReplyEvent, DailySpend))
LEDGER_SUMS = ("cost_nano_usd", "input_tokens", "output_tokens")


class CopyFailed(Exception):
    """Why the copy cannot go on, in one line an operator can act on."""


def shown(database_url: str) -> str:
    """A URL fit to print: a SQLite file's path, or the URL with its password hidden."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return str(Path(url.database).resolve()) if url.database else "an in-memory SQLite database"
    return url.render_as_string(hide_password=True)


def _driver_url(database_url: str, *, asynchronous: bool) -> str:
    """The same database, named for the driver wanted: the migrations run async, the copy runs sync."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        driver = "sqlite+aiosqlite" if asynchronous else "sqlite+pysqlite"
    elif backend == "postgresql":
        driver = "postgresql+psycopg"
    else:
        raise CopyFailed(f"{shown(database_url)}: only SQLite and PostgreSQL databases can be copied")
    return url.set(drivername=driver).render_as_string(hide_password=False)


def _engine(database_url: str, *, reading: bool) -> Engine:
    url = _driver_url(database_url, asynchronous=False)
    if make_url(url).get_backend_name() == "sqlite":
        from .sqlite import ensure_parent_folder, install_pragmas

        ensure_parent_folder(url)
        engine = create_engine(url)
        # The server's pragmas (WAL, foreign keys on): a SQLite target is a file the server opens as it is.
        install_pragmas(engine, begin="BEGIN" if reading else "BEGIN IMMEDIATE", foreign_keys=True)
        return engine
    # prepare_threshold=None: nothing prepared, so PgBouncer in transaction mode is fine.
    engine = create_engine(url, connect_args={"prepare_threshold": None, "connect_timeout": 10})
    return engine.execution_options(isolation_level="REPEATABLE READ") if reading else engine


def _reason(exc: BaseException) -> str:
    """The driver's first line: never the SQL, never its parameters."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    return text[:300]


def _check_source(source_url: str) -> None:
    from .migrations import head_revision, revision_of

    url = make_url(source_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).exists()):
        raise CopyFailed(f"the source database {shown(source_url)} does not exist")
    revision = revision_of(_driver_url(source_url, asynchronous=True))
    if revision is None:
        raise CopyFailed(f"the source {shown(source_url)} has no agent-server schema")
    if revision != head_revision():
        raise CopyFailed(f"the source {shown(source_url)} is at revision {revision}, not head {head_revision()}: "
                         "run 'agent-server migrate' on it first")


def _migrate_target(target_url: str) -> str:
    from .migrations import MigrationRefused, migrate

    try:
        before, after = migrate(_driver_url(target_url, asynchronous=True))
    except MigrationRefused as exc:
        raise CopyFailed(f"target {shown(target_url)}: {exc}") from None
    return f"target migrated from {before or 'an empty database'} to {after}" if before != after else \
        f"target already at {after} (head)"


def count_rows(conn: Connection, tables: tuple[Table, ...] = TABLES) -> dict[str, int]:
    return {table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one()) for table in tables}


def _refuse_a_target_with_data(target_url: str) -> None:
    """Looked at before migrating: a database that holds data is left exactly as it was, schema included. Only the
    tables it has are counted (an older schema lacks some)."""
    url = make_url(target_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).exists()):
        return  # a new file: created by the migration
    engine = _engine(target_url, reading=True)
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            held = {name: n for name, n in count_rows(conn, tuple(t for t in TABLES if t.name in present)).items()
                    if n}
    finally:
        engine.dispose()
    if held:
        what = ", ".join(f"{n:,} {name}" for name, n in held.items())
        raise CopyFailed(f"refusing to copy into {shown(target_url)}: it already holds {what} (copy into an empty "
                         "database)")


def tally(conn: Connection) -> dict[str, int]:
    """What the verification compares: rows per copied table, and the ledger's sums."""
    totals = count_rows(conn)
    calls = UpstreamCall.__table__
    sums = conn.execute(select(*(func.coalesce(func.sum(calls.c[name]), 0) for name in LEDGER_SUMS))).one()
    totals.update({f"requests.{name}": int(value) for name, value in zip(LEDGER_SUMS, sums, strict=True)})
    return totals


def copy_table(source: Connection, target: Engine, table: Table, *, batch: int) -> int:
    """Stream one table from the open source connection into the target, ``batch`` rows per ``executemany``;
    one target transaction for the table. Returns the rows copied."""
    statement = select(table).order_by(*table.primary_key.columns)
    copied = 0
    with target.begin() as out:
        result = source.execution_options(yield_per=batch).execute(statement)
        for rows in result.partitions(batch):
            out.execute(insert(table), [dict(row._mapping) for row in rows])
            copied += len(rows)
    return copied


def _print_tally(source_url: str, target_url: str, before: dict[str, int], after: dict[str, int]) -> None:
    width = max(len(name) for name in before)
    numbers = max(len(f"{value:,}") for value in (*before.values(), *after.values(), 0))
    numbers = max(numbers, len("source"))
    print(f"source: {shown(source_url)}")
    print(f"target: {shown(target_url)}")
    print(f"{'':<{width}}  {'source':>{numbers}}  {'target':>{numbers}}")
    for name, value in before.items():
        other = after.get(name, 0)
        mark = "" if value == other else "  <- differs"
        print(f"{name:<{width}}  {value:>{numbers},}  {other:>{numbers},}{mark}")


def _fail(message: str) -> int:
    print(f"agent-server copy: {message}", file=sys.stderr)
    return 1


def run_copy(source_url: str, target_url: str, *, batch: int = 1000,
             progress: Callable[[str], None] | None = None) -> int:
    """Copy, then verify; 0 when both sides are identical, 1 (and one line on stderr) on any refusal or difference.

    Call it outside a running event loop: migrating the target runs Alembic's own.
    """
    say = progress or (lambda line: print(f"agent-server copy: {line}", file=sys.stderr))
    if batch < 1:
        return _fail("--batch must be at least 1")
    try:
        if shown(_driver_url(source_url, asynchronous=False)) == shown(_driver_url(target_url, asynchronous=False)):
            return _fail("the source and the target are the same database")
        _check_source(source_url)
        _refuse_a_target_with_data(target_url)
        say(_migrate_target(target_url))
        source, target = _engine(source_url, reading=True), _engine(target_url, reading=False)
    except CopyFailed as exc:
        return _fail(str(exc))
    except (SQLAlchemyError, OSError) as exc:
        return _fail(f"cannot open the databases: {_reason(exc)}")
    try:
        return _copy_and_verify(source, target, source_url, target_url, batch, say)
    finally:
        source.dispose()
        target.dispose()


def _copy_and_verify(source: Engine, target: Engine, source_url: str, target_url: str, batch: int,
                     say: Callable[[str], None]) -> int:
    table = TABLES[0]
    try:
        with source.connect() as conn, conn.begin():  # one snapshot of the whole source, the tally's too
            for table in TABLES:
                say(f"{table.name}: {copy_table(conn, target, table, batch=batch):,} rows")
            before = tally(conn)
    except SQLAlchemyError as exc:
        return _fail(f"copying {table.name} failed: {_reason(exc)}; the target {shown(target_url)} now holds a "
                     "partial copy: empty it before trying again")
    try:
        with target.connect() as conn:
            after = tally(conn)
    except SQLAlchemyError as exc:
        return _fail(f"cannot verify the copy: {_reason(exc)}")
    _print_tally(source_url, target_url, before, after)
    differences = [f"{name} {before[name]:,} != {after.get(name, 0):,}" for name in before
                   if before[name] != after.get(name, 0)]
    if differences:
        return _fail(f"the target differs from the source: {'; '.join(differences)}")
    say(f"verified: {sum(before[t.name] for t in TABLES):,} rows in {len(TABLES)} tables, identical on both sides")
    return 0
